"""Segmentation with convkit: label every pixel of an MNIST digit with the digit.

Masks come from the bundled images (no download): pixel class 0 is background, class
``1 + digit`` is ink of that digit, and the faint pixels at the stroke edges are marked
``-100``, which the loss (``nn.CrossEntropyLoss``'s ``ignore_index``) and the metrics skip.
``fit`` infers a dense multiclass task from ``(N, 11, 28, 28)`` outputs and ``(N, 28, 28)``
masks, and reports pixel accuracy and mean IoU.

    python examples/segmentation.py
    python examples/segmentation.py --epochs 5 --device cpu --seed 1
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from convkit import ConvBlock, evaluate, fit
from convkit.datasets import mnist_sample

IGNORE = -100  # nn.CrossEntropyLoss's default ignore_index


def digit_masks(images: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 28, 28)`` images -> ``(N, 28, 28)`` class maps (0 background, 1 + digit)."""
    ink = images[:, 0]
    masks = torch.where(ink > 0.5, digits[:, None, None] + 1, 0)
    masks[(ink > 0.1) & (ink <= 0.5)] = IGNORE  # the blurry edge: neither class for sure
    return masks


class DigitSegmenter(nn.Module):
    """A full-resolution path finds the ink; a pooled path recognises the digit."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        self.fine = ConvBlock(1, 8)
        self.coarse = nn.Sequential(
            ConvBlock(8, 16, pool="max"), ConvBlock(16, 32, pool="max"), ConvBlock(32, 32)
        )
        self.up = nn.Upsample(scale_factor=4, mode="nearest")
        self.head = nn.Conv2d(8 + 32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)  # (N, 8, 28, 28)
        coarse = self.up(self.coarse(fine))  # (N, 32, 7, 7) -> (N, 32, 28, 28)
        return self.head(torch.cat([fine, coarse], 1))  # (N, 11, 28, 28)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--limit", type=int, default=4000, help="training images to use")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train = mnist_sample(train=True).tensors
    x_test, y_test = mnist_sample(train=False).tensors
    train = (x_train[: args.limit], digit_masks(x_train, y_train)[: args.limit])
    test = (x_test, digit_masks(x_test, y_test))

    torch.manual_seed(args.seed)  # the model's initialisation; fit's seed covers the rest
    model = DigitSegmenter()
    history = fit(model, train, epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed)
    print(f"task: {history.task}, metrics: {', '.join(history.metrics)}")
    scores = evaluate(model, test, history=history, device=history.device)
    print(f"test pixel accuracy: {scores['accuracy']:.4f}, mean IoU: {scores['iou']:.4f}")
    return scores


if __name__ == "__main__":
    main()
