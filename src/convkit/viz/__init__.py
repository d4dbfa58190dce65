"""Look inside a CNN: its filters, feature maps, Grad-CAM heat maps and mistakes.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` and saves nothing
(``fig.savefig("filters.png")`` does). matplotlib is the optional ``plot`` extra
(``pip install "torch-convkit[plot]"``); the tensor-valued functions
([`feature_maps`][convkit.viz.feature_maps], [`grad_cam`][convkit.viz.grad_cam],
[`Interpretation`][convkit.viz.Interpretation]) work without it.

Everything works for any ``nn.Module`` with ``nn.Conv1d``/``2d``/``3d`` layers, on the
device the model is on; layers are chosen by their names in ``model.named_modules()``.
Nothing here changes the model: forward passes run in eval mode with every submodule's
train/eval flag restored afterwards, BatchNorm statistics and parameter gradients are
left as they were, and forward hooks are removed even when the forward pass fails.

Grad-CAM follows Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization" (ICCV 2017); the confusion matrix and top losses
follow fastai's ``ClassificationInterpretation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..shapes.receptive import layers_up_to, region
from ..utils.probe import eval_mode
from ..utils.validation import check_positive_int
from .hooks import (
    conv_blocks,
    recorded_outputs,
    resolve_conv,
    resolve_layer,
    resolve_layers,
    sample_batch,
)
from .interpretation import ClassTable, Interpretation
from .plotting import grid_figure, mosaic, new_figure, show_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ClassTable",
    "Interpretation",
    "feature_maps",
    "grad_cam",
    "plot_confusion_matrix",
    "plot_feature_maps",
    "plot_filters",
    "plot_grad_cam",
    "plot_receptive_field",
    "plot_top_losses",
    "receptive_field_region",
]

LayerArg = str | nn.Module


def _check_model(model: Any, arg: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected an nn.Module. "
            f"Received {type(model).__name__}."
        )


# ------------------------------------------------------------------------------- filters


def _filter_image(kernel: torch.Tensor) -> torch.Tensor:
    """One filter ``(C_in, *k)`` as a 2-D image: its input channels side by side."""
    if kernel.dim() == 2:  # 1-D conv: one row per input channel
        return kernel
    if kernel.dim() == 4:  # 3-D conv: a row of depth slices per input channel
        return mosaic(kernel)
    channels = kernel.shape[0]
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    tiles = torch.full((rows * cols, *kernel.shape[1:]), math.nan, dtype=kernel.dtype)
    tiles[:channels] = kernel
    return mosaic(tiles.reshape(rows, cols, *kernel.shape[1:]))


def plot_filters(
    model_or_conv: nn.Module,
    layer: LayerArg | None = None,
    *,
    rgb: bool | None = None,
    max_filters: int = 64,
) -> Figure:
    """A grid of a convolution's kernels, one panel per output channel.

    Each panel shows one filter's kernels for all its input channels (side by side),
    on one colour scale shared by all panels and symmetric around zero: white is 0,
    red positive, blue negative. With three input channels the filters can instead be
    drawn as colour images (``rgb=True``), mid-grey being 0.

    Args:
        model_or_conv: A model, or a convolution layer itself.
        layer: The convolution (its name in ``model.named_modules()`` or the module),
            or a block holding exactly one; ``None`` means the model's first one, whose
            filters look at the input directly.
        rgb: Draw 3-input-channel 2-D filters as colour images; ``None`` does so when
            the layer has three input channels.
        max_filters: Show at most this many filters (the first ones).

    Returns:
        The figure: one image per filter shown, plus a colour bar unless ``rgb``.

    Raises:
        TypeError: If ``model_or_conv`` isn't an ``nn.Module``.
        ValueError: For an unknown layer name (the message lists the valid ones), a
            layer without one convolution, or ``rgb=True`` on a layer that isn't 2-D
            with three input channels.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=())
        >>> fig = plot_filters(model)
        >>> len(fig.axes[0].images), fig.axes[0].images[0].get_array().shape
        (1, (3, 3))
        >>> len(plot_filters(model, "features.block2").axes)  # 16 filters + colour bar
        17
    """
    _check_model(model_or_conv, "model_or_conv")
    name, conv = resolve_conv(model_or_conv, "layer", layer)
    check_positive_int("max_filters", max_filters)
    weight = conv.weight.detach().float().cpu()  # (C_out, C_in / groups, *kernel)
    colour_ok = weight.dim() == 4 and weight.shape[1] == 3
    if rgb is None:
        rgb = colour_ok
    elif not isinstance(rgb, bool):
        raise TypeError(
            f"Invalid type for argument `rgb`. Expected a bool or None. Received {rgb!r}."
        )
    elif rgb and not colour_ok:
        raise ValueError(
            "Invalid value for argument `rgb`. Expected False or None for this layer: rgb=True "
            f"needs a 2-D convolution with 3 input channels; {name or 'the layer'} has weights "
            f"of shape {tuple(weight.shape)}."
        )
    shown = weight[:max_filters]
    limit = float(shown.abs().max()) or 1.0
    fig, axes = grid_figure("plot_filters", len(shown), extra_width=0 if rgb else 0.8)
    image = None
    for index, (ax, kernel) in enumerate(zip(axes, shown, strict=True)):
        if rgb:
            ax.imshow((kernel.permute(1, 2, 0) / (2 * limit) + 0.5).clamp(0, 1).numpy())
        else:
            image = ax.imshow(_filter_image(kernel).numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(str(index), fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    size = "x".join(map(str, weight.shape[2:]))
    fig.suptitle(f"{name or type(conv).__name__}: {len(shown)} of {len(weight)} filters, {size}")
    return fig


# -------------------------------------------------------------------------- feature maps


def feature_maps(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerArg | Sequence[LayerArg] | None = None,
) -> dict[str, torch.Tensor]:
    """The outputs of chosen layers for an input, recorded with forward hooks.

    The forward pass runs in eval mode under ``torch.no_grad``; afterwards every
    submodule's mode, BatchNorm's statistics and parameter gradients are as before,
    and the hooks are removed (also if the forward pass raises).

    Args:
        model: Any model with convolutions.
        x: One sample ``(C, H, W)`` (``(C, L)`` / ``(C, D, H, W)`` for 1-D / 3-D
            models) or a batch of them; moved to the model's device and dtype.
        layers: Layer names or modules; ``None`` means every conv block: the outermost
            modules with a convolution inside, such as ``ConvBlock``s
            (``features.block1``) or residual blocks; for a model without blocks, its
            convolutions.

    Returns:
        ``{name: output}`` in the order of ``layers``, each with a batch dimension. A
        module that runs several times in one forward pass (one ``nn.ReLU`` reused
        after every convolution) gives the output of its last call.

    Raises:
        TypeError: If ``x`` isn't a tensor or ``layers`` has the wrong type.
        ValueError: For an unknown layer name (the message lists the valid ones), an
            input of the wrong shape, or a layer that didn't run.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=())
        >>> maps = feature_maps(model, torch.zeros(1, 28, 28))
        >>> {name: tuple(out.shape) for name, out in maps.items()}
        {'features.block1': (1, 8, 14, 14), 'features.block2': (1, 16, 7, 7)}
    """
    _check_model(model)
    named = resolve_layers(model, "layers", layers)
    batch = sample_batch(model, x, single=False)
    with eval_mode(model), torch.no_grad(), recorded_outputs(named) as outputs:
        model(batch)
    missing = [name for name, _ in named if name not in outputs]
    if missing:
        raise ValueError(
            f"Invalid value for argument `layers`: {', '.join(missing)} did not return a tensor "
            f"in the forward pass. Conv blocks: {', '.join(n for n, _ in conv_blocks(model))}."
        )
    return {name: outputs[name].detach() for name, _ in named}


def plot_feature_maps(
    model: nn.Module,
    x: torch.Tensor,
    layers: LayerArg | Sequence[LayerArg] | None = None,
    *,
    max_channels: int = 16,
) -> Figure:
    """The activations of chosen layers for one input: one row per layer.

    Each panel is one channel on its own colour scale (2-D maps as images, 1-D as
    curves, 3-D as their middle depth slice). Runs as
    [`feature_maps`][convkit.viz.feature_maps] does, changing nothing in the model.

    Args:
        model: Any model with convolutions.
        x: One sample, e.g. an image ``(C, H, W)`` or ``(1, C, H, W)``.
        layers: As in ``feature_maps``; ``None`` means every conv block.
        max_channels: Show at most this many channels per layer (the first ones).

    Returns:
        The figure: ``min(channels, max_channels)`` panels per layer.

    Raises:
        ValueError: As ``feature_maps``, and for a layer whose output has no spatial
            dimensions (such as a linear layer).

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(4, 6), hidden=())
        >>> fig = plot_feature_maps(model, torch.zeros(1, 28, 28))
        >>> sum(len(ax.images) for ax in fig.axes)  # 4 + 6 channels
        10
    """
    check_positive_int("max_channels", max_channels)
    _check_model(model)
    sample_batch(model, x, single=True)  # one sample, checked before the forward pass
    maps = feature_maps(model, x, layers)
    flat = [name for name, out in maps.items() if out.dim() < 3]
    if flat:
        raise ValueError(
            f"Invalid value for argument `layers`: {', '.join(flat)} returned no feature map "
            f"(no spatial dimensions). Conv blocks: {', '.join(n for n, _ in conv_blocks(model))}."
        )
    cols = min(max_channels, max(out.shape[1] for out in maps.values()))
    fig = new_figure("plot_feature_maps", (1.2 * cols + 0.8, 1.3 * len(maps) + 0.3))
    grid = fig.subplots(len(maps), cols, squeeze=False)
    for row, (name, out) in zip(grid, maps.items(), strict=True):
        channels = out[0].float().cpu()
        row[0].set_ylabel(f"{name}\n{tuple(channels.shape)}", fontsize=8)
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= min(len(channels), cols):
                ax.set_frame_on(False)
            elif channels.dim() == 2:  # 1-D: a curve
                ax.plot(channels[c].numpy(), lw=1)
            else:  # 2-D: an image; 3-D: its middle depth slice
                plane = channels[c] if channels.dim() == 3 else channels[c, channels.shape[1] // 2]
                ax.imshow(plane.numpy())
            if c < len(channels):
                ax.set_title(str(c), fontsize=8)
    return fig


# ------------------------------------------------------------------------------ Grad-CAM


def _cam_layer(model: nn.Module, layer: LayerArg | None) -> tuple[str, nn.Module]:
    if layer is not None:
        return resolve_layer(model, "layer", layer)
    blocks = conv_blocks(model)
    if not blocks:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model with a convolution "
            f"(nn.Conv1d/2d/3d). Received a {type(model).__name__} without one."
        )
    return blocks[-1]


def _check_target(target: Any, n: int) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((n,), target, dtype=torch.int64)
    if isinstance(target, torch.Tensor) and target.dim() <= 1 and not target.is_floating_point():
        values = target.reshape(-1).to("cpu", torch.int64)
    elif isinstance(target, Sequence) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        values = torch.tensor(list(target), dtype=torch.int64)
    else:
        raise TypeError(
            "Invalid type for argument `target`. Expected None (the predicted class), a class "
            f"index, or one index per sample. Received target={target!r}."
        )
    if len(values) != n:
        raise ValueError(
            f"Invalid value for argument `target`. Expected one class index per sample ({n}). "
            f"Received {len(values)} of them."
        )
    return values


def _grad_cam(
    model: nn.Module, x: torch.Tensor, target: Any, layer: LayerArg | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heat maps ``(N, *spatial)``, the explained classes ``(N,)`` and their probabilities."""
    _check_model(model)
    name, module = _cam_layer(model, layer)
    batch = sample_batch(model, x, single=False)
    targets = _check_target(target, len(batch))
    with eval_mode(model), torch.enable_grad(), recorded_outputs([(name, module)]) as outputs:
        # An input that needs grad gives the layer an autograd history even when the
        # model's parameters are frozen.
        logits = model(batch.detach().requires_grad_())
        activation = outputs.get(name)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"Invalid value for argument `model`. Expected class scores of shape (N, classes). "
                f"Received {got}."
            )
        if activation is None or activation.dim() != batch.dim():
            got = "no tensor" if activation is None else f"shape {tuple(activation.shape)}"
            raise ValueError(
                f"Invalid value for argument `layer`. Expected a layer with spatial outputs like "
                f"the input's {tuple(batch.shape)}; {name} gave {got}. Conv blocks: "
                f"{', '.join(n for n, _ in conv_blocks(model))}."
            )
        classes = logits.argmax(1) if targets is None else targets.to(logits.device)
        if targets is not None and not bool(((targets >= 0) & (targets < logits.shape[1])).all()):
            raise ValueError(
                f"Invalid value for argument `target`. Expected class indices in "
                f"[0, {logits.shape[1] - 1}]. Received {targets.tolist()}."
            )
        score = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activation)
    spatial = tuple(range(2, activation.dim()))
    weights = grads.mean(dim=spatial, keepdim=True)  # alpha_k: the channel's mean gradient
    cam = F.relu((weights * activation.detach()).sum(1, keepdim=True))
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[cam.dim()]
    cam = F.interpolate(cam, size=batch.shape[2:], mode=mode, align_corners=False)[:, 0]
    probs = logits.detach().float().softmax(1).gather(1, classes[:, None])[:, 0]
    return cam, classes, probs


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: LayerArg | None = None,
) -> torch.Tensor:
    """Grad-CAM heat maps: where in the input the model found evidence for a class.

    For the chosen layer's activations ``A`` (channels ``k``) and the class score
    ``y_c`` (the logit), each channel gets the weight ``alpha_k = mean over positions
    of dy_c/dA_k``; the map is ``ReLU(sum_k alpha_k A_k)``, upsampled (bi/tri-linearly)
    to the input's size. The gradients are taken with ``torch.autograd.grad``, so the
    parameters' ``.grad`` stay as they were; the pass runs in eval mode and restores
    every submodule's mode.

    Args:
        model: Any classifier with convolutions returning ``(N, classes)`` scores.
        x: One sample ``(C, H, W)`` or a batch ``(N, C, H, W)`` (1-D and 3-D models
            likewise).
        target: The class to explain: ``None`` (each sample's predicted class), one
            index for all samples, or one per sample.
        layer: The layer whose activations are weighted (name or module); ``None``
            means the last conv block, the usual choice (deep enough to know the
            classes, still spatial).

    Returns:
        Non-negative heat maps of the input's spatial size on the model's device:
        ``(H, W)`` for one sample, ``(N, H, W)`` for a batch. They are not normalised.

    Raises:
        TypeError: For an ``x`` or ``target`` of the wrong type.
        ValueError: For an unknown layer name (the message lists the valid ones), a
            layer without spatial output, a target outside the classes, or a model that
            doesn't return ``(N, classes)``.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=())
        >>> grad_cam(model, torch.rand(1, 28, 28)).shape
        torch.Size([28, 28])
        >>> grad_cam(model, torch.rand(4, 1, 28, 28), target=3, layer="features.block1").shape
        torch.Size([4, 28, 28])
    """
    cam, _, _ = _grad_cam(model, x, target, layer)
    single = isinstance(x, torch.Tensor) and x.dim() == cam.dim()
    return cam[0] if single else cam


def plot_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: LayerArg | None = None,
    *,
    alpha: float = 0.5,
) -> Figure:
    """Grad-CAM heat maps laid over their 2-D input images, one panel per sample.

    Each heat map is scaled to ``[0, 1]`` for display and drawn with the ``jet`` colour
    map over the image; the title gives the explained class and its probability.

    Args:
        model: As in [`grad_cam`][convkit.viz.grad_cam].
        x: One image ``(C, H, W)`` or a batch ``(N, C, H, W)``.
        target: As in ``grad_cam``.
        layer: As in ``grad_cam``.
        alpha: Opacity of the heat map, in ``[0, 1]``.

    Returns:
        The figure: one panel per sample, each with two images (input, heat map).

    Raises:
        ValueError: As ``grad_cam``, for an ``alpha`` outside ``[0, 1]``, or for inputs
            that aren't images.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=())
        >>> fig = plot_grad_cam(model, torch.rand(3, 1, 28, 28))
        >>> [len(ax.images) for ax in fig.axes]
        [2, 2, 2]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(
            f"Invalid value for argument `alpha`. Expected a number in [0, 1]. Received {alpha!r}."
        )
    _check_model(model)
    batch = sample_batch(model, x, single=False)
    if batch.dim() != 4:
        raise ValueError(
            "Invalid value for argument `x`. Expected images (C, H, W) or (N, C, H, W) for "
            f"plot_grad_cam (grad_cam itself takes 1-D and 3-D inputs). Received shape "
            f"{tuple(x.shape)}."
        )
    cam, classes, probs = _grad_cam(model, batch, target, layer)
    fig, axes = grid_figure("plot_grad_cam", len(batch), cols=min(len(batch), 8), size=1.8)
    rows = zip(axes, batch, cam.cpu(), classes.tolist(), probs.tolist(), strict=True)
    for ax, image, heat, cls, prob in rows:
        show_image(ax, image)
        peak = float(heat.max())
        scaled = heat / peak if peak > 0 else heat
        ax.imshow(scaled.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        ax.set_title(f"class {cls}: p={prob:.2f}", fontsize=9)
    return fig


# ----------------------------------------------------------------------- receptive field


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if len(shape) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected one image's shape (C, H, W) "
            f"of positive ints, e.g. (1, 28, 28). Received input_shape={input_shape!r}."
        )
    return shape[0], shape[1], shape[2]


def _unit(
    model: nn.Module, input_shape: Any, position: Any, layer: LayerArg | None
) -> tuple[str, tuple[int, int], tuple[int, int, int, int]]:
    """The layer's name, its output size and the unit's region, after checking them."""
    _check_model(model)
    shape = _check_input_shape(input_shape)
    name, _ = _cam_layer(model, layer)
    layers = layers_up_to(model, name)
    output = feature_maps(model, torch.zeros(shape), [name])[name]
    if output.dim() != 4:
        raise ValueError(
            f"Invalid value for argument `layer`. Expected a layer with 2-D feature maps; {name} "
            f"gives shape {tuple(output.shape)}. Conv blocks: "
            f"{', '.join(n for n, _ in conv_blocks(model))}."
        )
    size = (int(output.shape[2]), int(output.shape[3]))
    if not (
        isinstance(position, Sequence)
        and len(position) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in position)
        and all(0 <= p < n for p, n in zip(position, size, strict=True))
    ):
        raise ValueError(
            f"Invalid value for argument `position`. Expected (row, column) of a unit of "
            f"{name}'s {size[0]}x{size[1]} output, each from 0 to {size[0] - 1} / {size[1] - 1}. "
            f"Received position={position!r}."
        )
    top, left, height, width = region(layers, (position[0], position[1]), shape[1:])
    return name, size, (top, left, height, width)


def receptive_field_region(
    model: nn.Module,
    input_shape: Sequence[int],
    position: tuple[int, int],
    *,
    layer: LayerArg | None = None,
) -> tuple[int, int, int, int]:
    """The input region that one output unit of a layer depends on.

    The size is [`shapes.receptive_field`][convkit.shapes.receptive_field] of the
    convolution and pooling layers up to ``layer``; the position follows their strides
    and paddings back from the unit. As for ``shapes.receptive_field``, the layers are
    taken in registration order, which is the order of computation for chains of
    layers such as [`build_cnn`][convkit.build_cnn]'s models (not for blocks with
    parallel branches, such as residual blocks).

    Args:
        model: A model with 2-D convolutions.
        input_shape: One input's shape ``(C, H, W)``.
        position: ``(row, column)`` of the unit in the layer's output.
        layer: The layer (name or module); ``None`` means the last conv block.

    Returns:
        ``(top, left, height, width)`` in input pixels. Where the field reaches into the
        padding, ``top``/``left`` are negative or the region runs past the far edge.

    Raises:
        ValueError: For an unknown layer (the message lists the valid names), a bad
            ``input_shape``, a ``position`` outside the layer's output, or 1-D/3-D layers.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5,
        ...                   padding="valid", hidden=())
        >>> receptive_field_region(model, (1, 28, 28), (0, 0))  # of a 4x4 output
        (0, 0, 16, 16)
        >>> receptive_field_region(model, (1, 28, 28), (3, 1))
        (12, 4, 16, 16)
    """
    return _unit(model, input_shape, position, layer)[2]


def plot_receptive_field(
    model: nn.Module,
    input_shape: Sequence[int],
    position: tuple[int, int],
    *,
    layer: LayerArg | None = None,
    image: torch.Tensor | None = None,
) -> Figure:
    """The input region one output unit sees, next to that unit in the layer's output.

    Left: the input (``image``, or an empty grid) with the receptive field from
    [`receptive_field_region`][convkit.viz.receptive_field_region] outlined (the part
    inside the image solid, a part in the padding dashed). Right: the layer's output
    grid with the unit marked.

    Args:
        model: As in ``receptive_field_region``.
        input_shape: One input's shape ``(C, H, W)``.
        position: ``(row, column)`` of the unit in the layer's output.
        layer: As in ``receptive_field_region``; ``None`` means the last conv block.
        image: An input of shape ``input_shape`` to draw under the outline.

    Returns:
        The figure: two axes, each with one image and the outline patches.

    Raises:
        ValueError: As ``receptive_field_region``, and for an ``image`` whose shape
            isn't ``input_shape``.

    Examples:
        >>> from convkit import build_cnn
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=())
        >>> fig = plot_receptive_field(model, (1, 28, 28), (3, 3))
        >>> len(fig.axes), fig.axes[0].patches[0].get_width()
        (2, 10)
    """
    if image is not None and (
        not isinstance(image, torch.Tensor) or tuple(image.shape) != tuple(input_shape)
    ):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"Invalid value for argument `image`. Expected a tensor of shape "
            f"{tuple(input_shape)} (input_shape) or None. Received {got}."
        )
    name, size, (top, left, height, width) = _unit(model, input_shape, position, layer)
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    _, rows, cols = _check_input_shape(input_shape)
    fig = new_figure("plot_receptive_field", (7.5, 3.6))
    axes = fig.subplots(1, 2)
    if image is not None:
        show_image(axes[0], image)
    else:
        axes[0].imshow(torch.zeros(rows, cols).numpy(), cmap="gray_r", vmin=0, vmax=1)
    # the part of the field inside the image solid, the whole field (if larger) dashed
    bottom, right = min(top + height, rows), min(left + width, cols)
    clipped = (max(top, 0), max(left, 0), bottom - max(top, 0), right - max(left, 0))
    for (y, x, h, w), style in ((clipped, "-"), ((top, left, height, width), "--")):
        if style == "-" or (y, x, h, w) != clipped:
            box = Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="#e1812c", ls=style)
            box.set(lw=2.5 if style == "-" else 1.5, clip_on=False)
            axes[0].add_patch(box)
    span = f"rows {top}..{top + height - 1}, cols {left}..{left + width - 1}"
    axes[0].set_title(f"input {rows}x{cols}: {span}", fontsize=9)
    unit = torch.zeros(size)
    unit[position[0], position[1]] = 1
    axes[1].imshow(unit.numpy(), cmap="Oranges", vmin=0, vmax=1.2)
    axes[1].set_title(f"{name} {size[0]}x{size[1]}: unit {tuple(position)}", fontsize=9)
    for ax, (h, w) in zip(axes, ((rows, cols), size), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks([x - 0.5 for x in range(w + 1)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(h + 1)], minor=True)
        ax.grid(which="minor", color="#cccccc", lw=0.5)
        ax.tick_params(which="both", length=0, labelsize=7)
    fig.suptitle(f"receptive field {height}x{width}", fontsize=10)
    return fig


# ------------------------------------------------------------------------ interpretation


def plot_confusion_matrix(interpretation: Interpretation, *, normalize: bool = False) -> Figure:
    """Draw an [`Interpretation`][convkit.viz.Interpretation]'s confusion matrix.

    Same as ``interpretation.plot_confusion_matrix(normalize=...)``.

    Examples:
        >>> from convkit import build_cnn, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> interp = Interpretation.from_model(model, mnist_sample(train=False))
        >>> len(plot_confusion_matrix(interp).axes[0].images)
        1
    """
    if not isinstance(interpretation, Interpretation):
        raise TypeError(
            "Invalid type for argument `interpretation`. Expected an Interpretation, from "
            f"Interpretation.from_model(model, data). Received {type(interpretation).__name__}."
        )
    return interpretation.plot_confusion_matrix(normalize=normalize)


def plot_top_losses(interpretation: Interpretation, k: int = 9) -> Figure:
    """Draw an [`Interpretation`][convkit.viz.Interpretation]'s ``k`` worst samples.

    Same as ``interpretation.plot_top_losses(k)``.

    Examples:
        >>> from convkit import build_cnn, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> interp = Interpretation.from_model(model, mnist_sample(train=False))
        >>> len(plot_top_losses(interp, 4).axes)
        4
    """
    if not isinstance(interpretation, Interpretation):
        raise TypeError(
            "Invalid type for argument `interpretation`. Expected an Interpretation, from "
            f"Interpretation.from_model(model, data). Received {type(interpretation).__name__}."
        )
    return interpretation.plot_top_losses(k)
