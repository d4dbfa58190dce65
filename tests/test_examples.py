"""The README's main job, run the way a newcomer runs it."""

from __future__ import annotations

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
