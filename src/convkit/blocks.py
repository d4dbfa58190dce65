"""Convolutional building blocks: ``ConvBlock`` and ``Flatten``.

``ConvBlock`` is conv -> norm -> act -> pool -> dropout in any order, an
``nn.Sequential`` with named children as torchvision's ``Conv2dNormActivation`` and
fastai's ``ConvLayer`` are, plus TensorFlow-style ``padding="same"`` that also works
for strided convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import (
    NORMS_2D,
    check_act,
    check_norm,
    check_pool,
    create_act,
    create_norm,
    create_pool,
)
from ._typing import IntOrPair, LayerSpec, Padding
from ._validation import (
    check_int_or_pair,
    check_positive_int,
    check_probability,
    parse_order,
)
from .shapes import conv_output_size, pool_output_size, same_padding

__all__ = ["ConvBlock", "Flatten"]

STAGES = ("conv", "norm", "act", "pool", "dropout")

# Public TorchScript predicates that torch's type stubs don't export.
_is_scripting: Callable[[], bool] = torch.jit.is_scripting  # type: ignore[attr-defined]
_is_tracing: Callable[[], bool] = torch.jit.is_tracing  # type: ignore[attr-defined]


class _GradInChannelsLast(torch.autograd.Function):
    """Identity; its backward hands the gradient back in ``channels_last``.

    Flattening a ``channels_last`` tensor copies it into NCHW order, and autograd then
    returns the gradient in NCHW order too. The layers before the flatten (BatchNorm,
    dropout, pooling) would get a ``channels_last`` input and an NCHW gradient, and mixed
    layouts send them to slow generic kernels: BatchNorm's backward was 3-6x slower on a
    CPU. One small copy of the gradient here keeps the whole backward pass in one layout.
    """

    generate_vmap_rule = True  # works under torch.func transforms (grad, vmap, jvp)

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        return input.view_as(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        try:
            return grad.contiguous(memory_format=torch.channels_last)
        except RuntimeError:  # torch.func.vmap can't restride (per-sample gradients)
            return grad

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        return tangent


class Flatten(nn.Flatten):
    """Flatten ``(N, C, H, W)`` to ``(N, C*H*W)``: ``torch.nn.Flatten`` from dim 1.

    A thin subclass, so that ``from convkit import Flatten`` sits beside the other
    blocks; it computes exactly what ``nn.Flatten`` computes, outputs and gradients.
    One difference, for speed only: flattening a ``channels_last`` ``(N, C, H, W)`` input
    to ``(N, C*H*W)``, the gradient flows back in ``channels_last`` as well
    (``nn.Flatten`` returns it in NCHW order, which sends the layers before it to slower
    mixed-layout kernels in the backward pass).

    Args:
        start_dim: First dimension to flatten (1 keeps the batch dimension).
        end_dim: Last dimension to flatten.

    Examples:
        >>> Flatten()(torch.zeros(8, 64, 4, 4)).shape
        torch.Size([8, 1024])
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__(start_dim=start_dim, end_dim=end_dim)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not _is_scripting():  # TorchScript can't hold an autograd.Function
            input = self._channels_last_grad(input)
        return input.flatten(self.start_dim, self.end_dim)

    @torch.jit.unused
    def _channels_last_grad(self, input: torch.Tensor) -> torch.Tensor:
        traced: object = input  # a Proxy under torch.fx.symbolic_trace: nothing to inspect
        if isinstance(traced, torch.fx.Proxy):
            return input
        if (
            input.requires_grad
            and not _is_tracing()  # nor in a torch.jit.trace graph
            and input.dim() == 4
            and (self.start_dim % 4, self.end_dim % 4) == (1, 3)  # (N, C*H*W): always a copy
            and not torch.compiler.is_compiling()  # compile chooses the backward's layouts
            and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last)
        ):
            return _GradInChannelsLast.apply(input)  # type: ignore[no-any-return]
        return input


class _AsymmetricPadConv2d(nn.Conv2d):
    """``nn.Conv2d`` after a fixed zero-pad ``(left, right, top, bottom)``.

    Used for ``padding="same"`` when the total padding is odd (even kernels), which
    ``nn.Conv2d``'s symmetric padding can't express. It is still an ``nn.Conv2d``, so
    its weights, ``state_dict`` keys and ``isinstance`` checks are the usual ones.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pad: tuple[int, int, int, int],
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, padding=0, **kwargs)
        self.pad = pad

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(input, self.pad))

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, pad={self.pad}"  # type: ignore[no-untyped-call]


def _resolve_padding(
    padding: Padding, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(before, after)`` zeros for height and for width."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            return (
                same_padding(kernel[0], dilation=dilation[0]),
                same_padding(kernel[1], dilation=dilation[1]),
            )
        raise ValueError(
            "Invalid value for argument `padding`. Expected 'same', 'valid', a non-negative "
            f"int or a pair of them. Received padding={padding!r}."
        )
    ph, pw = check_int_or_pair("padding", padding, allow_zero=True)
    return (ph, ph), (pw, pw)


class ConvBlock(nn.Sequential):
    """A 2-D convolution with optional norm, activation, pooling and dropout, in any order.

    The children are named ``conv``, ``norm``, ``act``, ``pool`` and ``dropout`` and
    appear in the order given by ``order``; a stage that is switched off (``norm=None``,
    ``act=None``, ``pool=None``, ``dropout=0``) is left out.

    Args:
        in_channels: Channels of the input, ``C_in``.
        out_channels: Channels produced by the convolution, ``C_out``.
        kernel_size: Kernel size, an int or ``(K_h, K_w)``.
        stride: Convolution stride, an int or a pair.
        padding: As in ``nn.Conv2d`` (an int or pair of zeros per side), ``"valid"``
            (no padding), or ``"same"``: the output is ``ceil(input / stride)`` for any
            kernel size, stride and dilation. ``"same"`` pads ``dilation*(K-1)`` zeros in
            all, symmetrically where that total is even; otherwise the extra zero goes
            to the bottom/right (as TensorFlow does) through a fixed ``F.pad``.
        dilation: Spacing between kernel taps, an int or a pair.
        groups: Blocked connections, as in ``nn.Conv2d``; must divide both channel counts.
        bias: Whether the convolution has a bias. ``None`` (default): no bias when the
            norm comes right after the conv (it subtracts the per-channel mean, which
            makes a bias redundant), a bias otherwise.
        norm: ``"batch"`` (``BatchNorm2d``), ``"group"`` (``GroupNorm`` with the largest
            group count <= 32 dividing the channels), ``"instance"`` (affine
            ``InstanceNorm2d``), ``"layer"`` (``GroupNorm(1, C)``), ``None``, or a callable
            ``num_channels -> nn.Module``. A norm placed before the conv in ``order``
            normalises ``in_channels``; after it, ``out_channels``.
        act: ``"relu"``, ``"leaky_relu"``, ``"gelu"``, ``"silu"``, ``"elu"``, ``"tanh"``,
            ``"sigmoid"``, ``None``, an ``nn.Module`` subclass, a zero-argument callable
            returning a module, or a module instance (copied). ``"relu"``,
            ``"leaky_relu"`` and ``"elu"`` run in place (as in torchvision) unless they
            are the block's first stage, where they would overwrite its input.
        pool: ``"max"``, ``"avg"`` or ``None``.
        pool_size: Pooling window, also used as its stride; an int or a pair.
        dropout: Probability in ``[0, 1)`` of zeroing a whole channel (``nn.Dropout2d``);
            0 leaves the stage out.
        order: Dash-separated stage names, each at most once, containing ``conv``, e.g.
            ``"conv-norm-act-pool-dropout"`` (default), the teaching notebook's
            ``"conv-pool-act-norm-dropout"``, or pre-activation ``"norm-act-conv"``.
            Every stage that is switched on must be listed.

    Attributes:
        in_channels: ``C_in``.
        out_channels: ``C_out``.

    Raises:
        ValueError: For a non-positive size, an unknown layer name, a bad ``order``,
            ``dropout`` outside ``[0, 1)``, or ``groups`` not dividing the channels.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> block = ConvBlock(1, 32, 5, padding="valid", pool="max",
        ...                   order="conv-pool-act-norm")
        >>> [name for name, _ in block.named_children()]
        ['conv', 'pool', 'act', 'norm']
        >>> block.conv
        Conv2d(1, 32, kernel_size=(5, 5), stride=(1, 1))
        >>> block(torch.zeros(8, 1, 28, 28)).shape
        torch.Size([8, 32, 12, 12])
        >>> ConvBlock(3, 16, 4, stride=2)(torch.zeros(1, 3, 15, 15)).shape
        torch.Size([1, 16, 8, 8])
    """

    in_channels: int
    out_channels: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair = 3,
        *,
        stride: IntOrPair = 1,
        padding: Padding = "same",
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        pool: str | None = None,
        pool_size: IntOrPair = 2,
        dropout: float = 0.0,
        order: str = "conv-norm-act-pool-dropout",
    ) -> None:
        # Validate everything before building anything.
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        kernel = check_int_or_pair("kernel_size", kernel_size)
        strides = check_int_or_pair("stride", stride)
        dilations = check_int_or_pair("dilation", dilation)
        check_positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                "Invalid value for argument `groups`. Expected a divisor of both "
                f"in_channels={in_channels} and out_channels={out_channels}. "
                f"Received groups={groups}."
            )
        pad_h, pad_w = _resolve_padding(padding, kernel, dilations)
        if bias is not None and not isinstance(bias, bool):
            raise TypeError(
                f"Invalid type for argument `bias`. Expected True, False or None. "
                f"Received bias={bias!r}."
            )
        check_norm("norm", norm, NORMS_2D)
        check_act("act", act)
        check_pool("pool", pool)
        pools = check_int_or_pair("pool_size", pool_size)
        p_drop = check_probability("dropout", dropout)
        stages = parse_order("order", order, STAGES, required="conv")
        enabled = {
            "conv": True,
            "norm": norm is not None,
            "act": act is not None,
            "pool": pool is not None,
            "dropout": p_drop > 0,
        }
        for stage, on in enabled.items():
            if on and stage not in stages:
                setting = {"norm": norm, "act": act, "pool": pool, "dropout": dropout}[stage]
                raise ValueError(
                    f"Invalid value for argument `order`: {stage}={setting!r} is switched on "
                    f"but {stage!r} is not in order={order!r}. Add {stage!r} to `order` or "
                    f"switch the stage off."
                )
        active = [stage for stage in stages if enabled[stage]]
        conv_at = active.index("conv")
        if bias is None:
            bias = not (conv_at + 1 < len(active) and active[conv_at + 1] == "norm")

        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self._kernel, self._stride, self._dilation = kernel, strides, dilations
        self._padding = (pad_h, pad_w)
        self._pool_size = pools if pool is not None else None

        for position, stage in enumerate(active):
            layer: nn.Module | None
            if stage == "conv":
                layer = self._make_conv(groups, bias)
            elif stage == "norm":
                channels = in_channels if position < conv_at else out_channels
                layer = create_norm("norm", norm, channels, NORMS_2D)
            elif stage == "act":
                # never in place as the first stage: it would overwrite the block's input
                layer = create_act("act", act, inplace=position > 0)
            elif stage == "pool":
                # a square window prints as nn.MaxPool2d(2) does: kernel_size=2
                layer = create_pool("pool", pool, pools[0] if pools[0] == pools[1] else pools)
            else:
                layer = nn.Dropout2d(p_drop)
            self.add_module(stage, layer)  # enabled stages always build a layer

    def _make_conv(self, groups: int, bias: bool) -> nn.Conv2d:
        (top, bottom), (left, right) = self._padding
        common: dict[str, Any] = {
            "kernel_size": self._kernel,
            "stride": self._stride,
            "dilation": self._dilation,
            "groups": groups,
            "bias": bias,
        }
        if top == bottom and left == right:
            return nn.Conv2d(self.in_channels, self.out_channels, padding=(top, left), **common)
        return _AsymmetricPadConv2d(
            self.in_channels, self.out_channels, pad=(left, right, top, bottom), **common
        )

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size ``(H_out, W_out)`` this block produces for an ``(H, W)`` input.

        Computed from the formulas in [`convkit.shapes`][convkit.shapes], without running
        the block. A value below 1 means the input is too small.

        Examples:
            >>> ConvBlock(1, 8, 5, padding="valid", pool="max").output_size((28, 28))
            (12, 12)
        """
        out = []
        for dim in range(2):
            length = conv_output_size(
                size[dim],
                self._kernel[dim],
                stride=self._stride[dim],
                padding=self._padding[dim],
                dilation=self._dilation[dim],
            )
            if self._pool_size is not None and length >= 1:
                length = pool_output_size(length, self._pool_size[dim])
            out.append(length)
        return out[0], out[1]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvBlock expected input of shape (N, {self.in_channels}, H, W); "
                f"received a tensor of shape {tuple(input.shape)}."
            )
        x = input
        for module in self:
            x = module(x)
        return x
