"""MkDocs hook: tables on the reference pages generated from the source, never out of date.

``<!-- public-names -->`` becomes a table of every name in ``convkit.__all__``: its kind,
a link to where it is documented and the first paragraph of its docstring, read
statically with griffe (as mkdocstrings does). ``<!-- type-aliases -->`` becomes one
section per type alias in ``convkit/utils/typing.py``, with its definition and the ``#:``
comment above it; each heading's id is the alias's path (``convkit.utils.typing.IntOrPair``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

SRC = Path(__file__).resolve().parents[1] / "src"
_ALIAS = re.compile(r"((?:^#:.*\n)+)^(\w+): TypeAlias = (.+)$", re.M)


def _summary(obj: Any) -> str:
    if obj.docstring is None:
        return ""
    first = obj.docstring.value.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in first.splitlines()).replace("|", "\\|")


def public_names_table() -> str:
    package = griffe.load("convkit", search_paths=[str(SRC)])
    rows = ["| Name | Kind | Summary |", "| --- | --- | --- |"]
    for name in sorted(map(str, package.exports or []), key=str.lower):
        obj = package[name]
        target = obj.final_target if obj.is_alias else obj
        rows.append(f"| [`{name}`][{target.path}] | {target.kind.value} | {_summary(target)} |")
    return "\n".join(rows)


def type_aliases_section() -> str:
    source = (SRC / "convkit" / "utils" / "typing.py").read_text(encoding="utf-8")
    parts = []
    for comment, name, definition in _ALIAS.findall(source):
        meaning = " ".join(line.removeprefix("#:").strip() for line in comment.splitlines())
        anchor = f"convkit.utils.typing.{name}"
        parts.append(f"## `{name}` {{ #{anchor} }}\n\n`{definition}`\n\n{meaning}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- public-names -->" in markdown:
        markdown = markdown.replace("<!-- public-names -->", public_names_table())
    if "<!-- type-aliases -->" in markdown:
        markdown = markdown.replace("<!-- type-aliases -->", type_aliases_section())
    return markdown
