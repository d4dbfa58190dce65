"""MkDocs hook that keeps the tutorial notebooks pages when the site is built per language.

mkdocs-jupyter makes each ``.ipynb`` file under ``docs/`` a page: its ``on_files`` wraps
the file as a documentation page, and the page renders the notebook's cells. The
mkdocs-static-i18n plugin builds the site once per language and runs its own ``on_files``
after every other plugin, replacing each file with a plain ``File``; for a notebook that is
a static file, so the page's URL serves the notebook's JSON as it is, and ``mkdocs build
--strict`` does not notice (ultrabug/mkdocs-static-i18n#198).

``on_files`` runs after the i18n plugin and makes those files pages again. A translated
notebook (``name.ja.ipynb``, the suffix structure) also gets the link to its
default-language version (``name.ipynb``) that the plugin gives translated Markdown pages,
so the language switch leads from one to the other. Without the i18n plugin every notebook
is already a page and ``on_files`` changes nothing.

``on_page_content`` removes two loaders that nbconvert's template puts into every notebook
page: MathJax 2's (with an empty URL here; the site typesets formulas with its own,
vendored MathJax) and mermaid's, which imports mermaid from cdnjs.cloudflare.com as soon as
a notebook holds a diagram. The site loads nothing from elsewhere; a mermaid diagram in a
notebook stays text.

``on_page_markdown`` gives a notebook page the language its file name ends in
(``name.ja.ipynb``) as ``lang:``, the front matter a notebook cannot have: hooks/japanese.py
then serves it as Japanese, and hooks/languages.py does not take it for an English copy.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

_LANGUAGE_SUFFIX = re.compile(r"\.(?P<lang>[a-z]{2}(?:[-_][A-Za-z]+)?)\.ipynb$")


_MATHJAX_2 = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid.*?</script>', re.S)


class NotebookPage(File):
    """A notebook file that MkDocs renders as a page (mkdocs-jupyter draws its content)."""

    def is_documentation_page(self) -> bool:
        return True


def default_version(file: File, config: Any) -> File | None:
    """The default-language version of a translated notebook, where the site serves it."""
    i18n = config.plugins.get("i18n")
    localization = getattr(file, "localization", None)
    if i18n is None or not localization:
        return None
    source = file.src_uri.replace(f".{localization}.ipynb", ".ipynb")
    prefix = f"{localization}/"  # the translated site's folder
    if source == file.src_uri or not (Path(config.docs_dir) / source).is_file():
        return None
    dest = file.dest_uri.removeprefix(prefix)
    version = File(source, config.docs_dir, config.site_dir, config.use_directory_urls)
    version.dest_uri = dest
    version.url = version._get_url(config.use_directory_urls)
    version.abs_dest_path = posixpath.normpath(posixpath.join(config.site_dir, dest))
    version.locale = i18n.default_language
    return version


@event_priority(-110)  # after mkdocs-static-i18n's on_files (priority -100)
def on_files(files: Files, config: Any) -> Files:
    for file in files:
        if file.src_uri.endswith(".ipynb") and not file.is_documentation_page():
            file.__class__ = NotebookPage
            alternates = getattr(file, "alternates", None)
            version = default_version(file, config)
            if alternates is not None and version is not None:
                alternates.setdefault(version.locale, version)
    return files


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    match = _LANGUAGE_SUFFIX.search(page.file.src_uri)
    if match:
        page.meta.setdefault("lang", match["lang"])
    return markdown


def on_page_content(html: str, *, page: Any, **kwargs: Any) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    return _MERMAID.sub("", _MATHJAX_2.sub("", html))
