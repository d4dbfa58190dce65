"""Output-size, padding, parameter, cost and receptive-field formulas, and ``summary``.

Each function is the formula that the theory page (理論解説) states, written as code
and checked against ``torch.nn`` layers by the tests. The output-size formulas follow
the "Shape" sections of PyTorch's ``nn.Conv1d/2d/3d`` and ``nn.MaxPool1d/2d/3d``
documentation; every per-layer function works along one dimension, and the stack
functions (``output_size``, ``min_input_size``, ``receptive_field``) apply them to each
spatial dimension of 1-D, 2-D and 3-D layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..utils.display import html_table
from ..utils.probe import infer_output_shape
from ..utils.typing import model_input_shape
from ..utils.validation import (
    check_groups,
    check_int_or_tuple,
    check_positive_int,
    check_sample_shape,
)


def _check_padding(name: str, padding: int | tuple[int, int]) -> tuple[int, int]:
    before, after = check_int_or_tuple(name, padding, 2, allow_zero=True, meaning="before, after")
    return before, after


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
        The output length. A value below 1 means the input is too small for the layer.

    Raises:
        ValueError: If an argument is negative, a size, kernel, stride or dilation is 0,
            or ``padding`` exceeds ``kernel_size // 2`` (which torch refuses too).

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
    if padding > kernel_size // 2:
        raise ValueError(
            "Invalid value for argument `padding`. Expected at most half the window, "
            f"kernel_size // 2 = {kernel_size // 2}, as nn.MaxPool2d and nn.AvgPool2d require "
            f"(more would make windows of padding only). Received padding={padding} with "
            f"kernel_size={kernel_size}."
        )
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
    ceil(size / S)``. An odd total (an even kernel with an odd dilation) puts the extra
    zero after. For stride 1 this is ``nn.Conv2d(padding="same")``. It is not
    TensorFlow's ``"SAME"`` for stride > 1, whose total
    ``max((ceil(size / S) - 1) * S + D(K-1) + 1 - size, 0)`` depends on the input size:
    for ``size=16, K=3, S=2`` TensorFlow pads ``(0, 1)``, this function ``(1, 1)``.

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


def _spatial(
    name: str, value: int | tuple[int, ...], dims: int | None, other: Any = None
) -> tuple[int, ...]:
    """``value`` per spatial dimension; ``dims`` from a tuple argument when not given."""
    if dims is None:
        dims = next((len(v) for v in (value, other) if isinstance(v, tuple)), 2)
    return check_int_or_tuple(name, value, dims)


def conv_params(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    *,
    groups: int = 1,
    bias: bool = True,
    dims: int | None = None,
) -> int:
    """Number of learnable parameters of a convolution (1-D, 2-D or 3-D).

    ``C_out * (C_in / groups) * prod(K)`` weights, plus ``C_out`` biases.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: An int, or one int per spatial dimension.
        groups: Blocked connections; must divide both channel counts.
        bias: Whether the convolution has a bias.
        dims: Spatial dimensions for an int ``kernel_size``; ``None``: the length of a
            tuple ``kernel_size``, else 2.

    Examples:
        >>> conv_params(1, 32, 5)
        832
        >>> conv_params(32, 32, 3, groups=32, bias=False)
        288
        >>> conv_params(4, 8, (3, 3, 3))
        872
    """
    kernel = _spatial("kernel_size", kernel_size, dims)
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_groups(in_channels, out_channels, groups)
    taps = 1
    for k in kernel:
        taps *= k
    return out_channels * (in_channels // groups) * taps + (out_channels if bias else 0)


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    output_size: int | tuple[int, ...],
    *,
    groups: int = 1,
    dims: int | None = None,
) -> int:
    """Multiply-accumulate operations of one convolution on one sample.

    ``prod(output_size) * C_out * (C_in / groups) * prod(K)`` (the bias adds are not
    counted, as is usual). One MAC is two FLOPs.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: An int, or one int per spatial dimension.
        output_size: The output's spatial size: an int, or one int per dimension.
        groups: Blocked connections; must divide both channel counts.
        dims: Spatial dimensions for int arguments; ``None``: the length of a tuple
            argument, else 2.

    Examples:
        >>> conv_macs(1, 32, 5, 24)
        460800
        >>> conv_macs(1, 8, 3, (100,))
        2400
    """
    kernel = _spatial("kernel_size", kernel_size, dims, output_size)
    out = _spatial("output_size", output_size, len(kernel))
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_groups(in_channels, out_channels, groups)
    macs = out_channels * (in_channels // groups)
    for value in (*kernel, *out):
        macs *= value
    return macs


# ----------------------------------------------------- stacks of layers, per dimension

# The layers that change the spatial size, with their number of spatial dimensions.
_CONVS: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_POOLS: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
}
_ADAPTIVE_POOLS: dict[type[nn.Module], int] = {
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}
_SPATIAL = (*_CONVS, *_POOLS)  # the layers with a kernel: they widen the receptive field


def _dims_of(layer: nn.Module) -> int | None:
    for table in (_CONVS, _POOLS, _ADAPTIVE_POOLS):
        for cls, dims in table.items():
            if isinstance(layer, cls):
                return dims
    return None


@runtime_checkable
class SpatialPath(Protocol):
    """A block whose children don't all run one after another, such as a residual block.

    ``spatial_path`` lists the children that set the block's output size and receptive
    field, in the order they run (a residual block's branch; its shortcut runs beside
    it). The stack functions here walk that path instead of every child.
    """

    def spatial_path(self) -> list[nn.Module]:
        """The children on the block's longest path, in order of computation."""


def _walk(module: nn.Module) -> Iterator[nn.Module]:
    """``module.modules()`` in registration order, taking only a ``SpatialPath``'s path."""
    yield module
    children = module.spatial_path() if isinstance(module, SpatialPath) else module.children()
    for child in children:
        yield from _walk(child)


def _layers(name: str, layers: Any) -> list[nn.Module]:
    """The size-changing layers of a model (registration order) or of a sequence."""
    if isinstance(layers, nn.Module):
        modules: list[nn.Module] = list(_walk(layers))
    elif isinstance(layers, Sequence) and all(isinstance(m, nn.Module) for m in layers):
        modules = list(layers)
    else:
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an nn.Module or a sequence of "
            f"nn.Module layers. Received {type(layers).__name__}."
        )
    return [m for m in modules if _dims_of(m) is not None]


def _geometry(layer: nn.Module, dims: int) -> dict[str, tuple[int, ...]]:
    """Kernel, stride and dilation of a conv or pooling layer, one int per dimension."""
    kernel = check_int_or_tuple("kernel_size", layer.kernel_size, dims)
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    return {
        "kernel": kernel,
        "stride": check_int_or_tuple("stride", stride, dims),
        "dilation": check_int_or_tuple("dilation", getattr(layer, "dilation", 1), dims),
    }


def _padding(
    layer: nn.Module, dims: int, kernel: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` zeros per dimension that a conv or pooling layer adds."""
    explicit = getattr(layer, "padding_per_dim", None)  # a conv after a fixed zero pad
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    if layer.padding == "valid":
        return ((0, 0),) * dims
    if layer.padding == "same":  # torch's own "same" (stride 1 only)
        return tuple(same_padding(k, dilation=d) for k, d in zip(kernel, dilation, strict=True))
    pads = check_int_or_tuple("padding", layer.padding, dims, allow_zero=True)
    return tuple((p, p) for p in pads)


def layer_output_size(layer: nn.Module, size: Sequence[int]) -> tuple[int, ...]:
    """Spatial output size of one layer for an input of spatial size ``size``.

    Convolutions (``nn.Conv1d/2d/3d``, also with ``padding="same"``), max and average
    pooling (``nn.MaxPool1d`` ... ``nn.AvgPool3d``, with their padding, dilation and
    ``ceil_mode``) and adaptive pooling change the size; every other layer keeps it. A
    dimension whose size is already below 1 stays as it is. ``nn.AvgPool3d`` counts as
    too small for an input smaller than its window, padding or not, as torch refuses it.

    Args:
        layer: Any ``nn.Module``.
        size: The input's spatial size, one int per dimension (``(L,)``, ``(H, W)`` or
            ``(D, H, W)``).

    Returns:
        The output's spatial size. A value below 1 means the input is too small.

    Raises:
        ValueError: If ``size`` doesn't have one entry per dimension of the layer.

    Examples:
        >>> layer_output_size(nn.Conv2d(1, 8, 5), (28, 28))
        (24, 24)
        >>> layer_output_size(nn.MaxPool1d(2), (7,))
        (3,)
    """
    sizes = tuple(size)
    dims = _dims_of(layer)
    if dims is None:
        return sizes
    if len(sizes) != dims:
        raise ValueError(
            f"Invalid value for argument `size`: {type(layer).__name__} is {dims}-D, so "
            f"`size` needs {dims} entries (one per spatial dimension). Received size={size!r}."
        )
    if isinstance(layer, tuple(_ADAPTIVE_POOLS)):
        target: Any = layer.output_size
        targets = (target,) * dims if isinstance(target, int) or target is None else target
        return tuple(s if t is None or s < 1 else t for s, t in zip(sizes, targets, strict=True))
    g = _geometry(layer, dims)
    pads = _padding(layer, dims, g["kernel"], g["dilation"])
    out = []
    for d, length in enumerate(sizes):
        if length < 1:
            out.append(length)
        elif isinstance(layer, tuple(_CONVS)):
            out.append(
                conv_output_size(
                    length,
                    g["kernel"][d],
                    stride=g["stride"][d],
                    padding=pads[d],
                    dilation=g["dilation"][d],
                )
            )
        elif isinstance(layer, nn.AvgPool3d) and length < g["kernel"][d]:
            out.append(0)  # torch's avg_pool3d refuses an unpadded input below its window
        else:
            out.append(
                pool_output_size(
                    length,
                    g["kernel"][d],
                    stride=g["stride"][d],
                    padding=pads[d][0],
                    dilation=g["dilation"][d],
                    ceil_mode=bool(layer.ceil_mode),
                )
            )
    return tuple(out)


def output_size(layers: nn.Module | Sequence[nn.Module], size: Sequence[int]) -> tuple[int, ...]:
    """Spatial output size of a stack of layers, applied in order.

    A module's layers are taken in registration order, which is the order of computation
    for sequential models such as [`ConvBlock`][convkit.ConvBlock] (in any ``order``) and
    those [`build_cnn`][convkit.build_cnn] makes.

    Args:
        layers: A model, or a sequence of layers.
        size: The input's spatial size, one int per dimension.

    Returns:
        The output's spatial size. A value below 1 means the input is too small.

    Examples:
        >>> output_size([nn.Conv2d(1, 8, 5), nn.MaxPool2d(2)], (28, 28))
        (12, 12)
    """
    sizes = tuple(size)
    for layer in _layers("layers", layers):
        sizes = layer_output_size(layer, sizes)
    return sizes


def min_input_size(
    layers: nn.Module | Sequence[nn.Module] | Callable[[tuple[int, ...]], Sequence[int]],
    dims: int,
) -> tuple[int, ...]:
    """The smallest spatial input size for which a stack of layers outputs at least 1.

    Output sizes never shrink when the input grows, so every larger input works too.

    Args:
        layers: A model or a sequence of layers (measured with
            [`output_size`][convkit.shapes.output_size]), or a function mapping an input's
            spatial size to the output's, for stacks whose layers don't run in
            registration order (e.g. blocks with a shortcut branch, measured by their own
            ``output_size`` methods).
        dims: The number of spatial dimensions (1, 2 or 3).

    Returns:
        One int per dimension.

    Examples:
        >>> min_input_size([nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.Conv2d(8, 8, (3, 5))], 2)
        (10, 14)
    """
    check_positive_int("dims", dims)
    measure: Callable[[tuple[int, ...]], Sequence[int]]
    if isinstance(layers, nn.Module) or not callable(layers):
        stack = _layers("layers", layers)
        measure = lambda size: output_size(stack, size)  # noqa: E731
    else:
        measure = layers
    smallest = []
    for d in range(dims):

        def length(n: int, d: int = d) -> int:
            return int(measure(tuple(n if i == d else 1 << 20 for i in range(dims)))[d])

        high = 1
        while length(high) < 1:  # grows at most linearly with the input: doubling ends
            high *= 2
        low = high // 2  # length(low) < 1 or low == 0
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if length(mid) >= 1 else (mid, high)
        smallest.append(high)
    return tuple(smallest)


def receptive_field(layers: nn.Module | Sequence[nn.Module]) -> tuple[int, ...]:
    """Receptive field of one output position of a stack of layers, per dimension.

    ``r_L = 1 + sum_l D_l (K_l - 1) prod_{i<l} S_i`` over the convolution and pooling
    layers in order (others, such as activations and norms, don't change it). A
    module's layers are taken in registration order, which is the order of computation
    for sequential models such as those [`build_cnn`][convkit.build_cnn] makes.

    Args:
        layers: A model, or a sequence of layers, all 1-D, all 2-D or all 3-D.

    Returns:
        The size of the input region one output position depends on: ``(r,)`` for 1-D
        layers, ``(r_h, r_w)`` for 2-D (also when there are no such layers),
        ``(r_d, r_h, r_w)`` for 3-D.

    Raises:
        ValueError: If the layers mix 1-D, 2-D and 3-D.

    Examples:
        >>> receptive_field([nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)])
        (5, 5)
        >>> receptive_field([nn.Conv2d(1, 1, 5), nn.MaxPool2d(2), nn.Conv2d(1, 1, 5)])
        (14, 14)
        >>> receptive_field([nn.Conv1d(1, 1, 3, dilation=2)])
        (5,)
    """
    sequence = [m for m in _layers("layers", layers) if isinstance(m, _SPATIAL)]
    all_dims = sorted({_dims_of(m) or 0 for m in sequence})
    if len(all_dims) > 1:
        raise ValueError(
            "Invalid value for argument `layers`: they mix "
            f"{' and '.join(f'{d}-D' for d in all_dims)} layers; a receptive field is "
            "defined for layers of one dimensionality."
        )
    dims = all_dims[0] if all_dims else 2
    field = [1] * dims
    jump = [1] * dims  # distance in input positions between neighbouring outputs so far
    for layer in sequence:
        g = _geometry(layer, dims)
        for d in range(dims):
            field[d] += g["dilation"][d] * (g["kernel"][d] - 1) * jump[d]
            jump[d] *= g["stride"][d]
    return tuple(field)


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

    Examples:
        >>> from convkit import build_cnn
        >>> table = summary(build_cnn((1, 28, 28), 10, channels=(8,), hidden=()), (1, 28, 28))
        >>> table.total_params == sum(row["params"] for row in table.rows)
        True
        >>> table.rows[0]["name"], table.rows[0]["output_shape"]
        ('features.block1.conv', (8, 28, 28))
    """

    rows: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    total_macs: int

    _HEADER = ("Layer", "Type", "Output shape", "Params", "MACs", "RF")

    def _cells(self) -> list[tuple[str, ...]]:
        return [
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

    def _totals(self) -> list[str]:
        return [
            f"Total params: {self.total_params:,} (trainable: {self.trainable_params:,})",
            f"Total MACs per sample: {self.total_macs:,}",
        ]

    def __str__(self) -> str:
        header, body = self._HEADER, self._cells()
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
        return "\n".join([*lines, rule, *self._totals()])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return html_table(
            self._HEADER,
            self._cells(),
            caption=f"Input shape: {self.input_shape}",
            footer=self._totals(),
            numeric_from=3,
        )


def _macs(layer: nn.Module, output: torch.Tensor) -> int:
    dims = _dims_of(layer)
    if isinstance(layer, tuple(_CONVS)) and dims is not None:
        conv: Any = layer
        return conv_macs(
            conv.in_channels,
            conv.out_channels,
            _geometry(layer, dims)["kernel"],
            tuple(int(n) for n in output.shape[-dims:]),
            groups=conv.groups,
        )
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    return 0


def _summary_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = model_input_shape(model)
        if input_shape is None:
            raise TypeError(
                "Missing argument `input_shape`: this model has no `input_shape` attribute "
                f"({type(model).__name__}), so summary can't know what to run. Pass one "
                "sample's shape, e.g. summary(model, (1, 28, 28))."
            )
    return check_sample_shape(
        "input_shape", input_shape, None, "one sample's shape, e.g. (1, 28, 28)"
    )


def summary(model: nn.Module, input_shape: Sequence[int] | None = None) -> ModelSummary:
    """A per-layer table like Keras' ``model.summary()``: shapes, parameters, MACs, RF.

    Runs one sample through the model in eval mode under ``no_grad`` and restores every
    submodule's mode afterwards, so no parameter, buffer (BatchNorm statistics) or mode
    changes. Also available as ``convkit.summary``.

    Args:
        model: Any model whose leaf layers run in order.
        input_shape: One sample's shape, e.g. ``(1, 28, 28)``; ``None`` (default): the
            model's own ``input_shape`` attribute (models from
            [`build_cnn`][convkit.build_cnn] have one).

    Returns:
        A [`ModelSummary`][convkit.shapes.ModelSummary]: ``print`` it, or read ``rows``.

    Raises:
        TypeError: If ``model`` isn't an ``nn.Module``, or ``input_shape`` is ``None``
            and the model has no ``input_shape``.
        ValueError: If ``input_shape`` isn't a sequence of positive ints.

    Examples:
        >>> from convkit import build_cnn
        >>> table = summary(build_cnn((1, 28, 28), 10, channels=(8,), hidden=()))
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
    shape = _summary_input_shape(model, input_shape)
    names = {module: name for name, module in model.named_modules()}
    records: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            records.append((module, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        infer_output_shape(model, shape)  # eval mode, no_grad, modes restored
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    spatial: list[nn.Module] = []
    on_path = set(_walk(model))  # not a residual block's shortcut, which runs beside
    for module, output in records:
        if isinstance(module, _SPATIAL) and module in on_path:
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
