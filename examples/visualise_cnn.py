"""Train the teaching notebook's CNN briefly, then look inside it with convkit.viz.

Writes filters.png, feature-maps.png, grad-cam.png, receptive-field.png,
confusion-matrix.png and top-losses.png to --out, and prints per-class precision/recall:

    pip install "torch-convkit[plot]"
    python examples/visualise_cnn.py --epochs 3 --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convkit import build_cnn, fit, mnist_sample, viz


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--out", type=Path, default=Path("figures"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid",
                      order="conv-pool-act-norm-dropout", dropout=0.25, hidden=(200,),
                      head_norm="batch", head_dropout=0.25)  # fmt: skip
    test = mnist_sample(train=False)
    fit(model, mnist_sample(), epochs=args.epochs, device=args.device, seed=0)
    images, labels = test.tensors

    # --8<-- [start:look]
    viz.plot_filters(model).savefig(args.out / "filters.png")  # first conv layer
    viz.plot_feature_maps(model, images[0]).savefig(args.out / "feature-maps.png")
    viz.plot_grad_cam(model, images[:8]).savefig(args.out / "grad-cam.png")
    viz.plot_receptive_field(model, (1, 28, 28), (2, 1), image=images[0]).savefig(
        args.out / "receptive-field.png"
    )
    interp = viz.Interpretation.from_model(model, test)
    interp.plot_confusion_matrix().savefig(args.out / "confusion-matrix.png")
    interp.plot_top_losses(9).savefig(args.out / "top-losses.png")
    print(interp.per_class())
    # --8<-- [end:look]
    print(f"{interp!r}; figures in {args.out}/ (true label of images[0]: {int(labels[0])})")


if __name__ == "__main__":
    main()
