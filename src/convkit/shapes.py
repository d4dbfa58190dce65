"""Output-size, padding, parameter, cost and receptive-field formulas, and ``summary``.

Each function is the formula that the theory page (理論解説) states, written as code
and checked against ``torch.nn`` layers by the tests. The output-size formulas follow
the "Shape" sections of PyTorch's ``nn.Conv2d`` and ``nn.MaxPool2d`` documentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._validation import check_positive_int


def _check_padding(name: str, padding: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(padding, tuple):
        if len(padding) != 2:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an int (each side) or a pair "
                f"(before, after). Received {name}={padding!r}."
            )
        before = check_positive_int(name, padding[0], allow_zero=True)
        after = check_positive_int(name, padding[1], allow_zero=True)
        return before, after
    check_positive_int(name, padding, allow_zero=True)
    return padding, padding


def conv_output_size(
    size: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
) -> int:
    """Length of a convolution's output along one spatial dimension.

    ``floor((size + P_before + P_after - dilation * (kernel_size - 1) - 1) / stride) + 1``,
    PyTorch's formula, where an int ``padding`` pads both sides.

    Args:
        size: Input length (``H_in`` or ``W_in``).
        kernel_size: Kernel length ``K``.
        stride: Step ``S`` between windows.
        padding: Zeros added on each side (an int), or ``(before, after)``.
        dilation: Spacing ``D`` between kernel taps.

    Returns:
        The output length. A value below 1 means the input is too small for the layer.

    Raises:
        ValueError: If an argument is negative or a size, kernel, stride or dilation is 0.

    Examples:
        >>> conv_output_size(28, 5)
        24
        >>> conv_output_size(28, 3, stride=2, padding=1)
        14
        >>> conv_output_size(7, 3, dilation=2)
        3
    """
    check_positive_int("size", size)
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    check_positive_int("dilation", dilation)
    before, after = _check_padding("padding", padding)
    return (size + before + after - dilation * (kernel_size - 1) - 1) // stride + 1


def pool_output_size(
    size: int,
    kernel_size: int,
    *,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Length of a pooling layer's output along one spatial dimension.

    As ``nn.MaxPool2d`` / ``nn.AvgPool2d`` compute it: ``stride`` defaults to
    ``kernel_size``, and with ``ceil_mode`` a last, partial window counts only if it
    starts inside the input or its left padding.

    Args:
        size: Input length.
        kernel_size: Window length.
        stride: Step between windows; ``None`` means ``kernel_size``.
        padding: Implicit padding on each side.
        dilation: Spacing between window elements (max pooling only).
        ceil_mode: Round up instead of down, as in PyTorch.

    Returns:
        The output length.

    Examples:
        >>> pool_output_size(24, 2)
        12
        >>> pool_output_size(7, 2)
        3
        >>> pool_output_size(7, 2, ceil_mode=True)
        4
    """
    check_positive_int("size", size)
    check_positive_int("kernel_size", kernel_size)
    stride = kernel_size if stride is None else check_positive_int("stride", stride)
    check_positive_int("padding", padding, allow_zero=True)
    check_positive_int("dilation", dilation)
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # PyTorch drops a last window that would start in the right padding.
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def same_padding(kernel_size: int, *, dilation: int = 1) -> tuple[int, int]:
    """Zeros to add ``(before, after)`` so that a convolution keeps ``ceil(size / stride)``.

    The total is ``dilation * (kernel_size - 1)`` whatever the stride and input size:
    with it, ``floor((size + D(K-1) - D(K-1) - 1) / S) + 1 = floor((size - 1) / S) + 1 =
    ceil(size / S)``. An odd total (an even kernel) puts the extra zero after, as
    TensorFlow's ``"SAME"`` does.

    Args:
        kernel_size: Kernel length ``K``.
        dilation: Spacing ``D`` between kernel taps.

    Returns:
        ``(before, after)``, the zeros on the top/left and on the bottom/right.

    Examples:
        >>> same_padding(3)
        (1, 1)
        >>> same_padding(4)
        (1, 2)
        >>> same_padding(3, dilation=2)
        (2, 2)
    """
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("dilation", dilation)
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def conv_params(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    *,
    groups: int = 1,
    bias: bool = True,
) -> int:
    """Number of learnable parameters of a 2-D convolution.

    ``C_out * (C_in / groups) * K_h * K_w`` weights, plus ``C_out`` biases.

    Examples:
        >>> conv_params(1, 32, 5)
        832
        >>> conv_params(32, 32, 3, groups=32, bias=False)
        288
    """
    kh, kw = _pair("kernel_size", kernel_size)
    _check_groups(in_channels, out_channels, groups)
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    output_size: int | tuple[int, int],
    *,
    groups: int = 1,
) -> int:
    """Multiply-accumulate operations of one 2-D convolution on one sample.

    ``H_out * W_out * C_out * (C_in / groups) * K_h * K_w`` (the bias adds are not
    counted, as is usual). One MAC is two FLOPs.

    Examples:
        >>> conv_macs(1, 32, 5, 24)
        460800
    """
    kh, kw = _pair("kernel_size", kernel_size)
    ho, wo = _pair("output_size", output_size)
    _check_groups(in_channels, out_channels, groups)
    return ho * wo * out_channels * (in_channels // groups) * kh * kw


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an int or a pair of ints. "
                f"Received {name}={value!r}."
            )
        return check_positive_int(name, value[0]), check_positive_int(name, value[1])
    check_positive_int(name, value)
    return value, value


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"Invalid value for argument `groups`. Expected a divisor of both in_channels="
            f"{in_channels} and out_channels={out_channels}. Received groups={groups}."
        )


# ----------------------------------------------------------- receptive field and summary

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _layer_geometry(layer: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and dilation (each ``(h, w)``) of a conv or pooling layer."""

    def pair(value: Any) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))

    kernel = pair(layer.kernel_size)
    stride = pair(layer.stride if layer.stride is not None else layer.kernel_size)
    dilation = pair(getattr(layer, "dilation", 1))
    return kernel, stride, dilation


def receptive_field(layers: nn.Module | Sequence[nn.Module]) -> tuple[int, int]:
    """Receptive field ``(r_h, r_w)`` of one output pixel of a stack of layers.

    ``r_L = 1 + sum_l D_l (K_l - 1) prod_{i<l} S_i`` over the convolution and pooling
    layers in order (others, such as activations and norms, don't change it). A
    module's layers are taken in registration order, which is the order of computation
    for sequential models such as those [`build_cnn`][convkit.build_cnn] makes.

    Args:
        layers: A model, or a sequence of layers.

    Returns:
        The height and width of the input region one output pixel depends on.

    Examples:
        >>> receptive_field([nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)])
        (5, 5)
        >>> receptive_field([nn.Conv2d(1, 1, 5), nn.MaxPool2d(2), nn.Conv2d(1, 1, 5)])
        (14, 14)
    """
    if isinstance(layers, nn.Module):
        sequence: Sequence[nn.Module] = [m for m in layers.modules() if isinstance(m, _SPATIAL)]
    elif isinstance(layers, Sequence) and all(isinstance(m, nn.Module) for m in layers):
        sequence = [m for m in layers if isinstance(m, _SPATIAL)]
    else:
        raise TypeError(
            "Invalid type for argument `layers`. Expected an nn.Module or a sequence of "
            f"nn.Module layers. Received {type(layers).__name__}."
        )
    field = [1, 1]
    jump = [1, 1]  # distance in input pixels between neighbouring outputs so far
    for layer in sequence:
        kernel, stride, dilation = _layer_geometry(layer)
        for d in range(2):
            field[d] += dilation[d] * (kernel[d] - 1) * jump[d]
            jump[d] *= stride[d]
    return field[0], field[1]


@dataclass
class ModelSummary:
    """Per-layer table returned by [`summary`][convkit.shapes.summary]; ``print`` it.

    Attributes:
        rows: One dict per leaf layer: ``name``, ``type``, ``output_shape``, ``params``,
            ``macs``, ``receptive_field``.
        input_shape: The input shape the summary was made for (without the batch).
        total_params: All parameters of the model.
        trainable_params: Those with ``requires_grad``.
        total_macs: Multiply-accumulates of one forward pass on one sample.
    """

    rows: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    total_macs: int

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "Params", "MACs", "RF")
        body = [
            (
                row["name"],
                row["type"],
                str(tuple(row["output_shape"])),
                f"{row['params']:,}",
                f"{row['macs']:,}",
                "x".join(map(str, row["receptive_field"])),
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        lines = [f"Input shape: {self.input_shape}", rule]
        for i, cells in enumerate([header, *body]):
            lines.append(
                "  ".join(
                    cell.rjust(w) if j >= 3 else cell.ljust(w)
                    for j, (cell, w) in enumerate(zip(cells, widths, strict=True))
                )
            )
            if i == 0:
                lines.append(rule)
        lines += [
            rule,
            f"Total params: {self.total_params:,} (trainable: {self.trainable_params:,})",
            f"Total MACs per sample: {self.total_macs:,}",
        ]
        return "\n".join(lines)


def _macs(layer: nn.Module, output: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        return conv_macs(
            layer.in_channels,
            layer.out_channels,
            _layer_geometry(layer)[0],
            (int(output.shape[-2]), int(output.shape[-1])),
            groups=layer.groups,
        )
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    return 0


def summary(model: nn.Module, input_shape: Sequence[int]) -> ModelSummary:
    """A per-layer table like Keras' ``model.summary()``: shapes, parameters, MACs, RF.

    Runs one sample through the model in eval mode under ``no_grad`` and restores every
    submodule's mode afterwards, so no parameter, buffer (BatchNorm statistics) or mode
    changes.

    Args:
        model: Any model whose leaf layers run in order.
        input_shape: One sample's shape, e.g. ``(1, 28, 28)``.

    Returns:
        A [`ModelSummary`][convkit.shapes.ModelSummary]: ``print`` it, or read ``rows``.

    Examples:
        >>> from convkit import build_cnn
        >>> table = summary(build_cnn((1, 28, 28), 10, channels=(8,), hidden=()), (1, 28, 28))
        >>> [row["name"] for row in table.rows]
        ['features.block1.conv', 'features.block1.norm', 'features.block1.act', \
'features.block1.pool', 'flatten', 'head.output']
        >>> table.rows[0]["output_shape"], table.rows[0]["receptive_field"]
        ((8, 28, 28), (3, 3))
        >>> table.total_params == sum(p.numel() for p in build_cnn((1, 28, 28), 10,
        ...                               channels=(8,), hidden=()).parameters())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "Invalid type for argument `model`. Expected an nn.Module. "
            f"Received {type(model).__name__}."
        )
    shape = tuple(input_shape)
    if not shape or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected positive ints, e.g. (1, 28, 28). "
            f"Received input_shape={input_shape!r}."
        )
    names = {module: name for name, module in model.named_modules()}
    records: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            records.append((module, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    modes = {m: m.training for m in model.modules()}
    tensor = next(iter(model.parameters()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    rows = []
    spatial: list[nn.Module] = []
    for module, output in records:
        if isinstance(module, _SPATIAL):
            spatial.append(module)
        rows.append(
            {
                "name": names.get(module, type(module).__name__),
                "type": type(module).__name__,
                "output_shape": tuple(output.shape[1:]),
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "macs": _macs(module, output),
                "receptive_field": receptive_field(spatial),
            }
        )
    return ModelSummary(
        rows=rows,
        input_shape=shape,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(row["macs"] for row in rows),
    )
