"""Regression with convkit: predict how much ink a digit has and where its centre is.

The targets come from the bundled MNIST images themselves (no download): the ink mass
(mean pixel value, x10) and the vertical centre of mass (in image heights). ``fit``
infers the task from the float targets (regression: MSE loss, MAE metric).

    python examples/regression.py
    python examples/regression.py --epochs 5 --device cpu --seed 1
"""

from __future__ import annotations

import argparse

import torch

from convkit import build_cnn, evaluate, fit
from convkit.datasets import mnist_sample


def ink_targets(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 28, 28)`` images -> ``(N, 2)``: ink mass x10, vertical centre of mass."""
    pixels = images[:, 0]  # (N, 28, 28)
    rows = torch.arange(pixels.shape[1], dtype=pixels.dtype)
    centre = (pixels.sum(2) * rows).sum(1) / pixels.sum((1, 2)) / pixels.shape[1]
    return torch.stack([pixels.mean((1, 2)) * 10, centre], 1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--limit", type=int, default=4000, help="training images to use")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train = mnist_sample(train=True).tensors[0][: args.limit]
    x_test = mnist_sample(train=False).tensors[0]
    train = (x_train, ink_targets(x_train))
    test = (x_test, ink_targets(x_test))

    torch.manual_seed(args.seed)  # the model's initialisation; fit's seed covers the rest
    model = build_cnn((1, 28, 28), 2, channels=(8, 16), hidden=(32,), norm=None)
    history = fit(model, train, epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed)
    print(f"task: {history.task}, loss: {history.loss}")
    scores = evaluate(model, test, history=history, metrics=["mae", "rmse"], device=history.device)
    baseline = (test[1] - train[1].mean(0)).abs().mean().item()  # always the training mean
    print(
        f"test mae: {scores['mae']:.4f} (rmse {scores['rmse']:.4f}; "
        f"predicting the training mean: mae {baseline:.4f})"
    )
    return scores


if __name__ == "__main__":
    main()
