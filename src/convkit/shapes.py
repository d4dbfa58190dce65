"""Output-size, padding, parameter and cost formulas for convolution and pooling.

Each function is the formula that the theory page (理論解説) states, written as code
and checked against ``torch.nn`` layers by the tests. The output-size formulas follow
the "Shape" sections of PyTorch's ``nn.Conv2d`` and ``nn.MaxPool2d`` documentation.
"""

from __future__ import annotations

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
