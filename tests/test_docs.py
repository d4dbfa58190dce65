"""The documentation: it builds strictly, works offline, its code runs, its answers are right.

The browser tests drive Debian's Chromium headless (through chromedriver) against the
built site served on 127.0.0.1, with the network-free flags of this project's CI.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import http.server
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convkit import build_cnn
from convkit.shapes import (
    conv_macs,
    conv_output_size,
    conv_params,
    conv_transpose_output_size,
    pool_output_size,
    receptive_field,
    same_padding,
    summary,
    tf_same_padding,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ARTIFACTS = ROOT / "test-artifacts"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "vendor" not in p.parts)]
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)


# ------------------------------------------------------------------ code blocks run


#: The fence that shows what the code before it prints ("出力" on the Japanese pages).
OUTPUT_FENCES = ('text title="Output"', 'text title="出力"')


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page (```py blocks are shown but not run)."""
    return [code for code, _ in python_blocks_and_outputs(page)]


def python_blocks_and_outputs(page: Path) -> list[tuple[str, str | None]]:
    """Each ```python block with the ```text title="Output" (or "出力") block right after
    it, if any: what the code prints, shown to the reader and compared by the test."""
    text = page.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    blocks: list[tuple[str, str | None]] = []
    for i, match in enumerate(fences):
        after = fences[i + 1] if i + 1 < len(fences) else None
        if match["lang"] != "python" or "--8<--" in match["body"]:
            continue
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in match["body"].splitlines())
        output = None
        if (
            after is not None
            and not text[match.end() : after.start()].strip()
            and after.group(0).splitlines()[0].strip().endswith(OUTPUT_FENCES)
        ):
            output = "\n".join(line[indent:] for line in after["body"].splitlines())
        blocks.append((code, output))
    return blocks


def trains(page: Path) -> bool:
    """Whether a page's code trains a model (seconds to minutes: a slow test)."""
    return any("fit(" in block for block in python_blocks(page))


#: Pages whose every ```python block runs on its own, imports and data included, so that a
#: reader can copy any one block into a notebook cell: the theory page and the Japanese
#: pages. The other pages' blocks share one namespace, like a notebook's cells.
SELF_CONTAINED = [DOCS / "theory.md", *sorted(DOCS.rglob("*.ja.md"))]


def run_block(
    block: str, output: str | None, name: str, namespace: dict[str, object] | None = None
) -> None:
    """Run one code block; the output the page shows after it is what it prints."""
    code = compile(block, name, "exec")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed) if output is not None else contextlib.nullcontext():
        exec(code, {"__name__": f"docs:{name}"} if namespace is None else namespace)
    if output is not None:
        assert printed.getvalue().rstrip("\n") == output.rstrip("\n"), (name, printed.getvalue())


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=[pytest.mark.slow] if trains(p) else [])
        for p in PAGES
        if python_blocks(p) and p not in SELF_CONTAINED
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_python_blocks_in_docs_run(page: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs:{page.name}"}
    for number, (block, output) in enumerate(python_blocks_and_outputs(page), start=1):
        # every block of a page shares one namespace, like a notebook
        run_block(block, output, f"{page.relative_to(ROOT)} (block {number})", namespace)


@pytest.mark.parametrize(
    ("page", "number"),
    [
        pytest.param(
            page,
            number,
            marks=[pytest.mark.slow] if "fit(" in block else [],
            id=f"{page.relative_to(ROOT)}:{number}",
        )
        for page in SELF_CONTAINED
        for number, block in enumerate(python_blocks(page), start=1)
    ],
)
def test_python_block_runs_on_its_own(page: Path, number: int, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    block, output = python_blocks_and_outputs(page)[number - 1]
    run_block(block, output, f"{page.relative_to(ROOT)} (block {number})")


def test_self_contained_pages_are_found() -> None:
    names = {str(p.relative_to(DOCS)) for p in SELF_CONTAINED}
    translated = {
        "index",
        "getting-started",
        "guide/training",
        "guide/visualisation",
        "guide/tasks",
        "guide/own-images",
    }
    assert {"theory.md"} | {f"{name}.ja.md" for name in translated} <= names
    assert sum(len(python_blocks(p)) for p in SELF_CONTAINED) >= 40


def test_outputs_are_found_after_their_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '```python\nprint(1)\n```\n\n```text title="Output"\n1\n```\n\n'
        "```python\nx = 2\n```\n\nText.\n\n```text\nnot an output\n```\n",
        encoding="utf-8",
    )
    assert python_blocks_and_outputs(page) == [("print(1)", "1"), ("x = 2", None)]


def test_every_page_with_code_is_tested() -> None:
    runnable = [p for p in PAGES if python_blocks(p)]
    names = {str(p.relative_to(ROOT)) for p in runnable}
    assert {"README.md", "docs/theory.md", "docs/getting-started.md", "docs/guide/blocks.md",
            "docs/guide/training.md", "docs/guide/training-in-depth.md", "docs/faq.md",
            "docs/guide/own-images.md", "docs/guide/custom-modules.md"} <= names  # fmt: skip


def test_pages_show_printed_outputs() -> None:
    shown = {
        str(p.relative_to(ROOT)): sum(o is not None for _, o in python_blocks_and_outputs(p))
        for p in PAGES
    }
    assert shown["docs/faq.md"] >= 8  # the errors people hit, as printed
    assert shown["docs/guide/build-cnn.md"] >= 1  # summary()
    assert shown["docs/guide/own-images.md"] >= 4


@pytest.mark.parametrize("page", sorted((DOCS / "guide").glob("*.md")), ids=lambda p: p.name)
def test_guide_pages_link_to_the_api_reference(page: Path) -> None:
    links = re.findall(r"\]\(\.\./reference/([\w.]+\.md)", page.read_text(encoding="utf-8"))
    assert links, f"{page.name} links to no API reference page"
    for link in links:
        assert (DOCS / "reference" / link).is_file(), link


def test_examples_are_included_from_examples_dir() -> None:
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/mnist_cnn.py"' in text


# ------------------------------------------------------------- the theory page itself


THEORY = (DOCS / "theory.md").read_text(encoding="utf-8")
SECTIONS = [
    "記法",
    "CNNとは",
    "画像",
    "畳み込み演算",
    "畳み込み層",
    "局所受容野・カーネル・フィルター",
    "パディングとストライド",
    "出力サイズ",
    "重み共有と平行移動",
    "プーリングとプーリング層",
    "受容野の拡大",
    "計算量",
    "バッチ正規化とドロップアウト",
    "フィルターの学習",
    "学習したネットワークの中を見る",
    "転置畳み込み",
    "CNN の歴史と残差接続",
    "PyTorch / convkit との対応",
    "演習問題",
    "参考文献",
]


def test_theory_sections_in_order() -> None:
    headings = re.findall(r"^## (\d+)\. (.+)$", THEORY, re.M)
    assert [int(n) for n, _ in headings] == list(range(1, len(SECTIONS) + 1))
    assert [title for _, title in headings] == SECTIONS


def test_theory_terms() -> None:
    assert THEORY.count("畳込み") == 1  # the other spelling, once, so that both are searchable
    assert "相互相関" in THEORY and "cross-correlation" in THEORY
    assert "F.unfold" in THEORY and "im2col" in THEORY
    assert THEORY.count('??? note "解答"') >= 8


def test_theory_cites_every_reference_it_lists() -> None:
    body, references = THEORY.split("## 20. 参考文献\n")
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", references, re.M)]
    anchors = [int(n) for n in re.findall(r"^ +\{ #ref-(\d+) \}$", references, re.M)]
    assert numbers == anchors == list(range(1, len(numbers) + 1))  # each item has its anchor
    citations = re.findall(r"\[\[(\d+)\]\]\(#ref-(\d+)\)", body)
    assert all(label == target for label, target in citations), citations
    assert {int(n) for n, _ in citations} == set(numbers)  # cited inline, all of them
    # the two the issue found listed but never cited, where they apply
    assert "Luo ら [[13]](#ref-13)" in section(11) and "Zhang [[16]](#ref-16)" in section(10)
    assert "Identity Mappings" in references and "[[18]](#ref-18)" in section(17)


def section(number: int) -> str:
    """The text of the theory page's section ``number``."""
    return re.split(r"^## \d+\. ", THEORY, flags=re.M)[number]


def test_theory_says_which_formulas_are_shapes_functions() -> None:
    import convkit.shapes

    intro = THEORY.split("## 1. ")[0]
    claim = next(p for p in intro.split("\n\n") if "convkit.shapes" in p and "の関数" in p)
    named = re.findall(r"`(\w+)`", claim.split("の関数")[1].split("として")[0])
    assert set(named) == {
        "conv_output_size",
        "same_padding",
        "tf_same_padding",
        "conv_params",
        "pool_output_size",
        "receptive_field",
        "conv_macs",
        "conv_transpose_output_size",
    }
    blocks = python_blocks(DOCS / "theory.md")
    for name in named:  # each is a convkit.shapes function the page's code calls
        assert callable(getattr(convkit.shapes, name, None)), name
        assert any(f"{name}(" in block for block in blocks), name
    # the formulas that are not: named as such, never claimed as shapes functions
    rest = claim.replace("\n", "").split("それ以外の式")[1].split("の関数ではなく")[0]
    for formula in ("バッチ正規化", "逆伝播", "Grad-CAM"):
        assert formula in rest, formula
    assert "式はすべて" not in THEORY
    for page in (DOCS / "index.md", DOCS / "index.ja.md", ROOT / "README.md"):
        assert "every formula" not in page.read_text(encoding="utf-8"), page


def test_theory_links_to_the_japanese_tutorial() -> None:
    assert "[はじめての学習](getting-started.ja.md)" in section(0)
    assert "[はじめての学習](getting-started.ja.md)" in section(15)


@pytest.mark.parametrize(
    ("guide", "number"),
    [("build-cnn.md", 11), ("visualisation.md", 15), ("residual-blocks.md", 17)],
)
def test_guides_link_to_their_theory_section(guide: str, number: int) -> None:
    from pymdownx.slugs import slugify

    heading = re.search(rf"^## ({number}\. .+)$", THEORY, re.M)
    assert heading
    anchor = slugify(case="lower")(heading.group(1), "-")
    text = (DOCS / "guide" / guide).read_text(encoding="utf-8")
    assert f"(../theory.md#{anchor})" in text, anchor


FIGURE = re.compile(
    r'<figure markdown="span">\s*!\[[^\]]+\]\((?P<src>img/[^)\s]+)\)[^\n]*\n'
    r"\s*<figcaption(?: markdown=\"span\")?>図 (?P<number>\d+)\u3000(?P<caption>.+?)</figcaption>"
)


def test_theory_figures_are_numbered_captioned_and_cited() -> None:
    images = re.findall(r"!\[[^\]]*\]\((img/[^)\s]+)\)", THEORY)
    figures = list(FIGURE.finditer(THEORY))
    assert len(figures) == len(images) >= 13  # every image sits in a numbered figure
    assert [int(f["number"]) for f in figures] == list(range(1, len(figures) + 1))
    body = FIGURE.sub("", THEORY)
    for figure in figures:
        assert (DOCS / figure["src"]).is_file(), figure["src"]
        assert f"図 {figure['number']}" in body, f"図 {figure['number']} is never cited"


CHECK = re.compile(r"<!-- check: (?P<expr>.+?) -->")


def answer_blocks() -> list[tuple[str, list[str]]]:
    """(answer text, check expressions) for each collapsible answer."""
    blocks = []
    for block in re.split(r'^\?\?\? note "解答"\n', THEORY, flags=re.M)[1:]:
        body = []
        for line in block.splitlines():
            if line and not line.startswith("    "):
                break
            body.append(line)
        text = "\n".join(body)
        blocks.append((CHECK.sub("", text), CHECK.findall(text)))
    return blocks


def test_every_numeric_answer_is_checked() -> None:
    checked = [checks for _, checks in answer_blocks() if checks]
    assert len(checked) >= 14
    assert sum(len(c) for c in checked) >= 28


def test_tf_same_padding_is_the_fewest_zeros_for_ceil_size_over_stride() -> None:
    """TensorFlow's "SAME", as the theory page states it: the fewest zeros that give
    ceil(size / stride) outputs, the smaller half before."""
    differ = 0
    for size, kernel, stride, dilation in itertools.product(
        range(5, 20), range(1, 6), range(1, 4), range(1, 3)
    ):
        before, after = tf_same_padding(size, kernel, stride=stride, dilation=dilation)
        total = before + after
        out = conv_output_size(
            size, kernel, stride=stride, padding=(before, after), dilation=dilation
        )
        assert out == -(-size // stride) and after - before in (0, 1)
        if total:  # one zero fewer would lose an output
            fewer = conv_output_size(
                size, kernel, stride=stride, padding=(0, total - 1), dilation=dilation
            )
            assert fewer < out
        differ += (before, after) != same_padding(kernel, dilation=dilation)
        if stride == 1:  # at stride 1 both are D(K-1) split the same way
            assert (before, after) == same_padding(kernel, dilation=dilation)
    assert differ > 0  # the theory page's point: with stride > 1 they differ


MATRIX = re.compile(r"\\begin\{pmatrix\}(.*?)\\end\{pmatrix\}", re.S)


def matrices_in(text: str) -> list[list[float]]:
    """The entries of each pmatrix in ``text``, row by row."""
    return [[float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", m)] for m in MATRIX.findall(text)]


def literal_matrices(source: str) -> list[torch.Tensor]:
    """Every 2-D list literal of numbers in Python ``source``, as tensors."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List) and len(node.elts) > 1:
            try:
                rows = ast.literal_eval(node)
                found.append(torch.tensor(rows, dtype=torch.float64))
            except (ValueError, TypeError):  # not a literal, or ragged / not numbers
                continue
    return [m for m in found if m.dim() == 2]


def figure_matrices(source: str) -> list[torch.Tensor]:
    """The number grids the figure script draws: its literals, their cross-correlations
    with every smaller literal and their 2x2 max poolings."""
    literals = literal_matrices(source)
    derived = [
        F.conv2d(x[None, None], h[None, None])[0, 0]
        for x in literals
        for h in literals
        if h.shape[0] < x.shape[0] and h.shape[1] < x.shape[1]
    ]
    pooled = [F.max_pool2d(x[None, None], 2)[0, 0] for x in literals if min(x.shape) >= 2]
    return literals + derived + pooled


def shows(grid: torch.Tensor, block: torch.Tensor) -> bool:
    """Whether ``block`` appears as a contiguous part of ``grid``."""
    (h, w), (bh, bw) = grid.shape, block.shape
    return any(
        torch.equal(grid[i : i + bh, j : j + bw], block)
        for i in range(h - bh + 1)
        for j in range(w - bw + 1)
    )


def answers_shown_in_figures(theory: str, figure_script: str) -> list[list[list[float]]]:
    grids = figure_matrices(figure_script)
    shown = []
    for block in re.split(r'^\?\?\? note "解答"\n', theory, flags=re.M)[1:]:
        for expr in CHECK.findall(block):
            tree = ast.parse(expr, mode="eval").body
            if isinstance(tree, ast.Compare) and isinstance(tree.comparators[0], ast.List):
                answer = torch.tensor(ast.literal_eval(tree.comparators[0]), dtype=torch.float64)
                if answer.dim() == 2 and any(shows(g, answer) for g in grids):
                    shown.append(answer.tolist())
    return shown


def test_no_figure_gives_an_exercise_answer_away() -> None:
    script = (ROOT / "scripts" / "make_figures.py").read_text(encoding="utf-8")
    assert len(literal_matrices(script)) >= 3  # the figures' number grids were found
    assert answers_shown_in_figures(THEORY, script) == []
    # the check itself: an answer that a figure's grid contains is caught
    corner = literal_matrices(script)[0][:2, :2].tolist()
    leaky = f'??? note "解答"\n    <!-- check: x.tolist() == {corner} -->\n'
    assert answers_shown_in_figures(leaky, script) == [corner]


@pytest.mark.parametrize(
    "text_and_expr",
    [(text, expr) for text, checks in answer_blocks() for expr in checks],
    ids=lambda item: item[1][:60],
)
def test_theory_answer(text_and_expr: tuple[str, str]) -> None:
    text, expr = text_and_expr
    namespace = {
        "torch": torch, "F": F, "build_cnn": build_cnn, "conv_output_size": conv_output_size,
        "pool_output_size": pool_output_size, "same_padding": same_padding,
        "conv_params": conv_params, "conv_macs": conv_macs, "receptive_field": receptive_field,
        "summary": summary, "tf_same_padding": tf_same_padding,
        "conv_transpose_output_size": conv_transpose_output_size,
    }  # fmt: skip
    assert eval(expr, namespace) is True, expr
    # the number the check verifies is the number the reader sees
    tree = ast.parse(expr, mode="eval").body
    if isinstance(tree, ast.Compare) and isinstance(tree.comparators[0], ast.Constant):
        value = tree.comparators[0].value
        if isinstance(value, int) and not isinstance(value, bool) and value > 9:
            assert str(value) in text.replace(",", ""), (value, text)
    if isinstance(tree, ast.Compare) and isinstance(tree.comparators[0], ast.List):
        # a matrix answer: the checked entries are those of a matrix the answer shows
        entries = [float(v) for row in ast.literal_eval(tree.comparators[0]) for v in row]
        assert entries in matrices_in(text), (entries, matrices_in(text))


# ------------------------------------------------------------------- the built site


@functools.cache
def built_site() -> Path:
    target = ROOT / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return target


EXTERNAL_ASSET = re.compile(
    r"<script[^>]+src=\"(?:https?:)?//|<link[^>]+rel=\"(?:stylesheet|preload|preconnect|icon)\"[^>]+href=\"(?:https?:)?//"
    r"|<link[^>]+href=\"(?:https?:)?//[^\"]+\"[^>]+rel=\"(?:stylesheet|preload|preconnect)\"|fonts\.googleapis|fonts\.gstatic|cdn\.jsdelivr|unpkg\.com|cdnjs"
)
EXTERNAL_URL_IN_CSS = re.compile(
    r"url\(\s*['\"]?(?:https?:)?//|@import\s+['\"]?(?:url\()?['\"]?(?:https?:)?//"
)


@pytest.mark.slow
def test_site_loads_nothing_from_elsewhere() -> None:
    site = built_site()
    offenders = []
    for path in site.rglob("*"):
        if path.suffix == ".html":
            offenders += [
                f"{path}: {m.group(0)}"
                for m in EXTERNAL_ASSET.finditer(path.read_text(encoding="utf-8"))
            ]
        elif path.suffix == ".css":
            offenders += [
                f"{path}: {m.group(0)}"
                for m in EXTERNAL_URL_IN_CSS.finditer(path.read_text(encoding="utf-8"))
            ]
    assert not offenders, offenders[:10]
    mathjax = site / "javascripts" / "vendor" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file() and (mathjax / "LICENSE").is_file()
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert "mathjax" in (site / "theory" / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_japanese_headings_get_anchors() -> None:
    html = (built_site() / "theory" / "index.html").read_text(encoding="utf-8")
    assert 'id="9-重み共有と平行移動"' in html


# A line break inside a paragraph shows as a space; between two Japanese characters that
# space is wrong (「学習に␣任されて」). Checked on the text as a reader sees it: each block
# element (paragraph, list item, table cell...) on its own, code blocks left out.
CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# ... and after 、 or 。 whatever follows (「並べます。␣PyTorch」): they carry their own space.
SPACE_BETWEEN_CJK = re.compile(f"[{CJK}][ \t\r\n]+[{CJK}]|[、。][ \t\r\n]+(?=[^\\s\0])")
BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "label", "li", "main", "nav", "ol", "option", "p", "section", "summary", "table",
    "tbody", "td", "tfoot", "th", "thead", "title", "tr", "ul", "button", "input",
}  # fmt: skip
HIDDEN_TAGS = {"pre", "script", "style", "svg", "textarea"}


class TextBlocks(HTMLParser):
    """The text of each block element of an HTML page, without code blocks and scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[list[str]] = [[]]
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.hidden += tag in HIDDEN_TAGS
        if tag in BLOCK_TAGS:
            self.blocks.append([])

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in HIDDEN_TAGS
        if tag in BLOCK_TAGS:
            self.blocks.append([])

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.blocks[-1].append(data)


def spaces_between_cjk(html: str) -> list[str]:
    parser = TextBlocks()
    parser.feed(html)
    texts = ["".join(block) for block in parser.blocks]
    return [
        text[max(m.start() - 12, 0) : m.end() + 12]
        for text in texts
        for m in SPACE_BETWEEN_CJK.finditer(text)
    ]


def test_spaces_between_cjk_are_found() -> None:
    assert spaces_between_cjk("<p>学習に\n   任されて</p>") == ["学習に\n   任されて"]
    assert spaces_between_cjk("<p><strong>重み</strong>\n<em>共有</em></p>") == ["重み\n共有"]
    assert spaces_between_cjk("<tr><td>記号</td>\n<td>意味</td></tr>") == []  # two cells
    assert spaces_between_cjk("<p>（a）24\u3000（b）</p><pre>学習 任せ</pre>") == []
    assert spaces_between_cjk("<p>並べます。\nPyTorch</p>") == ["並べます。\nPyTorch"]


def test_hook_joins_lines_between_cjk_only() -> None:
    hook = load_hook("japanese")
    html = "<p>学習に\n   <strong>任されて</strong>\nいます。the\nnext 行と\nPyTorch</p>"
    joined = "<p>学習に<strong>任されて</strong>います。the\nnext 行と\nPyTorch</p>"
    assert hook.join_cjk_lines(html) == joined
    assert hook.join_cjk_lines("<pre>学習\n任せ</pre>") == "<pre>学習\n任せ</pre>"


def test_hook_joins_lines_after_japanese_punctuation() -> None:
    hook = load_hook("japanese")
    html = "<p>順に並べます。\nPyTorch の\n<code>x</code>、\n<span>1</span> 枚（第 9 節）\n2 つ</p>"
    joined = "<p>順に並べます。PyTorch の\n<code>x</code>、<span>1</span> 枚（第 9 節）2 つ</p>"
    assert hook.join_cjk_lines(html) == joined
    assert hook.join_cjk_lines("<pre>a、\nb</pre>") == "<pre>a、\nb</pre>"  # code as written


#: The Japanese markdown: the theory page and the translations.
JAPANESE_PAGES = [DOCS / "theory.md", *sorted(DOCS.rglob("*.ja.md"))]
#: A space (half- or full-width) after 、 or 。: shown as a gap before the next word.
SPACE_AFTER_PUNCTUATION = re.compile("[、。][ \t\u3000]+(?=\\S)")


def prose(markdown: str) -> str:
    """``markdown`` without code blocks and HTML comments, each inline code or formula
    replaced by ``X``."""
    text = FENCE.sub("", markdown)
    text = re.sub(r"<!--.*?-->|\$\$.*?\$\$", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`|\\\(.*?\\\)", "X", text)


def test_space_after_punctuation_is_found() -> None:
    found = SPACE_AFTER_PUNCTUATION.findall(prose("並べます。 PyTorch と、\u30002 つ。`a。 b`"))
    assert found == ["。 ", "、\u3000"]


@pytest.mark.parametrize("page", JAPANESE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_no_space_after_japanese_punctuation_in_the_markdown(page: Path) -> None:
    text = prose(page.read_text(encoding="utf-8"))
    found = [text[m.start() - 10 : m.end() + 10] for m in SPACE_AFTER_PUNCTUATION.finditer(text)]
    assert not found, found
    assert not re.findall(r"^[ \t]*ー", text, re.M)  # no source line starts with ー


@pytest.mark.parametrize(
    "page", sorted(DOCS.rglob("*.ja.md")), ids=lambda p: str(p.relative_to(DOCS))
)
def test_japanese_pages_keep_the_english_heading_ids(page: Path) -> None:
    """A link to page.md#anchor from an English page reaches the same section of
    page.ja.md when the Japanese side shows it."""
    from pymdownx.slugs import slugify

    english = FENCE.sub("", page.with_name(page.name.replace(".ja.md", ".md")).read_text())
    slug = slugify(case="lower")
    ids = [slug(re.sub(r"`", "", h), "-") for h in re.findall(r"^## (.+)$", english, re.M)]
    japanese = page.read_text(encoding="utf-8")
    kept = re.findall(r"^## .+ \{ #([\w-]+) \}$", japanese, re.M)
    assert sorted(kept) == sorted(ids), (kept, ids)


TUTORIAL = DOCS / "getting-started.ja.md"
TUTORIAL_SCRIPT = ROOT / "examples" / "ja_first_training.py"


def test_tutorial_shows_the_whole_script_in_order() -> None:
    script = TUTORIAL_SCRIPT.read_text(encoding="utf-8")
    sections = re.findall(r"^# --8<-- \[start:([\w-]+)\]$", script, re.M)
    shown = re.findall(
        r'^--8<-- "examples/ja_first_training\.py:([\w-]+)"$',
        TUTORIAL.read_text(encoding="utf-8"),
        re.M,
    )
    assert shown == sections and len(sections) >= 8
    # every line of code is in a section: the page shows the script, all of it
    outside = re.sub(r"(?ms)^# --8<-- \[start:.*?^# --8<-- \[end:[\w-]+\]$", "", script)
    outside = re.sub(r'(?s)^""".*?"""', "", outside)
    assert not outside.strip(), outside
    steps = ("build_cnn(", "fit(", "evaluate(", "history.plot()", "plot_filters(",
             "plot_feature_maps(", "plot_grad_cam(", "mnist_sample(")  # fmt: skip
    assert all(step in script for step in steps)


def tutorial_outputs() -> list[str]:
    """The outputs the tutorial shows, in order, after the script's sections."""
    text = TUTORIAL.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    return [
        after["body"]
        for match, after in itertools.pairwise(fences)
        if "--8<--" in match["body"]
        and not text[match.end() : after.start()].strip()
        and after.group(0).splitlines()[0].strip().endswith(OUTPUT_FENCES)
    ]


def without_times(text: str) -> str:
    """``text`` with the seconds at the end of fit's epoch lines replaced by ``…``."""
    return re.sub(r"(?m)^(Epoch \d+/\d+ - .*) - \d+(\.\d+)?s$", r"\1 - …s", text).strip()


@pytest.mark.slow  # five epochs of the notebook's CNN on 4,000 images: ~15 s on 2 CPU cores
def test_tutorial_script_prints_what_the_tutorial_shows(tmp_path: Path) -> None:
    import matplotlib.image

    result = subprocess.run(
        [sys.executable, str(TUTORIAL_SCRIPT), "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shown = tutorial_outputs()
    assert len(shown) >= 5  # data, summary, epochs, scores, figures
    assert without_times(result.stdout) == without_times("".join(shown))
    # the figures the page shows are this script's, as it saves them
    figures = DOCS / "img" / "first-training"
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        p.name for p in figures.glob("*.png")
    )
    for made in tmp_path.glob("*.png"):
        shown_image = matplotlib.image.imread(figures / made.name)
        assert matplotlib.image.imread(made).shape == shown_image.shape, made.name
        assert f"](img/first-training/{made.name})" in TUTORIAL.read_text(encoding="utf-8")


def test_languages_hook_links_and_notice() -> None:
    hook = load_hook("languages")
    # a link to page.ja.md from the English build: the Japanese page's URL
    assert hook.japanese_links("[a](getting-started.ja.md)", "theory.md", "theory/") == (
        "[a](../ja/getting-started/)"
    )
    assert hook.japanese_links("[a](../index.ja.md#x)", "guide/x.md", "guide/x/") == (
        "[a](../../ja/#x)"
    )
    assert hook.japanese_links("[a](theory.md)", "index.md", "") == "[a](theory.md)"
    html = '<body><article class="md-content__inner md-typeset"><h1>Devices</h1>'
    noticed = hook.add_notice(html, "ja/guide/devices/")
    assert '<article lang="en" class="md-content__inner md-typeset">' in noticed
    notice = re.search(r'<div class="admonition info" lang="ja".*?</div>', noticed)
    assert notice and "まだ日本語に翻訳されていません" in notice.group(0)
    assert 'href="../../../guide/devices/"' in notice.group(0)
    assert noticed.index("</div>") < noticed.index("<h1>")
    head = '<head>\n    <link rel="alternate" href="../ja/" hreflang="ja">\n    <title>'
    assert hook.without_alternate_links(head) == "<head>\n    <title>"


@pytest.mark.slow
def test_no_space_between_japanese_characters_in_the_site() -> None:
    site = built_site()
    pages = sorted(site.rglob("*.html"))
    offenders = {
        str(page.relative_to(site)): found
        for page in pages
        if (found := spaces_between_cjk(page.read_text(encoding="utf-8")))
    }
    assert not offenders, offenders
    # the search index holds the same text: its snippets must not show the space either
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    snippets = [
        piece
        for doc in index["docs"]
        for _, fragment in re.findall(r"<(p|li)>(.*?)</\1>", doc["text"], re.S)
        for piece in [re.sub(r"<[^>]+>", "\0", fragment)]
        if SPACE_BETWEEN_CJK.search(piece)
    ]
    assert not snippets, snippets[:5]
    japanese = [doc for doc in index["docs"] if re.search(f"<p>[^<]*[{CJK}]", doc["text"])]
    assert len(japanese) > 10  # the check above read the theory page's paragraphs


@pytest.mark.slow
def test_theory_page_is_served_as_japanese() -> None:
    site = built_site()
    assert '<html lang="ja"' in (site / "theory" / "index.html").read_text(encoding="utf-8")
    assert '<html lang="en"' in (site / "index.html").read_text(encoding="utf-8")


def load_hook(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "hooks" / f"{name}.py")
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_reference_index_lists_every_public_name() -> None:
    import convkit

    table = load_hook("api_index").public_names_table()
    listed = re.findall(r"^\| \[`(\w+)`\]\[([\w.]+)\] \| (\w+) \| (.*) \|$", table, re.M)
    assert sorted(name for name, *_ in listed) == sorted(convkit.__all__)
    for name, path, kind, first_paragraph in listed:
        obj = getattr(convkit, name)
        # the link goes to where the object is defined (and documented)
        defined_in = obj.__name__ if kind == "module" else f"{obj.__module__}.{obj.__qualname__}"
        assert path == defined_in, (name, path)
        assert first_paragraph, f"{name} has no docstring summary"


def test_type_aliases_page_documents_every_alias() -> None:
    from convkit.utils import typing as _typing

    aliases = [name for name, hint in _typing.__annotations__.items() if hint == "TypeAlias"]
    assert {"IntOrPair", "Padding", "LayerSpec", "DeviceLike", "MetricFn"} <= set(aliases)
    section = load_hook("api_index").type_aliases_section()
    headings = re.findall(r"^## `(\w+)` \{ #convkit\.utils\.typing\.(\w+) \}$", section, re.M)
    assert [name for name, _ in headings] == aliases
    assert all(name == anchor for name, anchor in headings)
    for name in aliases:  # each with its definition and its meaning
        body = section.split(f"## `{name}`")[1].split("## ")[0]
        assert "`" in body and len(body.strip().splitlines()) >= 3, body


@pytest.mark.slow
def test_reference_pages_show_the_tables() -> None:
    site = built_site()
    index = (site / "reference" / "convkit" / "index.html").read_text(encoding="utf-8")
    assert (
        index.count("<tr>") >= 30 and 'href="../blocks/#convkit.layers.blocks.ConvBlock"' in index
    )
    types = (site / "reference" / "types" / "index.html").read_text(encoding="utf-8")
    assert 'id="convkit.utils.typing.IntOrPair"' in types and "type-aliases -->" not in types


# ------------------------------------------------------------------ the Japanese site


#: The URL (under ja/ on the Japanese side) of each page translated as page.ja.md or
#: page.ja.ipynb (the tutorial notebook).
TRANSLATED = sorted(
    re.sub(r"(^|/)index/$", r"\1", re.sub(r"\.ja\.(md|ipynb)$", "/", str(p.relative_to(DOCS))))
    for p in DOCS.rglob("*.ja.*")
    if p.suffix in {".md", ".ipynb"}
)
CONFIG = re.compile(r'<script id="__config" type="application/json">(.*?)</script>', re.S)


def page_urls(site: Path, under: str = "") -> list[str]:
    """The URLs of the site's pages (``guide/training/``), or of those under ``under``."""
    urls = []
    for path in (site / under).rglob("index.html"):
        if "<article" in path.read_text(encoding="utf-8"):
            folder = path.parent.relative_to(site).as_posix()
            urls.append("" if folder == "." else f"{folder}/")
    return sorted(urls)


def resolve(site: Path, page_url: str, href: str) -> Path:
    """The file a relative ``href`` on the page at ``page_url`` points to."""
    target = (site / page_url / href.split("#")[0]).resolve()
    return target / "index.html" if target.is_dir() else target


def test_translated_pages_are_found() -> None:
    expected = [
        "",
        "getting-started/",
        "guide/training/",
        "guide/visualisation/",
        "guide/tasks/",
        "guide/own-images/",
        "tutorial/first-cnn/",
    ]
    assert sorted(expected) == TRANSLATED


@pytest.mark.slow
def test_japanese_side_has_japanese_interface() -> None:
    site = built_site()
    for url in ("ja/", "ja/getting-started/", "ja/guide/training/", "ja/theory/", "ja/faq/"):
        html = (site / url / "index.html").read_text(encoding="utf-8")
        assert '<html lang="ja"' in html, url
        translations = json.loads(CONFIG.search(html).group(1))["translations"]
        assert translations["clipboard.copy"] == "クリップボードへコピー", url
        assert 'aria-label="目次"' in html and 'placeholder="検索"' in html, url
        assert 'aria-label="言語切り替え"' in html, url
        assert 'title="この見出しへのリンク"' in html and "Permanent link" not in html, url
    english = (site / "guide" / "training" / "index.html").read_text(encoding="utf-8")
    assert json.loads(CONFIG.search(english).group(1))["translations"]["clipboard.copy"] == (
        "Copy to clipboard"
    )
    assert 'aria-label="Table of contents"' in english and "Permanent link" in english
    tutorial = (site / "ja" / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<h1[^>]*>はじめての学習<", tutorial)


@pytest.mark.slow
def test_language_switch_links_each_page_to_its_other_language() -> None:
    site = built_site()
    urls, japanese = page_urls(site), page_urls(site, "ja")
    assert len(japanese) == len([u for u in urls if not u.startswith("ja/")]) > 30
    for url in urls:
        html = (site / url / "index.html").read_text(encoding="utf-8")
        links = r'<a href="([^"]*)" hreflang="(\w+)" class="md-select__link">'
        switch = {lang: href for href, lang in re.findall(links, html)}
        other = url.removeprefix("ja/") if url.startswith("ja/") else f"ja/{url}"
        assert resolve(site, url, switch["ja" if other.startswith("ja/") else "en"]) == (
            (site / other / "index.html").resolve()
        ), url
    # one 404 page, English, whose switch leads to the two home pages from the site's root
    missing = (site / "404.html").read_text(encoding="utf-8")
    assert '<html lang="en"' in missing and 'placeholder="Search"' in missing
    links = re.findall(r'<a href="([^"]*)" hreflang="\w+" class="md-select__link">', missing)
    assert links == ["/convkit/", "/convkit/ja/"]


@pytest.mark.slow
def test_untranslated_pages_say_so_in_japanese() -> None:
    site = built_site()
    noticed = []
    for url in page_urls(site):
        html = (site / url / "index.html").read_text(encoding="utf-8")
        notice = re.search(
            r'<div class="admonition info" lang="ja" data-untranslated>.*?</div>', html
        )
        japanese = url.startswith("ja/")
        english_url = url.removeprefix("ja/")
        expected = japanese and english_url not in TRANSLATED and english_url != "theory/"
        assert bool(notice) == expected, url
        if notice:
            noticed.append(url)
            assert "このページはまだ日本語に翻訳されていません" in notice.group(0)
            href = re.search(r'href="([^"]+)"', notice.group(0)).group(1)
            assert resolve(site, url, href) == (site / english_url / "index.html").resolve()
            assert '<article lang="en" class="md-content__inner md-typeset">' in html
    assert "ja/guide/devices/" in noticed and "ja/reference/blocks/" in noticed
    assert len(noticed) > 20


@pytest.mark.slow
def test_search_index_holds_each_page_once() -> None:
    index = json.loads((built_site() / "search" / "search_index.json").read_text("utf-8"))
    pages = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert {p.removeprefix("ja/") for p in pages if p.startswith("ja/")} == set(TRANSLATED)
    assert "theory/" in pages and "ja/theory/" not in pages  # one copy of the theory page
    assert "guide/training/" in pages and "ja/guide/training/" in pages  # both languages


@pytest.mark.slow
@pytest.mark.parametrize("url", ["theory/", "ja/theory/", "", "ja/guide/visualisation/"])
def test_links_to_the_japanese_tutorial_resolve(url: str) -> None:
    site = built_site()
    html = (site / url / "index.html").read_text(encoding="utf-8")
    article = html.split("<article", 1)[1]
    hrefs = re.findall(r'<a href="([^"]+)">はじめての学習</a>', article)
    assert hrefs, url
    tutorial = (site / "ja" / "getting-started" / "index.html").resolve()
    assert all(resolve(site, url, href) == tutorial for href in hrefs), hrefs


# ---------------------------------------------------------------------- in a browser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))

    class Quiet(handler.func):  # type: ignore[name-defined, misc]
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not (CHROMIUM and CHROMEDRIVER):
        message = (
            "The browser tests need Debian's Chromium and ChromeDriver: "
            "apt-get install -y chromium chromium-driver (selenium comes with the dev extra). "
            ".ci/run installs them."
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # never silently skipped in CI
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,1000",
        "--lang=ja",
    )
    for flag in flags:
        options.add_argument(flag)
    # every network request the pages make, and the console, for the offline test
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    with serve(built_site()) as url:
        driver.base_url = url  # type: ignore[attr-defined]
        yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


@pytest.mark.slow
def test_theory_formulas_are_typeset(browser) -> None:  # type: ignore[no-untyped-def]
    browser.get(browser.base_url + "/theory/")
    count = wait_for(
        lambda: browser.execute_script("return document.querySelectorAll('mjx-container').length")
    )
    assert count > 50
    text = browser.execute_script("return document.querySelector('article').innerText")
    assert "$$" not in text and "\\frac" not in text and "\\sum" not in text
    errors = browser.execute_script("return document.querySelectorAll('mjx-merror').length")
    assert errors == 0
    # MathJax done and its (vendored) web fonts loaded, so the screenshot shows the formulas
    browser.set_script_timeout(30)
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "MathJax.startup.promise.then(() => document.fonts.ready).then(() => done(true));"
    )
    fonts = browser.execute_script(
        "return Object.fromEntries([...document.fonts].filter(f => f.family.startsWith('MJX'))"
        ".map(f => [f.family, f.status]))"
    )
    # the glyphs are drawn with MathJax's own fonts, served from the vendored copy
    assert fonts.get("MJXTEX-I") == "loaded" and fonts.get("MJXTEX") == "loaded", fonts
    assert "error" not in fonts.values(), fonts
    browser.execute_script("document.getElementById('4-畳み込み演算').scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "theory.png"))
    assert (ARTIFACTS / "theory.png").stat().st_size > 10_000


def search(browser, start: str, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The links the search box lists for ``query`` on the page at ``start``."""
    from selenium.webdriver.common.by import By

    browser.get(browser.base_url + start)
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    browser.execute_script("document.querySelector('label[for=__search]').click()")
    wait_for(lambda: box.is_displayed())
    box.send_keys(query)

    def results():  # type: ignore[no-untyped-def]
        links = browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
        return [link.get_attribute("href") for link in links]

    return wait_for(results)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("start", ["/", "/ja/"])
@pytest.mark.parametrize("query", ["重み共有", "ストライド", "パディング", "受容野"])
def test_japanese_search_finds_the_theory_page(browser, start: str, query: str) -> None:  # type: ignore[no-untyped-def]
    hrefs = search(browser, start, query)
    assert any("/theory/" in href for href in hrefs), hrefs
    ARTIFACTS.mkdir(exist_ok=True)
    name = "ja-" if start == "/ja/" else ""
    browser.save_screenshot(str(ARTIFACTS / f"search-{name}{len(query)}.png"))


@pytest.mark.slow
@pytest.mark.parametrize("query", ["学習曲線", "はじめての学習"])
def test_japanese_search_finds_the_tutorial(browser, query: str) -> None:  # type: ignore[no-untyped-def]
    hrefs = search(browser, "/ja/", query)
    assert any("/ja/getting-started/" in href for href in hrefs), hrefs


@pytest.mark.slow
def test_api_page_shows_the_convblock_signature(browser) -> None:  # type: ignore[no-untyped-def]
    browser.get(browser.base_url + "/reference/blocks/")
    text = browser.execute_script("return document.querySelector('article').innerText")
    signature = re.search(r"ConvBlock\(\s*in_channels.*?order.*?\)", text, re.S)
    assert signature, text[:2000]
    for name in ("out_channels", "kernel_size", "padding", "stride", "norm", "act", "pool"):
        assert name in signature.group(0)


# With mike's versioning, Material asks the site's own server for versions.json (written by
# mike next to the deployed versions); a plain local build has none, which is harmless.
MIKE = "provider: mike" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


@pytest.mark.slow
def test_pages_request_nothing_from_elsewhere(browser) -> None:  # type: ignore[no-untyped-def]
    # Material keeps what it fetched (or failed to) in the session: start from a clean one
    browser.get(browser.base_url + "/404.html")
    browser.execute_script("sessionStorage.clear(); localStorage.clear()")
    browser.get_log("performance")  # drop what earlier tests left
    browser.get_log("browser")
    requested, console_errors = [], []
    pages = (
        "/",
        "/theory/",
        "/guide/training/",
        "/reference/blocks/",
        "/ja/",
        "/ja/guide/devices/",
    )
    for path in pages:
        browser.get(browser.base_url + path)
        wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
        # Material asks for repository facts after the page has loaded: give it the time
        browser.set_script_timeout(10)
        browser.execute_async_script("setTimeout(arguments[arguments.length - 1], 1500)")
        for entry in browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requested.append(message["params"]["request"]["url"])
        logged = browser.get_log("browser")
        console_errors += [
            f"{path}: {e['message']}"
            for e in logged
            if e["level"] == "SEVERE" and not (MIKE and "/versions.json" in e["message"])
        ]
    elsewhere = [u for u in requested if not u.startswith((browser.base_url, "data:", "blob:"))]
    assert not elsewhere, elsewhere
    assert not console_errors, console_errors
    # the log saw the page's own requests: scripts, styles, images, MathJax's fonts
    assert any(u.endswith("tex-chtml.js") for u in requested), requested
    assert any("/img/" in u for u in requested), requested


@pytest.mark.slow
def test_theory_page_in_the_browser_figures_and_text(browser) -> None:  # type: ignore[no-untyped-def]
    browser.get(browser.base_url + "/theory/")
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
    images = browser.execute_script(
        "return [...document.querySelectorAll('article img')]"
        ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
    )
    assert len(images) >= 13 and all(loaded for _, loaded in images), images
    captions = browser.execute_script(
        "return [...document.querySelectorAll('article figcaption')].map(c => c.innerText)"
    )
    assert [c.split("\u3000")[0] for c in captions] == [
        f"図 {n}" for n in range(1, len(images) + 1)
    ]
    # what the reader sees (innerText, as laid out): no space between two Japanese characters
    text = browser.execute_script("return document.querySelector('article').innerText")
    spaced = [
        text[max(m.start() - 10, 0) : m.end() + 10] for m in re.finditer(f"[{CJK}] +[{CJK}]", text)
    ]
    assert not spaced, spaced
    assert browser.execute_script("return document.documentElement.lang") == "ja"


def typeset(browser) -> None:  # type: ignore[no-untyped-def]
    """Wait until MathJax has typeset the page (when it has formulas) and fonts are loaded."""
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
    formulas = browser.execute_script("return document.querySelectorAll('.arithmatex').length")
    wait_for(
        lambda: (
            browser.execute_script("return document.querySelectorAll('mjx-container').length")
            >= formulas
        )
    )
    browser.set_script_timeout(30)
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "MathJax.startup.promise.then(() => document.fonts.ready).then(() => done(true));"
    )


@contextlib.contextmanager
def window_width(browser, width: int) -> Iterator[None]:  # type: ignore[no-untyped-def]
    browser.set_window_size(width, 900)
    try:
        yield
    finally:
        browser.set_window_size(1280, 1000)


#: The Japanese pages to lay out: the theory page (on both sides) and the tutorial.
LAID_OUT = ["/theory/", "/ja/theory/", "/ja/getting-started/"]


@pytest.mark.slow
@pytest.mark.parametrize("path", LAID_OUT)
def test_japanese_pages_fit_a_phone_screen(browser, path: str) -> None:  # type: ignore[no-untyped-def]
    with window_width(browser, 390):
        browser.get(browser.base_url + path)
        typeset(browser)
        assert browser.execute_script("return window.innerWidth") == 390
        # nothing wider than the screen: wide formulas, code and tables scroll in their box
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        if path == "/ja/getting-started/":
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "tutorial-390.png"))


#: Characters a Japanese line must not start with (kinsoku): the long vowel mark and the
#: small kana.
NO_LINE_START = "ーぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ"
LINE_STARTS = """
const marks = new RegExp('[' + arguments[0] + ']');
const range = document.createRange();
function box(node, i) {
  range.setStart(node, i);
  range.setEnd(node, i + 1);
  const rects = range.getClientRects();
  return rects.length ? rects[0] : null;
}
const walker = document.createTreeWalker(document.querySelector('article'), NodeFilter.SHOW_TEXT);
let checked = 0;
const starts = [];
while (walker.nextNode()) {
  const node = walker.currentNode, text = node.data;
  if (node.parentElement.closest('pre, code, mjx-container, script, style')) continue;
  for (let i = 1; i < text.length; i++) {
    if (!marks.test(text[i]) || /\\s/.test(text[i - 1])) continue;
    const here = box(node, i), before = box(node, i - 1);
    if (!here || !before || here.width === 0) continue;
    checked++;
    if (here.top >= before.bottom - 1) starts.push(text.slice(Math.max(0, i - 6), i + 3));
  }
}
return [checked, starts];
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/theory/", "/ja/getting-started/", "/ja/guide/tasks/"])
def test_no_line_starts_with_a_long_vowel_mark_or_small_kana(browser, path: str) -> None:  # type: ignore[no-untyped-def]
    browser.get(browser.base_url + path)
    typeset(browser)
    found = {}
    for width in range(360, 1300, 40):  # phones to desktops: each width breaks lines anew
        with window_width(browser, width):
            checked, starts = browser.execute_script(LINE_STARTS, NO_LINE_START)
            assert checked > 50  # the check saw the page's text
            if starts:
                found[width] = starts
    assert not found, found


#: The Japanese fonts of docs/stylesheets/japanese.css, one per system.
JAPANESE_FONTS = ("Hiragino Sans", "Noto Sans CJK JP", "Yu Gothic", "Meiryo")


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/theory/", "/ja/getting-started/"])
def test_japanese_text_style_in_the_browser(browser, path: str) -> None:  # type: ignore[no-untyped-def]
    browser.get(browser.base_url + path)
    typeset(browser)
    styles = browser.execute_script(
        "return [...document.querySelectorAll('article figcaption')]"
        ".map(c => getComputedStyle(c).fontStyle)"
    )
    assert styles and set(styles) == {"normal"}, styles  # upright: no synthetic italics
    family = browser.execute_script(
        "return getComputedStyle(document.querySelector('article p')).fontFamily"
    )
    assert all(font in family for font in JAPANESE_FONTS), family
    assert not browser.execute_script(  # system fonts only: nothing but MathJax's own
        "return [...document.fonts].filter(f => !f.family.startsWith('MJX')).length"
    )
    # the Japanese glyphs are drawn with one of those fonts (Noto Sans CJK JP on Linux)
    browser.execute_cdp_cmd("DOM.enable", {})
    browser.execute_cdp_cmd("CSS.enable", {})
    root = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = browser.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": "article p"})
    fonts = browser.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})
    cjk = max(fonts["fonts"], key=lambda font: font["glyphCount"])
    assert cjk["familyName"] in JAPANESE_FONTS, fonts
    # English pages keep Material's fonts
    browser.get(browser.base_url + "/guide/training/")
    english = browser.execute_script(
        "return getComputedStyle(document.querySelector('article p')).fontFamily"
    )
    assert "Noto Sans CJK JP" not in english, english
