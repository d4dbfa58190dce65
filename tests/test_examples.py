"""The README's main job, run the way a newcomer runs it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mnist_cnn_example_one_epoch() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mnist_cnn.py"),
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"test accuracy: (0\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) > 0.5  # one epoch on 4,000 images; chance is 0.1
    assert "Epoch 1/1" in result.stdout


@pytest.mark.slow
def test_mnist_cnn_example_reports_missing_full_mnist(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mnist_cnn.py"),
            "--data",
            "mnist",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "MNIST files not found" in result.stderr and "download=True" in result.stderr


def _example(name: str):  # type: ignore[no-untyped-def]
    """Import ``examples/<name>.py`` as a module, to call its ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regression_example_learns_and_repeats_with_its_seed(capsys) -> None:
    regression = _example("regression")
    scores = regression.main(
        ["--epochs", "5", "--limit", "1000", "--lr", "5e-3", "--device", "cpu", "--seed", "1"]
    )
    out = capsys.readouterr().out
    assert "task: regression, loss: MSELoss()" in out
    baseline = float(re.search(r"training mean: mae (\d\.\d+)", out).group(1))
    assert scores["mae"] < 0.6 * baseline  # it learned: well below always predicting the mean
    quick = ["--epochs", "1", "--limit", "256", "--device", "cpu", "--seed", "3"]
    assert regression.main(quick) == regression.main(quick)  # the seed covers the model's init


@pytest.mark.slow  # two epochs of a segmenter on 2,000 images: ~15 s on 2 CPU cores
def test_segmentation_example_beats_all_background(capsys) -> None:
    segmentation = _example("segmentation")
    scores = segmentation.main(
        ["--epochs", "2", "--limit", "2000", "--lr", "1e-2", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert "task: multiclass, metrics: accuracy, iou" in out
    x, y = segmentation.mnist_sample(train=False).tensors
    masks = segmentation.digit_masks(x, y)
    background = (masks[masks != -100] == 0).float().mean().item()  # ~0.86
    assert scores["accuracy"] > background + 0.005  # not just "everything is background"
    assert scores["iou"] > 0.1


@pytest.mark.slow  # two epochs of the notebook's CNN
def test_mnist_example_is_repeatable_with_its_seed() -> None:
    mnist_cnn = _example("mnist_cnn")
    argv = ["--epochs", "1", "--device", "cpu", "--seed", "1"]
    assert mnist_cnn.main(argv) == mnist_cnn.main(argv)
