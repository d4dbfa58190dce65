"""``SeparableConv``: a depthwise convolution followed by a pointwise (1x1) one.

The factorisation of MobileNet (Howard et al., 2017) and Xception (Chollet, 2017): a
``K x K`` convolution per channel (``groups=in_channels``) mixes space, a ``1 x 1``
convolution mixes channels. Against one dense ``K x K`` convolution it needs
``1 / out_channels + 1 / K**2`` of the weights and multiply-accumulates (with
``depth_multiplier=1``); [`convkit.shapes.summary`][convkit.shapes.summary] shows both
layers' parameters and MACs. Each half is a [`ConvBlock`][convkit.ConvBlock], so norms,
activations and ``padding="same"`` behave as there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..shapes import output_size as stack_output_size
from ..utils.typing import IntOrTuple, LayerSpec, Padding
from ..utils.validation import check_dims, check_positive_int
from .blocks import ConvBlock
from .create import CONV_NORMS, check_act, check_norm

__all__ = ["SeparableConv"]


class SeparableConv(nn.Sequential):
    """Depthwise ``K x K`` [`ConvBlock`][convkit.ConvBlock], then a pointwise ``1 x 1`` one.

    Children ``depthwise`` (``in_channels -> in_channels * depth_multiplier``,
    ``groups=in_channels``, with ``kernel_size``, ``stride``, ``padding``, ``dilation``)
    and ``pointwise`` (``-> out_channels``). The defaults give MobileNet's
    conv-BN-ReLU after each half; ``depthwise_norm=None, depthwise_act=None`` gives
    Xception's (and timm's ``SeparableConvNormAct``) single norm and activation after
    the pointwise conv.

    Args:
        in_channels: Channels of the input, ``C_in``.
        out_channels: Channels of the output, ``C_out``.
        kernel_size: Depthwise kernel size, an int or one per dimension.
        dims: Spatial dimensions, 1, 2 (default) or 3, as in
            [`ConvBlock`][convkit.ConvBlock].
        stride: Depthwise stride.
        padding: Depthwise padding, as in [`ConvBlock`][convkit.ConvBlock] (``"same"``
            for any stride by default).
        dilation: Depthwise dilation.
        depth_multiplier: Depthwise output channels per input channel.
        bias: For both convs, as in ``ConvBlock`` (``None``: no bias before a norm).
        norm: Norm after the pointwise conv (a ``ConvBlock`` norm spec).
        act: Activation after the pointwise conv (a ``ConvBlock`` act spec).
        depthwise_norm: Norm after the depthwise conv.
        depthwise_act: Activation after the depthwise conv.

    Attributes:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        dims: The number of spatial dimensions.

    Raises:
        ValueError: For non-positive sizes or unknown layer names.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> sep = SeparableConv(32, 64)
        >>> [name for name, _ in sep.named_children()]
        ['depthwise', 'pointwise']
        >>> sep.depthwise.conv.groups, sep(torch.zeros(2, 32, 16, 16)).shape
        (32, torch.Size([2, 64, 16, 16]))
        >>> dense = nn.Conv2d(32, 64, 3, bias=False).weight.numel()
        >>> separable = sep.depthwise.conv.weight.numel() + sep.pointwise.conv.weight.numel()
        >>> dense, separable
        (18432, 2336)
    """

    in_channels: int
    out_channels: int
    dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple = 3,
        *,
        dims: int = 2,
        stride: IntOrTuple = 1,
        padding: Padding = "same",
        dilation: IntOrTuple = 1,
        depth_multiplier: int = 1,
        bias: bool | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        depthwise_norm: LayerSpec = "batch",
        depthwise_act: LayerSpec = "relu",
    ) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("depth_multiplier", depth_multiplier)
        # The depthwise ConvBlock checks its own arguments before it builds anything; the
        # pointwise one's are checked here, so that nothing is built when they are bad.
        dims = check_dims(dims)
        check_norm("depthwise_norm", depthwise_norm, CONV_NORMS[dims], dims=dims)
        check_act("depthwise_act", depthwise_act)
        check_norm("norm", norm, CONV_NORMS[dims], dims=dims)
        check_act("act", act)
        mid = in_channels * depth_multiplier
        depthwise = ConvBlock(
            in_channels,
            mid,
            kernel_size,
            dims=dims,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=bias,
            norm=depthwise_norm,
            act=depthwise_act,
        )
        pointwise = ConvBlock(mid, out_channels, 1, dims=dims, bias=bias, norm=norm, act=act)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.depthwise = depthwise
        self.pointwise = pointwise

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the output for an input of spatial size ``size``.

        Examples:
            >>> SeparableConv(8, 16, stride=2).output_size((15, 15))
            (8, 8)
        """
        return stack_output_size(self, size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(input)  # (N, C_in, *size) -> (N, C_in * m, *size')
        return self.pointwise(x)  # type: ignore[no-any-return]  # -> (N, C_out, *size')
