"""The formulas of one layer along one spatial dimension: sizes, padding, parameters, cost.

Each function is a formula that the theory page (理論解説) states, written as code and
checked against ``torch.nn`` layers by the tests. The output sizes follow the "Shape"
sections of PyTorch's ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and
``nn.MaxPool1d/2d/3d`` documentation; TensorFlow's ``"SAME"`` padding follows its
``tf.nn.convolution`` documentation.
"""

from __future__ import annotations

from typing import Any

from ..utils.validation import check_groups, check_int_or_tuple, check_positive_int

__all__ = [
    "conv_macs",
    "conv_output_size",
    "conv_params",
    "conv_transpose_output_size",
    "pool_output_size",
    "same_padding",
    "tf_same_padding",
]


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


def padding_pairs(
    padding: str | int | tuple[int, ...], kernel: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` zeros per spatial dimension for a convolution's ``padding``:
    ``"valid"``, ``"same"`` ([`same_padding`][convkit.shapes.same_padding]), an int, or
    one int per dimension."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * len(kernel)
        if padding == "same":
            return tuple(same_padding(k, dilation=d) for k, d in zip(kernel, dilation, strict=True))
        raise ValueError(
            "Invalid value for argument `padding`. Expected 'same', 'valid', a non-negative "
            f"int or one per spatial dimension. Received padding={padding!r}."
        )
    pads = check_int_or_tuple("padding", padding, len(kernel), allow_zero=True)
    return tuple((p, p) for p in pads)


def tf_same_padding(
    size: int, kernel_size: int, *, stride: int = 1, dilation: int = 1
) -> tuple[int, int]:
    """Zeros ``(before, after)`` that TensorFlow's ``padding="SAME"`` adds along one dimension.

    ``P = max((ceil(size / S) - 1) * S + D(K - 1) + 1 - size, 0)`` in total, the smaller
    half before: the output is ``ceil(size / S)`` as with
    [`same_padding`][convkit.shapes.same_padding], but the total depends on the input
    size, so for ``S > 1`` the windows can sit one position apart from convkit's.

    Args:
        size: Input length.
        kernel_size: Kernel length ``K``.
        stride: Step ``S`` between windows.
        dilation: Spacing ``D`` between kernel taps.

    Returns:
        ``(before, after)``.

    Examples:
        >>> tf_same_padding(16, 3, stride=2), same_padding(3)
        ((0, 1), (1, 1))
        >>> tf_same_padding(15, 3, stride=2)
        (1, 1)
        >>> conv_output_size(16, 3, stride=2, padding=tf_same_padding(16, 3, stride=2))
        8
    """
    check_positive_int("size", size)
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    check_positive_int("dilation", dilation)
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel_size - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def conv_transpose_output_size(
    size: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Length of a transposed convolution's output along one spatial dimension.

    ``(size - 1) * S - 2P + D(K - 1) + P_out + 1``, as ``nn.ConvTranspose2d`` computes
    it. A convolution with the same ``K, S, P, D`` maps this length back to ``size``;
    ``output_padding`` (``P_out < max(S, D)``) chooses among the lengths it maps to
    ``size`` when ``S > 1``.

    Args:
        size: Input length.
        kernel_size: Kernel length ``K``.
        stride: Step ``S`` (the upsampling factor).
        padding: ``P``, taken off each side of the output: it undoes the ``padding`` of
            the matching convolution.
        output_padding: ``P_out``, added to one side of the output.
        dilation: Spacing ``D`` between kernel taps.

    Returns:
        The output length. A value below 1 means the input is too small for the layer.

    Raises:
        ValueError: If an argument is negative, a size, kernel, stride or dilation is 0,
            or ``output_padding`` is not below ``stride`` or ``dilation`` (torch refuses it).

    Examples:
        >>> conv_transpose_output_size(7, 4, stride=2, padding=1)
        14
        >>> conv_transpose_output_size(4, 3, stride=2, padding=1, output_padding=1)
        8
        >>> conv_output_size(8, 3, stride=2, padding=1)
        4
    """
    check_positive_int("size", size)
    check_positive_int("kernel_size", kernel_size)
    check_positive_int("stride", stride)
    check_positive_int("padding", padding, allow_zero=True)
    check_positive_int("output_padding", output_padding, allow_zero=True)
    check_positive_int("dilation", dilation)
    if output_padding >= max(stride, dilation):
        raise ValueError(
            "Invalid value for argument `output_padding`. Expected a value below stride or "
            f"dilation (it picks one of the {max(stride, dilation)} output lengths a strided "
            f"convolution maps to the same size), as torch requires. Received "
            f"output_padding={output_padding} with stride={stride}, dilation={dilation}."
        )
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


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
