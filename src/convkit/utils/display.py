"""Tables for Jupyter: the ``_repr_html_`` of convkit's result objects.

Jupyter shows an object's ``_repr_html_`` when it has one and its ``repr`` otherwise;
the objects keep a readable ``repr`` for terminals and build their HTML here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["html_table"]


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    caption: str = "",
    footer: Sequence[str] = (),
    numeric_from: int = 1,
) -> str:
    """An HTML ``<table>``; columns from ``numeric_from`` on are right-aligned.

    Every cell, the caption and the footer lines are HTML-escaped.
    """

    def cells(values: Sequence[object], tag: str) -> str:
        return "".join(
            f'<{tag} style="text-align:{"right" if i >= numeric_from else "left"}">'
            f"{html.escape(str(v))}</{tag}>"
            for i, v in enumerate(values)
        )

    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append(f"<thead><tr>{cells(header, 'th')}</tr></thead><tbody>")
    parts += [f"<tr>{cells(row, 'td')}</tr>" for row in rows]
    parts.append("</tbody></table>")
    parts += [f"<p>{html.escape(line)}</p>" for line in footer]
    return "".join(parts)
