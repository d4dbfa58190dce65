"""MkDocs hooks for the site's two languages (mkdocs-static-i18n, suffix structure).

The i18n plugin builds the site once per language: English at the root, Japanese under
``ja/``, where ``page.ja.md`` replaces ``page.md``. A page without a ``.ja.md`` version is
copied into the Japanese site as it is (the plugin's ``fallback_to_default``): English
text under Japanese menus, with no word about it. The hooks here:

- ``on_post_page`` opens such a copy with a notice in Japanese that links to the English
  page, and marks the English text as ``lang="en"``. The theory page, written in Japanese
  (``lang: ja`` in its front matter), is not a copy to announce. The notice goes into the
  finished HTML, after the search plugin has indexed the page, so the copy's entry stays
  identical to the English page's and the plugin drops it as a duplicate.
- ``on_post_page`` also gives the headings' link symbol a Japanese tooltip on the Japanese
  side (the rest of the interface is Material's ``language: ja``).
- ``on_page_context`` makes the home pages' language switch relative, like every other
  page's. The site has one 404 page, English: ``on_template_context`` points its switch
  at the two home pages, and ``on_post_build`` writes it back after the Japanese build,
  which writes its own. Both drop Material's ``<link rel="alternate">`` tags (see
  ``without_alternate_links``).
- ``on_page_markdown`` lets a page link to the Japanese version of another page as
  ``page.ja.md`` from either build. The Japanese build resolves such a link itself; the
  English build has no ``.ja.md`` files, so the link becomes the relative URL of the
  page under ``ja/``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mkdocs.plugins import event_priority
from mkdocs.utils import get_relative_url

JAPANESE = "ja"
_ARTICLE = re.compile(r'<article class="md-content__inner md-typeset">')
_ALTERNATE_LINK = re.compile(r'[ \t]*<link rel="alternate" href="[^"]*" hreflang="[^"]*">\n?')
_JA_LINK = re.compile(r"\]\((?P<path>[^)\s#]+)\.ja\.md(?P<anchor>#[^)\s]*)?\)")

#: The English 404 page of each site folder, kept to be written back after the Japanese build.
_ENGLISH_404: dict[str, str] = {}
PERMALINK_EN = 'title="Permanent link"'
PERMALINK_JA = 'title="この見出しへのリンク"'
NOTICE = (
    '<div class="admonition info" lang="ja" data-untranslated>'
    '<p class="admonition-title">未翻訳のページ</p>'
    "<p>このページはまだ日本語に翻訳されていません。"
    '以下は<a href="{english}">英語版のページ</a>と同じ内容です。</p>'
    "</div>"
)


def build_language(config: Any) -> str:
    """The language the plugin is building now (it sets Material's ``theme.language``)."""
    return str(config.theme["language"])


def is_untranslated_copy(page: Any, config: Any) -> bool:
    """Whether ``page`` is an English page copied into the Japanese build."""
    return (
        build_language(config) == JAPANESE
        and not page.file.src_uri.endswith(f".{JAPANESE}.md")
        and page.meta.get("lang") != JAPANESE
    )


def english_url(page_url: str) -> str:
    """The URL of the English page whose copy sits at ``page_url`` (``ja/guide/x/``)."""
    return page_url.removeprefix(f"{JAPANESE}/")


def add_notice(html: str, page_url: str) -> str:
    """``html`` of a copied English page with the Japanese notice at the top."""
    link = get_relative_url(english_url(page_url), page_url)
    notice = NOTICE.format(english=link)
    return _ARTICLE.sub(
        lambda m: m.group(0).replace("<article ", '<article lang="en" ') + notice, html, count=1
    )


def japanese_url(src_uri: str) -> str:
    """The URL of the Japanese page built from ``src_uri`` (``guide/x.ja.md``)."""
    path = src_uri.removesuffix(f".{JAPANESE}.md")
    if path == "index" or path.endswith("/index"):
        path = path.removesuffix("index").rstrip("/")
    return f"{JAPANESE}/{path}/" if path else f"{JAPANESE}/"


def japanese_links(markdown: str, src_uri: str, page_url: str) -> str:
    """``markdown`` of the page built from ``src_uri`` at ``page_url``, with each link to a
    ``page.ja.md`` turned into the relative URL of that Japanese page."""

    def url(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), match["path"]))
        link = get_relative_url(japanese_url(f"{target}.{JAPANESE}.md"), page_url)
        return f"]({link}{match['anchor'] or ''})"

    return _JA_LINK.sub(url, markdown)


def on_page_markdown(markdown: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    if build_language(config) == JAPANESE:
        return markdown  # the plugin resolves page.ja.md itself
    return japanese_links(markdown, page.file.src_uri, page.url)


def on_page_context(context: Any, *, page: Any, config: Any, **kwargs: Any) -> Any:
    # The plugin points each page's language switch at its other-language page, except on
    # the two home pages, which keep site-root paths (/convkit/ja/): broken under mike's
    # version folders (/convkit/latest/ja/) and in a local build. Relative links instead.
    alternates = getattr(page.file, "alternates", {})
    # the plugin sets the page's list as an attribute, which the template reads first
    for alternate in getattr(config.extra, "alternate", None) or config.extra.get("alternate", []):
        file = alternates.get(alternate["lang"])
        if file is not None and alternate["link"].startswith("/"):
            alternate["link"] = file.url or "./"
    return context


def on_template_context(context: Any, *, template_name: str, config: Any, **kwargs: Any) -> Any:
    # The 404 page is rendered after the pages and would keep the last page's language
    # switch: point it at the two home pages, from the site's root as the 404 page is.
    if template_name == "404.html":
        root = urlsplit(config.site_url or "/").path.rstrip("/")
        for alternate in getattr(config.extra, "alternate", None) or []:
            alternate["link"] = f"{root}/" if alternate["lang"] == "en" else f"{root}/ja/"
    return context


def on_post_template(output: str, *, template_name: str, config: Any, **kwargs: Any) -> str:
    if template_name != "404.html":
        return output
    output = without_alternate_links(output)
    if build_language(config) != JAPANESE:
        _ENGLISH_404[config.site_dir] = output
    return output


@event_priority(-200)  # after the i18n plugin (-100), which builds the Japanese side then
def on_post_build(*, config: Any, **kwargs: Any) -> None:
    # Each build writes the site's one 404.html; the Japanese build, the last, would win.
    english = _ENGLISH_404.get(config.site_dir)
    if english is not None:
        Path(config.site_dir, "404.html").write_text(english, encoding="utf-8")


def without_alternate_links(html: str) -> str:
    """``html`` without the ``<link rel="alternate" hreflang>`` tags in its head.

    Material's JavaScript fetches ``sitemap.xml`` below each of them, as if they led to a
    language's root; the plugin's lead to the page itself, so every page asked for two
    sitemaps that don't exist (404s in the console). The header's language switch and
    the hreflang entries of the site's sitemap.xml stay.
    """
    return _ALTERNATE_LINK.sub("", html)


def on_post_page(output: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    output = without_alternate_links(output)
    if build_language(config) != JAPANESE:
        return output
    # the headings' link symbol: its tooltip comes from the toc extension, in English
    output = output.replace(PERMALINK_EN, PERMALINK_JA)
    if is_untranslated_copy(page, config):
        output = add_notice(output, page.url)
    return output
