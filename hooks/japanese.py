"""MkDocs hooks that serve the Japanese pages as Japanese.

Markdown keeps a paragraph's line breaks in the HTML, and a browser shows each one as a
space: right between two English words, wrong between two Japanese characters
(「学習に␣任されて」). ``on_page_content`` removes a line break (and the indentation around
it) wherever it falls between two CJK characters, possibly with inline tags in between,
and after Japanese punctuation (、。「」（）...) whatever follows, outside ``<pre>``
blocks. It runs before the search plugin reads the page, so the search
snippets lose the space too. CSS Text Level 3 describes the same rule ("segment break
transformation") but browsers do not implement it for Japanese.

``on_post_page`` sets ``<html lang>`` from a page's ``lang:`` front matter, so a Japanese
page in an English site is announced as Japanese (fonts, screen readers, hyphenation).
"""

from __future__ import annotations

import re
from typing import Any

#: CJK punctuation, kana, CJK ideographs (with extension A and compatibility) and
#: full-width forms.
CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_INLINE_TAGS = r"(?:</?(?:a|abbr|b|code|em|i|kbd|mark|span|strong|sub|sup)\b[^>]*>)*"
_BREAK_BETWEEN_CJK = re.compile(
    rf"(?<=[{CJK}])({_INLINE_TAGS})[ \t]*\r?\n[ \t]*({_INLINE_TAGS})(?=[{CJK}])"
)
#: Japanese punctuation carries its own space: no line break after it shows as one, even
#: before a Latin word or a digit (「並べます。PyTorch」, 「255 で割り、1 枚」).
PUNCTUATION = (
    "\u3001\u3002\uff0c\uff0e\uff1a\uff1b\uff01\uff1f\u300c-\u300f\uff08\uff09\u3010\u3011"
)
_BREAK_AFTER_PUNCTUATION = re.compile(rf"(?<=[{PUNCTUATION}])({_INLINE_TAGS})[ \t]*\r?\n[ \t]*")
_PRE = re.compile(r"(<pre\b.*?</pre>)", re.S)
_HTML_LANG = re.compile(r'<html lang="[^"]*"')


def join_cjk_lines(html: str) -> str:
    """``html`` without the line breaks that fall between two CJK characters or after
    Japanese punctuation."""
    parts = _PRE.split(html)
    # odd indices are the <pre> blocks, whose line breaks are the code's own
    parts[::2] = [
        _BREAK_AFTER_PUNCTUATION.sub(r"\1", _BREAK_BETWEEN_CJK.sub(r"\1\2", part))
        for part in parts[::2]
    ]
    return "".join(parts)


def on_page_content(html: str, **kwargs: Any) -> str:
    return join_cjk_lines(html)


def on_post_page(output: str, *, page: Any, **kwargs: Any) -> str:
    lang = page.meta.get("lang")
    if not lang:
        return output
    return _HTML_LANG.sub(f'<html lang="{lang}"', output, count=1)
