"""The tutorial notebooks in examples/: stored clean, the same code in English and Japanese,
run top to bottom in a real Jupyter kernel of this Python (nbclient), and rendered in the
docs by mkdocs-jupyter.

The kernel is the ``python3`` kernel spec of ipykernel, which jupyter_client starts with
this interpreter (``sys.executable``), and it inherits the environment, ``PYTHONPATH``
included: the notebooks import the convkit under test. The first test that runs code checks
both.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import subprocess
import sys
import tokenize
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

import convkit
from test_docs import browser  # noqa: F401  (the fixture: Chromium on the built site)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "en": ROOT / "examples" / "first_cnn_en.ipynb",
    "ja": ROOT / "examples" / "first_cnn_ja.ipynb",
}
#: Where the docs take them from (mkdocs-jupyter renders files inside docs/), the Japanese
#: one as the translation of the English one (mkdocs-static-i18n's suffix structure).
DOCS_COPIES = {
    "en": ROOT / "docs" / "tutorial" / "first-cnn.ipynb",
    "ja": ROOT / "docs" / "tutorial" / "first-cnn.ja.ipynb",
}
#: Their pages in the built site: English at the root, Japanese under ja/.
SITE_PAGES = {"en": "tutorial/first-cnn", "ja": "ja/tutorial/first-cnn"}
PUBLISHED = "https://convkit.github.io/convkit/latest/"
KANA = re.compile("[\u3041-\u30ff]")
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def read(lang: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS[lang], as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def python_of(cell: str) -> str:
    """A code cell as the kernel runs it: IPython's ``%magics`` turned into calls."""
    return TransformerManager().transform_cell(cell)


def tokens_without_comments(cell: str) -> list[tuple[int, str]]:
    """The tokens of a code cell without comments and blank lines: its code, not its prose."""
    skip = {tokenize.COMMENT, tokenize.NL}
    return [
        (token.type, token.string)
        for token in tokenize.generate_tokens(io.StringIO(python_of(cell)).readline)
        if token.type not in skip
    ]


# ------------------------------------------------------------------- stored clean


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebook_is_valid_and_stored_without_outputs(lang: str) -> None:
    path = NOTEBOOKS[lang]
    nb = read(lang)
    nbformat.validate(nb)  # raises on an invalid notebook
    assert nb.nbformat == 4
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, nb.metadata
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        assert cell.metadata == {}, (cell.id, cell.metadata)  # no collapsed/scrolled/tags
        assert "attachments" not in cell, cell.id
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id
    # exactly what nbformat writes (plus the final newline): clean diffs, whoever saves it
    assert path.read_text(encoding="utf-8") == nbformat.writes(nb) + "\n"
    assert path.stat().st_size < 32_000


def test_english_and_japanese_notebooks_run_the_same_code() -> None:
    en, ja = read("en"), read("ja")
    assert [c.cell_type for c in en.cells] == [c.cell_type for c in ja.cells]
    en_code, ja_code = code_cells(en), code_cells(ja)
    assert len(en_code) >= 20
    for number, (english, japanese) in enumerate(zip(en_code, ja_code, strict=True), start=1):
        assert tokens_without_comments(english) == tokens_without_comments(japanese), number
    # the comments are prose, in each notebook's language
    en_comments = re.findall(r"#[^\n]*", "\n".join(en_code))
    ja_comments = re.findall(r"#[^\n]*", "\n".join(ja_code))
    assert len(en_comments) == len(ja_comments) >= 5
    assert not any(KANA.search(c) for c in en_comments)
    assert sum(bool(KANA.search(c)) for c in ja_comments) >= 5


def section_numbers(nb: nbformat.NotebookNode) -> list[str]:
    return [
        number
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for number in re.findall(r"^## (\d+)\.", cell.source, re.M)
    ]


def test_both_notebooks_have_the_same_sections() -> None:
    assert section_numbers(read("en")) == section_numbers(read("ja")) == [str(n) for n in range(8)]


# A sentence of the Japanese notebook ends in the polite form (です・ます), a parenthesis
# after it aside: 「…行いません（`padding="valid"`）。」
POLITE_END = re.compile(r"(?:ます|ません|です|でした|ました|ください)(?:（[^（）]*）)?。$")


def test_japanese_prose_is_polite_japanese_and_the_english_has_none() -> None:
    for cell in read("ja").cells:
        if cell.cell_type != "markdown":
            continue
        assert KANA.search(cell.source), cell.source
        text = re.sub(r"```.*?```", "", cell.source, flags=re.S)
        sentences = [s.strip() for s in re.split(r"(?<=。)", text) if s.strip().endswith("。")]
        assert all(POLITE_END.search(s) for s in sentences), [
            s for s in sentences if not POLITE_END.search(s)
        ]
        # Japanese punctuation carries its own space (issue 25.6)
        assert not re.search(r"[、。] ", text), text
    english = "\n".join(c.source for c in read("en").cells if c.cell_type == "markdown")
    assert not KANA.search(english)


def test_polite_end_accepts_a_closing_parenthesis_and_refuses_plain_form() -> None:
    assert POLITE_END.search('パディングは行いません（`padding="valid"`）。')
    assert not POLITE_END.search("パディングは行わない。")


# ------------------------------------------------------------------- opening cells


def colab_url(path: Path) -> str:
    repository = re.search(r'Source = "https://github\.com/([^"]+)"', PYPROJECT)
    assert repository, "pyproject.toml names no GitHub repository"
    return (
        f"https://colab.research.google.com/github/{repository[1]}/blob/main/"
        f"{path.relative_to(ROOT).as_posix()}"
    )


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_first_cell_opens_this_notebook_in_colab(lang: str) -> None:
    first = read(lang).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    badge = re.search(
        r"\[!\[Open in Colab\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)\]\((\S+)\)",
        first.source,
    )
    assert badge, first.source[:300]
    assert badge[2] == colab_url(NOTEBOOKS[lang])
    # the badge is drawn inline: the docs site loads nothing from elsewhere
    svg = ET.fromstring(base64.b64decode(badge[1]))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.get("aria-label") == "Open in Colab"


class RecordingShell:
    """Stands in for ``get_ipython()``: records the line magics a cell runs."""

    def __init__(self) -> None:
        self.magics: list[tuple[str, str]] = []

    def run_line_magic(self, name: str, line: str) -> None:
        self.magics.append((name, line))


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_install_cell_installs_convkit_on_colab_only(lang: str, monkeypatch) -> None:
    cell = code_cells(read(lang))[0]
    code = compile(python_of(cell), "install cell", "exec")

    def run() -> list[tuple[str, str]]:
        shell = RecordingShell()
        exec(code, {"get_ipython": lambda: shell})
        return shell.magics

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert run() == []  # Jupyter, VS Code, the tests: nothing to install
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert run() == [("pip", 'install "torch-convkit[plot]"')]
    # that is this project, with the extra that brings matplotlib
    assert re.search(r'^name = "torch-convkit"$', PYPROJECT, re.M)
    assert re.search(r'^plot = \["matplotlib', PYPROJECT, re.M)


# ------------------------------------------------------------------- in the docs


def test_docs_render_the_notebooks_of_examples() -> None:
    for lang, copy in DOCS_COPIES.items():
        assert copy.is_symlink() and copy.resolve() == NOTEBOOKS[lang].resolve(), copy
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    plugin = re.search(r"^  - mkdocs-jupyter:\n((?:      .*\n)+)", config, re.M)
    assert plugin and "execute: false" in plugin[1], "the docs build must not run the notebooks"
    # in the nav once, under a title the Japanese side translates
    assert "\n      - Tutorial notebook: tutorial/first-cnn.ipynb\n" in config
    assert "\n            Tutorial notebook: チュートリアル（ノートブック）\n" in config
    assert "docs_structure: suffix" in config and "hooks/notebooks.py" in config


# ------------------------------------------------------------------- executed


def execute(
    nb: nbformat.NotebookNode, workdir: Path, *, timeout: int = 600
) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel, in ``workdir``."""
    client = NotebookClient(
        nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def streams(cell: nbformat.NotebookNode, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def pngs(cell: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(o.data["image/png"])
        for o in cell.outputs
        if o.output_type in ("display_data", "execute_result") and "image/png" in o.data
    ]


def result(cell: nbformat.NotebookNode, mime: str = "text/plain") -> str:
    (value,) = [o.data[mime] for o in cell.outputs if o.output_type == "execute_result"]
    return str(value)


def cell_starting(nb: nbformat.NotebookNode, start: str) -> nbformat.NotebookNode:
    """The code cell that is ``start``, or else the one that starts with it."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    (cell,) = [c for c in code if c.source == start] or [
        c for c in code if c.source.startswith(start)
    ]
    return cell


def test_notebook_starts_in_a_kernel_of_this_python(tmp_path: Path) -> None:
    """The fast path: the cells before training, and the kernel the tests rely on."""
    nb = read("en")
    first_fit = next(i for i, c in enumerate(nb.cells) if c.source.startswith("history = fit("))
    nb.cells = nb.cells[:first_fit]
    probe = "import sys\nimport convkit\nprint(sys.executable)\nprint(convkit.__file__)"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    execute(nb, tmp_path, timeout=120)

    executable, module = streams(nb.cells[-1], "stdout").split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(module).resolve() == Path(convkit.__file__).resolve()  # the code under test
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(streams(c, "stderr") == "" for c in code), [streams(c, "stderr") for c in code]
    data = cell_starting(nb, "import matplotlib")
    assert streams(data, "stdout").splitlines()[0] == "4000 1000"
    assert len(pngs(cell_starting(nb, "fig, axes = plt.subplots"))) == 1

    # the summary the kernel shows is the one of the notebook's model, built here
    namespace: dict[str, Any] = {}
    exec(code[1].source + "\n" + cell_starting(nb, "torch.manual_seed(0)").source, namespace)
    table = namespace["summary"](namespace["model"])
    shown = cell_starting(nb, "summary(model)")
    assert result(shown) == repr(table)
    assert result(shown, "text/html") == table._repr_html_()


FIGURE_CELLS = (
    "fig, axes = plt.subplots",
    "fig = history.plot()",
    "viz.plot_filters(model)",
    "viz.plot_feature_maps(model",
    "viz.plot_grad_cam(model",
    "interp.plot_confusion_matrix()",
    "interp.plot_top_losses(9)",
)
# What the text progress bar writes to stderr: "\rEpoch 1/2:  50%|█████     | 16/32 ..." and
# the blank line that clears it.
PROGRESS_BAR = re.compile(r"(?:\r(?:Epoch \d+/\d+: [^\r\n]*| *))*\r?")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, nbformat.NotebookNode]:
    return {
        lang: execute(read(lang), tmp_path_factory.mktemp(f"notebook-{lang}")) for lang in NOTEBOOKS
    }


@pytest.mark.slow  # two trainings per notebook: about 20 s each on 2 CPU cores
@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(lang: str, executed) -> None:
    from PIL import Image

    nb = executed[lang]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    for cell in code:
        # stderr holds the progress bar and nothing else: no warning of any kind
        assert PROGRESS_BAR.fullmatch(streams(cell, "stderr")), streams(cell, "stderr")[-500:]

    # every figure is shown once, as a PNG, and nothing else draws one
    for cell in code:
        expected = 1 if cell.source.startswith(FIGURE_CELLS) else 0
        images = pngs(cell)
        assert len(images) == expected, (cell.source[:40], len(images))
        for png in images:
            with Image.open(io.BytesIO(png)) as image:
                assert image.format == "PNG" and image.width >= 200 and image.height >= 80

    # the tables convkit shows in Jupyter
    for start in ("summary(model)", "history", "interp = viz.Interpretation"):
        assert result(cell_starting(nb, start), "text/html").startswith("<table>"), start
    assert result(cell_starting(nb, "history"), "text/html").count("<tr>") == 3  # header + 2

    # the notebook's CNN learned: the accuracy evaluate reports, the one fit reported last
    scores = ast.literal_eval(result(cell_starting(nb, "scores = evaluate(")))
    assert scores["accuracy"] >= 0.93, scores
    fitted = streams(cell_starting(nb, "history = fit("), "stdout")
    last = re.findall(r"Epoch 2/2 - .* val_accuracy: (\d\.\d{4})", fitted)
    assert last == [f"{scores['accuracy']:.4f}"], fitted
    printed = streams(cell_starting(nb, "logits = predict("), "stdout").splitlines()
    predicted, true = (ast.literal_eval(line.split(":", 1)[1].strip()) for line in printed)
    assert len(predicted) == len(true) == 8
    assert sum(p == t for p, t in zip(predicted, true, strict=True)) >= 6

    # and so did the network trained on the folder of PNG files
    folder = streams(cell_starting(nb, "import tempfile"), "stdout").splitlines()
    assert folder == [str([str(d) for d in range(10)]), "1000 300"]
    own = ast.literal_eval(result(cell_starting(nb, "torch.manual_seed(0)\nown_model")))
    assert own["accuracy"] >= 0.8, own
    one_file = streams(cell_starting(nb, "file = root"), "stdout")
    assert re.fullmatch(r"000\.png: \d \(\d{1,3}\.\d%\)\n", one_file), one_file


@pytest.mark.slow
def test_both_notebooks_compute_the_same_numbers(executed) -> None:
    def numbers(nb: nbformat.NotebookNode) -> list[str]:
        return [
            result(cell_starting(nb, start))
            for start in ("scores = evaluate(", "torch.manual_seed(0)\nown_model")
        ]

    assert numbers(executed["en"]) == numbers(executed["ja"])


# ------------------------------------------------------------------- the built site


@pytest.mark.slow
def test_site_shows_both_notebooks() -> None:
    from test_docs import EXTERNAL_ASSET, built_site

    site = built_site()
    for lang, title in (("en", "Tutorial notebook"), ("ja", "チュートリアル（ノートブック）")):
        url = SITE_PAGES[lang]
        html = (site / url / "index.html").read_text(encoding="utf-8")
        assert html.lstrip().lower().startswith("<!doctype html>"), html[:200]  # not the JSON
        assert f'<html lang="{lang}"' in html
        assert f"<title>{title} - convkit</title>" in html  # the nav's title
        heading = read(lang).cells[0].source.splitlines()[0].removeprefix("# ")
        assert re.search(f"<h1[^>]*>{re.escape(heading)}<", html), heading  # the notebook's
        assert f'href="{colab_url(NOTEBOOKS[lang])}"' in html
        assert "build_cnn" in html and "jp-mod-noOutputs" in html  # code cells, no outputs
        assert 'class="jp-Output' not in html
        assert not EXTERNAL_ASSET.findall(html)
        assert not re.findall(r'<(?:img|script)[^>]+src="(?:https?:)?//', html)
        home = url.removesuffix("tutorial/first-cnn")
        assert 'href="tutorial/first-cnn/"' in (site / home / "index.html").read_text("utf-8")
        assert "未翻訳" not in html  # hooks/languages.py: a translation, not an English copy
        # the notebook's links into the published docs lead to pages of this site
        prose = "\n".join(c.source for c in read(lang).cells if c.cell_type == "markdown")
        links = re.findall(rf"\]\({re.escape(PUBLISHED)}([^)#]*)", prose)
        assert len(links) >= 4
        assert [link for link in links if not (site / link / "index.html").is_file()] == []
        if lang == "ja":  # the Japanese notebook stays in the Japanese site
            assert all(link.startswith("ja/") for link in links)


def build(config: str, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "mkdocs.yml").write_text(config, encoding="utf-8")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False
    )


I18N_SITE = """\
site_name: notebooks and languages
theme:
  name: material
plugins:
  - search
  - i18n:
      docs_structure: suffix
      languages:
        - locale: en
          name: English
          default: true
        - locale: ja
          name: 日本語
  - mkdocs-jupyter:
      include: ["*.ipynb"]
      execute: false
      cache: false
nav:
  - Home: index.md
  - Tutorial notebook: first-cnn.ipynb
"""


@pytest.mark.slow
def test_notebooks_stay_pages_beside_static_i18n(tmp_path: Path) -> None:
    """mkdocs-static-i18n turns the notebooks back into static files, served as JSON at the
    pages' URLs, and --strict passes; hooks/notebooks.py makes them pages again."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n", encoding="utf-8")
    (docs / "index.ja.md").write_text("# ホーム\n", encoding="utf-8")
    for lang, copy in DOCS_COPIES.items():
        (docs / copy.name).write_bytes(NOTEBOOKS[lang].read_bytes())

    def pages(site: Path) -> list[str]:
        """The English and the Japanese notebook page."""
        return [
            (site / folder / "first-cnn" / "index.html").read_text(encoding="utf-8")
            for folder in (".", "ja")
        ]

    without = build(I18N_SITE, tmp_path / "without", tmp_path)
    assert without.returncode == 0, without.stderr[-2000:]
    assert all(page.lstrip().startswith("{") for page in pages(tmp_path / "without"))

    hook = f"hooks:\n  - {ROOT / 'hooks' / 'notebooks.py'}\n"
    done = build(I18N_SITE + hook, tmp_path / "with", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    english, japanese = pages(tmp_path / "with")
    assert ">Your first CNN with convkit<" in english and '<html lang="en"' in english
    assert ">convkit ではじめての CNN<" in japanese and '<html lang="ja"' in japanese
    # the language switch leads from each page to the other one
    assert 'href="../ja/first-cnn/" hreflang="ja"' in english
    assert 'href="../../first-cnn/" hreflang="en"' in japanese


@pytest.mark.slow
@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebook_page_in_the_browser(lang: str, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from test_docs import ARTIFACTS, wait_for

    url = SITE_PAGES[lang]
    browser.get_log("performance")  # drop what earlier pages left
    browser.get_log("browser")
    try:
        for width in (1280, 390):
            browser.set_window_size(width, 1000)
            browser.get(f"{browser.base_url}/{url}/")
            wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
            # the page fits the window: code scrolls inside its cell, not the page sideways
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, (width, overflow)
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / f"notebook-{lang}-{width}.png"))
    finally:
        browser.set_window_size(1280, 1000)
    badge = browser.execute_script(
        "const img = document.querySelector('article img[alt=\"Open in Colab\"]');"
        "return [img.complete && img.naturalWidth, img.closest('a').href]"
    )
    assert badge == [117, colab_url(NOTEBOOKS[lang])], badge
    cells = browser.execute_script(
        "return document.querySelectorAll('.jp-CodeCell[id^=\"cell-id=\"]').length"
    )
    assert cells == len(code_cells(read(lang)))
    requested = [
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if '"Network.requestWillBeSent"' in entry["message"]
    ]
    elsewhere = [u for u in requested if not u.startswith((browser.base_url, "data:", "blob:"))]
    assert requested and not elsewhere, elsewhere
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in errors if "/versions.json" not in e], errors  # mike's, see test_docs
