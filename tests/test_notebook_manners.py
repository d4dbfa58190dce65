"""How convkit's results look where people read them: Jupyter tables, pyplot-managed
figures shown once, quiet progress bars, and Japanese text in plots."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from convkit import History, build_cnn, fit, summary, viz
from convkit.utils import figures
from convkit.viz import Interpretation

plt = pytest.importorskip("matplotlib.pyplot")

JAPANESE = ["ゼロ", "いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう"]


@pytest.fixture(scope="module")
def trained(sample_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    inputs, targets = sample_train
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
    fit(model, (inputs[:1000], targets[:1000]), epochs=1, device="cpu", progress=False, seed=0)
    return model


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


def _history() -> History:
    history = History(device="cpu")
    history.append(1, {"loss": 0.9, "accuracy": 0.71, "val_loss": 1.0}, seconds=1.5, lr=1e-3)
    history.append(2, {"loss": 0.5, "accuracy": 0.82, "val_loss": 0.7}, seconds=1.4, lr=5e-4)
    return history


# ---------------------------------------------------------------- tables in Jupyter


def test_summary_reads_as_a_table_in_a_terminal_and_in_jupyter(model: nn.Module) -> None:
    table = summary(model, (1, 28, 28))
    assert repr(table) == str(table)  # the REPL shows the table, not a dataclass dump
    assert "rows=[" not in repr(table) and "Total params" in repr(table)
    page = table._repr_html_()
    assert page.startswith("<table>") and page.count("<tr>") == len(table.rows) + 1
    assert all(row["name"] in page for row in table.rows)
    assert f"{table.total_params:,}" in page


def test_history_shows_one_row_per_epoch_in_jupyter() -> None:
    page = _history()._repr_html_()
    assert page.count("<tr>") == 3  # header + 2 epochs
    for cell in ("epoch", "val_loss", "0.71", "0.82", "0.0005", "1.4"):
        assert f">{cell}<" in page, cell


def test_interpretation_and_its_class_table_show_as_tables(
    model: nn.Module, sample_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = sample_test
    interp = Interpretation.from_model(model, (x[:200], y[:200]), classes=JAPANESE)
    page = interp._repr_html_()
    assert page.count("<tr>") == 11 and f"accuracy {interp.accuracy:.4f}" in page
    assert all(f">{name}<" in page for name in JAPANESE)
    table = interp.per_class()
    assert repr(table) == str(table) and "precision=[" not in repr(table)
    assert table._repr_html_().count("<tr>") == 11


def test_html_cells_are_escaped() -> None:
    history = History()
    history.append(1, {"<b>loss</b>": 1.0}, seconds=0.1)
    page = history._repr_html_()
    assert "&lt;b&gt;loss&lt;/b&gt;" in page and "<b>loss</b>" not in page


# ---------------------------------------------------------------- pyplot-managed figures


def test_figures_are_managed_by_pyplot_so_plt_show_works(
    model: nn.Module, sample_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = sample_test
    figs = [
        _history().plot(),
        viz.plot_filters(model),
        viz.plot_feature_maps(model, x[0]),
        viz.plot_grad_cam(model, x[:2]),
        Interpretation.from_model(model, (x[:50], y[:50])).plot_confusion_matrix(),
    ]
    assert all(fig.number in plt.get_fignums() for fig in figs)
    plt.close(figs[0])
    assert figs[0].number not in plt.get_fignums()


# ---------------------------------------------------------------- Japanese text in plots


def _missing_glyph_warnings(fig: Any, tmp_path: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp_path / "figure.png")
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def _require_cjk_font() -> None:
    if figures.cjk_font() is None:
        message = "no CJK font installed (apt-get install fonts-noto-cjk)"
        if os.environ.get("CI"):
            pytest.fail(message)  # never silently skipped in CI
        pytest.skip(message)


def test_japanese_class_names_render_without_missing_glyphs(
    model: nn.Module, sample_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    _require_cjk_font()
    x, y = sample_test
    rc_before = dict(plt.rcParams)
    interp = Interpretation.from_model(model, (x[:100], y[:100]), classes=JAPANESE)
    for fig in (interp.plot_confusion_matrix(), interp.plot_top_losses(4)):
        assert _missing_glyph_warnings(fig, tmp_path) == []
    history = _history()
    fig = history.plot()
    fig.axes[0].set_title("学習曲線（損失）")
    assert _missing_glyph_warnings(fig, tmp_path) == []
    grad = viz.plot_grad_cam(model, x[:2])
    grad.suptitle("Grad-CAM による注目領域")
    assert _missing_glyph_warnings(grad, tmp_path) == []
    assert dict(plt.rcParams) == rc_before  # the user's settings are never changed


def test_without_the_font_fix_the_glyphs_are_missing(
    model: nn.Module, sample_test: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """The check above can fail: the same figure drawn by plain matplotlib lacks glyphs."""
    _require_cjk_font()
    fig = plt.figure()
    fig.suptitle("学習曲線")
    assert _missing_glyph_warnings(fig, tmp_path)


def test_a_one_line_hint_names_a_font_when_none_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from matplotlib import font_manager

    monkeypatch.setattr(figures, "CJK_FONTS", ("No Such Font",))
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    figures.cjk_font.cache_clear()
    try:
        fig = _history().plot()
        fig.suptitle("学習曲線")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.savefig(tmp_path / "figure.png")
            fig.savefig(tmp_path / "again.png")
        hints = [str(w.message) for w in caught if str(w.message).startswith("convkit:")]
        assert len(hints) == 1 and "\n" not in hints[0]
        assert "no CJK font found" in hints[0] and "fonts-noto-cjk" in hints[0]
    finally:
        figures.cjk_font.cache_clear()


# ---------------------------------------------------------------- a real Jupyter kernel


@pytest.mark.slow
def test_in_jupyter_figures_show_once_and_the_progress_bar_is_quiet(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = [
        "%matplotlib inline\n"
        "import torch\nimport matplotlib.pyplot as plt\n"
        "from convkit import build_cnn, fit, mnist_sample, summary\n"
        "x, y = mnist_sample().tensors\n"
        "torch.manual_seed(0)\n"
        "model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())\n"
        "history = fit(model, (x[:256], y[:256]), epochs=2, device='cpu', seed=0)",
        "history.plot()",  # a cell ending in a figure: shown once
        "fig = history.plot()\nplt.show()",  # plt.show() works: shown once
        "fig = history.plot()",  # made in the cell: shown once, by the inline backend
        "summary(model)",
        "history",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [cell.outputs for cell in notebook.cells]
    stderr = "".join(o.get("text", "") for o in outputs[0] if o.get("name") == "stderr")
    assert "IProgress not found" not in stderr and "TqdmWarning" not in stderr
    for cell_outputs in outputs[1:4]:
        images = [o for o in cell_outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, cell_outputs
    assert "<table>" in outputs[4][0]["data"]["text/html"]
    assert "Total params" in outputs[4][0]["data"]["text/plain"]
    assert outputs[5][0]["data"]["text/html"].count("<tr>") == 3
