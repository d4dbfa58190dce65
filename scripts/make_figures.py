"""Draw the figures of the docs from real computations (run after changing them).

    python scripts/make_figures.py      # writes docs/img/theory-*.png and training-curves.png

Each figure is computed with PyTorch / convkit, not drawn by hand: the numbers in the
cross-correlation and pooling figures are what ``F.conv2d`` and ``F.max_pool2d`` return.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from convkit import build_cnn, fit, mnist_sample
from convkit.shapes import receptive_field

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def grid(ax, values, title, *, highlight=None, color="#4c72b0", pad=0):  # type: ignore[no-untyped-def]
    rows, cols = values.shape
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    for i in range(rows):
        for j in range(cols):
            is_pad = pad and (i < pad or j < pad or i >= rows - pad or j >= cols - pad)
            ax.add_patch(Rectangle((j, i), 1, 1, fill=True, fc="#eeeeee" if is_pad else "white",
                                   ec="#999999"))  # fmt: skip
            value = values[i, j].item()
            ax.text(j + 0.5, i + 0.5, f"{value:g}", ha="center", va="center", fontsize=9,
                    color="#777777" if is_pad else "black")  # fmt: skip
    if highlight is not None:
        i, j, h, w = highlight
        ax.add_patch(Rectangle((j, i), w, h, fill=False, ec=color, lw=2.5))


def cross_correlation() -> None:
    x = torch.tensor([[1.0, 2, 0, 1, 2], [0, 1, 3, 1, 0], [2, 0, 1, 0, 1], [1, 1, 0, 2, 3],
                      [0, 2, 1, 1, 0]])  # fmt: skip
    h = torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]])
    u = F.conv2d(x[None, None], h[None, None])[0, 0]
    fig = Figure(figsize=(8, 2.8), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[5, 3, 3])
    grid(axes[0], x, "input x (5x5)", highlight=(0, 1, 3, 3))
    grid(axes[1], h, "filter h (3x3)")
    grid(axes[2], u, "output u (3x3)", highlight=(0, 1, 1, 1))
    fig.suptitle("u[0,1] = sum of x[0:3, 1:4] * h  (cross-correlation, as nn.Conv2d)", fontsize=10)
    fig.savefig(OUT / "theory-cross-correlation.png", dpi=110)


def padding_stride() -> None:
    x = torch.arange(1.0, 26).reshape(5, 5)
    padded = F.pad(x, (1, 1, 1, 1))
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    grid(axes[0], padded, "padding P=1: zeros around a 5x5 input", pad=1, highlight=(0, 0, 3, 3))
    grid(axes[1], padded, "stride S=2: next window 2 pixels right", pad=1, highlight=(0, 2, 3, 3),
         color="#c44e52")  # fmt: skip
    out = F.conv2d(padded[None, None], torch.ones(1, 1, 3, 3), stride=2).shape[-1]
    fig.suptitle(f"K=3, P=1, S=2: H_out = floor((5 + 2 - 3) / 2) + 1 = {out}", fontsize=10)
    fig.savefig(OUT / "theory-padding-stride.png", dpi=110)


def max_pooling() -> None:
    x = torch.tensor([[1.0, 3, 2, 0], [4, 2, 1, 5], [0, 1, 7, 2], [3, 2, 1, 6]])
    y = F.max_pool2d(x[None, None], 2)[0, 0]
    fig = Figure(figsize=(6, 2.8), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[4, 2])
    grid(axes[0], x, "input (4x4), 2x2 windows", highlight=(0, 0, 2, 2))
    for i, j, c in ((0, 2, "#55a868"), (2, 0, "#c44e52"), (2, 2, "#8172b2")):
        axes[0].add_patch(Rectangle((j, i), 2, 2, fill=False, ec=c, lw=2.5))
    grid(axes[1], y, "max pooling (2x2)")
    fig.savefig(OUT / "theory-max-pooling.png", dpi=110)


def receptive_field_growth() -> None:
    layers = range(1, 9)
    plain = [receptive_field([torch.nn.Conv2d(1, 1, 3)] * n)[0] for n in layers]
    pooled = []
    for n in layers:
        stack: list[torch.nn.Module] = []
        for _ in range(n):
            stack += [torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(2)]
        pooled.append(receptive_field(stack)[0])
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(layers, plain, marker="o", label="3x3 conv")
    ax.plot(layers, pooled, marker="s", label="3x3 conv + 2x2 max pool")
    ax.set_xlabel("number of blocks L")
    ax.set_ylabel("receptive field r_L (pixels)")
    ax.set_yscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(OUT / "theory-receptive-field.png", dpi=110)


def training_curves() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid",
                      order="conv-pool-act-norm-dropout", dropout=0.25, hidden=(200,),
                      head_norm="batch", head_dropout=0.25)  # fmt: skip
    history = fit(model, mnist_sample(), epochs=5, val_data=mnist_sample(train=False),
                  device="cpu", progress=False, seed=0)  # fmt: skip
    history.plot().savefig(OUT / "training-curves.png", dpi=110)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    cross_correlation()
    padding_stride()
    max_pooling()
    receptive_field_growth()
    training_curves()
    print(f"figures written to {OUT}")
