"""Train the teaching notebook's CNN on MNIST with convkit.

By default it uses the 5,000-image MNIST sample bundled with convkit (no download):

    python examples/mnist_cnn.py
    python examples/mnist_cnn.py --epochs 5 --device cpu --seed 1
    python examples/mnist_cnn.py --data mnist --root ~/data --download   # full MNIST
    torchrun --standalone --nproc_per_node=2 examples/mnist_cnn.py       # 2 processes
"""

from __future__ import annotations

import argparse
import os

import torch

from convkit import CNN, build_cnn, evaluate, fit
from convkit.datasets import mnist, mnist_sample


def notebook_cnn() -> CNN:
    """The notebook's network: conv -> pool -> ReLU -> BN -> dropout, twice, then the MLP."""
    return build_cnn(
        (1, 28, 28),
        10,
        channels=(32, 64),
        kernel_size=5,
        padding="valid",
        order="conv-pool-act-norm-dropout",
        dropout=0.25,
        hidden=(200,),
        head_norm="batch",
        head_dropout=0.25,
    )


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        choices=("sample", "mnist"),
        default="sample",
        help="'sample': bundled 4,000/1,000 MNIST images; 'mnist': full MNIST",
    )
    parser.add_argument("--root", default="data", help="directory of MNIST/raw for --data mnist")
    parser.add_argument("--download", action="store_true", help="download full MNIST if missing")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.data == "sample":
        train, test = mnist_sample(train=True), mnist_sample(train=False)
    else:
        train = mnist(args.root, train=True, download=args.download)
        test = mnist(args.root, train=False, download=args.download)

    torch.manual_seed(args.seed)  # the model's initialisation; fit's seed covers the rest
    model = notebook_cnn()
    history = fit(
        model,
        train,
        epochs=args.epochs,
        val_data=test,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
    )
    scores = evaluate(model, test, device=history.device or args.device)
    if int(os.environ.get("RANK", "0")) != 0:
        return scores["accuracy"]  # under torchrun, rank 0 reports
    print(
        f"test accuracy: {scores['accuracy']:.4f} (loss {scores['loss']:.4f}, {len(test)} images)"
    )
    return scores["accuracy"]


if __name__ == "__main__":
    main()
