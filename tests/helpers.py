"""Shared test data and tools: the teaching notebook's network, as build_cnn arguments, and
Python processes that import this checkout's convkit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: build_cnn((1, 28, 28), 10, **NOTEBOOK) is the notebook's CNN, layer for layer.
NOTEBOOK = {
    "channels": (32, 64),
    "kernel_size": 5,
    "padding": "valid",
    "order": "conv-pool-act-norm-dropout",
    "dropout": 0.25,
    "hidden": (200,),
    "head_norm": "batch",
    "head_dropout": 0.25,
}


def run_python(code: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    """A Python process running ``code`` (dedented) with ``args`` in ``sys.argv``, importing
    convkit from this checkout, with text pipes for its output."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
