"""Draw the figures of the docs from real computations (run after changing them).

    python scripts/make_figures.py      # writes docs/img/theory-*.png and viz-*.png

Each figure is computed with PyTorch / convkit, not drawn by hand: the numbers in the
cross-correlation and pooling figures are what ``F.conv2d`` and ``F.max_pool2d``
return, and the filters, feature maps, Grad-CAM maps and confusion matrix come from
``convkit.viz`` on the teaching notebook's CNN trained on the bundled MNIST sample.
``theory-*.png`` (the Japanese theory page) have Japanese labels; ``viz-*.png``,
``training-curves.png`` and ``lr-find.png`` (the English guides) English ones. PNGs at
200 dpi: twice the resolution at which the pages show them. /work/FIGURES.md lists what
each one shows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch
import torch.nn.functional as F
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from convkit import build_cnn, fit, lr_find, mnist_sample, predict, viz
from convkit.shapes import receptive_field

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
DPI = 200
JA_FONT = {"font.family": ["Noto Sans CJK JP", "DejaVu Sans"], "axes.unicode_minus": False}


@contextlib.contextmanager
def japanese() -> Iterator[None]:
    """Japanese text (Noto Sans CJK JP, from the fonts-noto-cjk package) in the figures."""
    # matplotlib's font cache may predate the fonts' installation: register them directly.
    for path in Path("/usr/share/fonts").glob("**/NotoSansCJK*.tt[cf]"):
        font_manager.fontManager.addfont(str(path))
    font_manager.findfont(JA_FONT["font.family"][0], fallback_to_default=False)  # or fail
    with matplotlib.rc_context(JA_FONT):
        yield


def save(fig: Figure, name: str) -> None:
    fig.savefig(OUT / name, dpi=DPI)
    print(f"  {name}")


# ------------------------------------------------------------------- hand-made figures


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
    # Numbers of their own: the figure must not show an exercise's answer.
    x = torch.tensor([[3.0, 0, 1, 2, 1], [1, 2, 0, 0, 2], [0, 1, 2, 3, 0], [2, 0, 1, 1, 1],
                      [1, 3, 0, 2, 0]])  # fmt: skip
    h = torch.tensor([[0.0, 1, 0], [1, -1, 1], [0, 1, 0]])
    u = F.conv2d(x[None, None], h[None, None])[0, 0]
    window = x[0:3, 1:4]
    fig = Figure(figsize=(8, 3.0), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[5, 3, 3])
    grid(axes[0], x, "入力 x（5×5）", highlight=(0, 1, 3, 3))
    grid(axes[1], h, "フィルター h（3×3）")
    grid(axes[2], u, "出力 u（3×3）", highlight=(0, 1, 1, 1))
    pairs = zip(window.flatten().tolist(), h.flatten().tolist(), strict=True)
    terms = " + ".join(f"{a:g}·{b:g}" if b >= 0 else f"{a:g}·({b:g})" for a, b in pairs if b)
    fig.suptitle(f"u[0,1] = {terms} = {u[0, 1]:g}（nn.Conv2d と同じ相互相関）", fontsize=10)
    save(fig, "theory-cross-correlation.png")


def padding_stride() -> None:
    x = torch.arange(1.0, 26).reshape(5, 5)
    padded = F.pad(x, (1, 1, 1, 1))
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    grid(axes[0], padded, "パディング P=1：5×5 の入力の周りに 0", pad=1, highlight=(0, 0, 3, 3))
    grid(axes[1], padded, "ストライド S=2：次の窓は 2 画素右", pad=1, highlight=(0, 2, 3, 3),
         color="#c44e52")  # fmt: skip
    out = F.conv2d(padded[None, None], torch.ones(1, 1, 3, 3), stride=2).shape[-1]
    fig.suptitle(f"K=3, P=1, S=2：H_out = ⌊(5 + 2 − 3) / 2⌋ + 1 = {out}", fontsize=10)
    save(fig, "theory-padding-stride.png")


def max_pooling() -> None:
    x = torch.tensor([[1.0, 3, 2, 0], [4, 2, 1, 5], [0, 1, 7, 2], [3, 2, 1, 6]])
    y = F.max_pool2d(x[None, None], 2)[0, 0]
    fig = Figure(figsize=(6, 2.9), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[4, 2])
    grid(axes[0], x, "入力（4×4）と 2×2 の窓", highlight=(0, 0, 2, 2))
    for i, j, c in ((0, 2, "#55a868"), (2, 0, "#c44e52"), (2, 2, "#8172b2")):
        axes[0].add_patch(Rectangle((j, i), 2, 2, fill=False, ec=c, lw=2.5))
    grid(axes[1], y, "最大プーリング（2×2）")
    save(fig, "theory-max-pooling.png")


def receptive_field_growth() -> None:
    layers = range(1, 9)
    plain = [receptive_field([torch.nn.Conv2d(1, 1, 3)] * n)[0] for n in layers]
    pooled = []
    for n in layers:
        stack: list[torch.nn.Module] = []
        for _ in range(n):
            stack += [torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(2)]
        pooled.append(receptive_field(stack)[0])
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(layers, plain, marker="o", label="3×3 畳み込み")
    ax.plot(layers, pooled, marker="s", label="3×3 畳み込み + 2×2 最大プーリング")
    ax.set_xlabel("ブロック数 L")
    ax.set_ylabel("受容野 r_L（画素）")
    ax.set_yscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "theory-receptive-field.png")


# ---------------------------------------------------- figures from a trained network


def notebook_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid",
                     order="conv-pool-act-norm-dropout", dropout=0.25, hidden=(200,),
                     head_norm="batch", head_dropout=0.25)  # fmt: skip


def train_notebook_cnn() -> tuple[torch.nn.Module, object]:
    model = notebook_cnn()
    history = fit(model, mnist_sample(), epochs=5, val_data=mnist_sample(train=False),
                  device="cpu", progress=False, seed=0)  # fmt: skip
    return model, history


def lr_finder_curve() -> None:
    """lr_find on the untrained CNN, as the Training guide runs it (batch size 64)."""
    result = lr_find(notebook_cnn(), mnist_sample(), batch_size=64, device="cpu", seed=0)
    print(f"  {result!r}")
    save(result.plot(), "lr-find.png")


def training_curves(history) -> None:  # type: ignore[no-untyped-def]
    save(history.plot(), "training-curves.png")
    with japanese():
        fig = history.plot()
        for ax, label in zip(fig.axes, ("損失", "正解率"), strict=True):
            ax.set_xlabel("エポック")
            ax.set_ylabel(label)
            ax.legend(ax.lines, ["学習データ", "検証データ"])
        save(fig, "theory-training-curves.png")


def filters(model: torch.nn.Module) -> None:
    save(viz.plot_filters(model), "viz-filters.png")
    with japanese():
        fig = viz.plot_filters(model)
        title = "第1層が学習した 32 枚のフィルター（5×5、赤 = 正、青 = 負の重み）"
        fig.suptitle(title, fontsize=10)
        save(fig, "theory-filters.png")


def feature_maps(model: torch.nn.Module, image: torch.Tensor) -> None:
    save(viz.plot_feature_maps(model, image, max_channels=12), "viz-feature-maps.png")
    with japanese():
        fig = viz.plot_feature_maps(model, image, max_channels=12)
        maps = viz.feature_maps(model, image).values()
        rows = [fig.axes[0], fig.axes[12]]
        for ax, out, label in zip(rows, maps, ("第1ブロック", "第2ブロック"), strict=True):
            c, h, w = out.shape[1:]
            ax.set_ylabel(f"{label}\n{c}×{h}×{w}\n（先頭12チャネル）", fontsize=8)
        save(fig, "theory-feature-maps.png")


def edge_filter(image: torch.Tensor) -> None:
    """A hand-made filter: Sobel's vertical-edge kernel on a digit."""
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    out = F.conv2d(image[None], sobel[None, None], padding=1)[0, 0]
    with japanese():
        fig = Figure(figsize=(7.5, 2.6), layout="constrained")
        axes = fig.subplots(1, 3, width_ratios=[3, 2, 3])
        axes[0].imshow(image[0].numpy(), cmap="gray")
        axes[0].set_title("入力の数字（28×28）", fontsize=10)
        grid(axes[1], sobel, "縦エッジのフィルター")
        limit = float(out.abs().max())
        shown = axes[2].imshow(out.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[2].set_title("出力：左が暗く右が明るい所で正（赤）", fontsize=10)
        fig.colorbar(shown, ax=axes[2], shrink=0.8)
        for ax in (axes[0], axes[2]):
            ax.set_xticks([])
            ax.set_yticks([])
        save(fig, "theory-edge-filter.png")


def pooling_loses_information(image: torch.Tensor) -> None:
    """Max-pool a digit twice, then scale it back up: the details don't come back."""
    pooled = [image[None]]
    for _ in range(2):
        pooled.append(F.max_pool2d(pooled[-1], 2))
    restored = F.interpolate(pooled[-1], size=(28, 28), mode="nearest")
    panels = [(pooled[0], "入力（28×28）"), (pooled[1], "2×2 最大プーリング（14×14）"),
              (pooled[2], "もう一度（7×7）"), (restored, "28×28 に拡大して戻す")]  # fmt: skip
    with japanese():
        fig = Figure(figsize=(8, 2.5), layout="constrained")
        for ax, (tensor, title) in zip(fig.subplots(1, 4), panels, strict=True):
            ax.imshow(tensor[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        save(fig, "theory-pooling-information.png")


def grad_cams(model: torch.nn.Module, images: torch.Tensor) -> None:
    save(viz.plot_grad_cam(model, images), "viz-grad-cam.png")
    with japanese():
        fig = viz.plot_grad_cam(model, images)
        cam_classes = predict(model, images, device="cpu").softmax(1).max(1)
        for ax, p, c in zip(fig.axes, *cam_classes, strict=True):
            ax.set_title(f"予測 {int(c)}（確率 {float(p):.2f}）", fontsize=9)
        save(fig, "theory-grad-cam.png")


def receptive_field_map(model: torch.nn.Module, image: torch.Tensor) -> None:
    """The input region one unit of the last block sees, on a digit."""
    save(
        viz.plot_receptive_field(model, (1, 28, 28), (2, 1), image=image), "viz-receptive-field.png"
    )
    with japanese():
        fig = viz.plot_receptive_field(model, (1, 28, 28), (2, 1), image=image)
        top, left, h, w = viz.receptive_field_region(model, (1, 28, 28), (2, 1))
        fig.axes[0].set_title(f"入力 28×28：行 {top}〜{top + h - 1}、列 {left}〜{left + w - 1}",
                              fontsize=9)  # fmt: skip
        fig.axes[1].set_title("第2ブロックの出力 4×4：位置 (2, 1) のユニット", fontsize=9)
        fig.suptitle(f"1 ユニットの受容野は入力の {h}×{w} 画素", fontsize=10)
        save(fig, "theory-receptive-field-map.png")


def interpretation(model: torch.nn.Module) -> None:
    interp = viz.Interpretation.from_model(model, mnist_sample(train=False))
    print(f"  test accuracy {interp!r}")
    save(interp.plot_confusion_matrix(), "viz-confusion-matrix.png")
    save(interp.plot_top_losses(8), "viz-top-losses.png")
    with japanese():
        fig = interp.plot_confusion_matrix()
        fig.axes[0].set_xlabel("予測したクラス")
        fig.axes[0].set_ylabel("正解のクラス")
        save(fig, "theory-confusion-matrix.png")
        fig = interp.plot_top_losses(8)
        losses, indices = interp.top_losses(8)
        for ax, loss, i in zip(fig.axes, losses.tolist(), indices.tolist(), strict=True):
            true, pred = int(interp.targets[i]), int(interp.predictions[i])
            prob = float(interp.probabilities[i])
            ax.set_title(f"正解 {true}・予測 {pred}\n確率 {prob:.2f}・損失 {loss:.2f}", fontsize=8)
        save(fig, "theory-top-losses.png")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"writing to {OUT}:")
    with japanese():
        cross_correlation()
        padding_stride()
        max_pooling()
        receptive_field_growth()
    test_images, test_labels = mnist_sample(train=False).tensors
    # the first test image of each of the digits 0-7, for the per-digit figures
    firsts = torch.stack([test_images[(test_labels == d).nonzero()[0, 0]] for d in range(8)])
    edge_filter(firsts[4])
    pooling_loses_information(firsts[4])
    lr_finder_curve()
    model, history = train_notebook_cnn()
    training_curves(history)
    filters(model)
    feature_maps(model, firsts[4])
    grad_cams(model, firsts)
    receptive_field_map(model, firsts[4])
    interpretation(model)
