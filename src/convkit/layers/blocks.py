"""Convolutional building blocks: ``ConvBlock`` and ``Flatten``.

``ConvBlock`` is conv -> norm -> act -> pool -> dropout in any order, in 1, 2 or 3
spatial dimensions, an ``nn.Sequential`` with named children as torchvision's
``Conv2dNormActivation`` and fastai's ``ConvLayer`` are (MONAI's ``Convolution`` takes
``spatial_dims`` the same way), plus a static ``padding="same"`` that also works for
strided convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..shapes import output_size as stack_output_size
from ..shapes.formulas import padding_pairs
from ..utils.typing import IntOrTuple, LayerSpec, Padding
from ..utils.validation import (
    check_dims,
    check_groups,
    check_int_or_tuple,
    check_optional_bool,
    check_positive_int,
    check_probability,
    parse_order,
)
from .create import (
    CONV_NORMS,
    DROPOUTS,
    check_act,
    check_norm,
    check_pool,
    create_act,
    create_conv,
    create_norm,
    create_pool,
)

__all__ = ["ConvBlock", "Flatten"]

STAGES = ("conv", "norm", "act", "pool", "dropout")

#: Stages that always return a new tensor, which an in-place activation may overwrite.
_FRESH = frozenset({"conv", "pool"})


class Flatten(nn.Flatten):
    """Flatten ``(N, C, H, W)`` to ``(N, C*H*W)``: ``torch.nn.Flatten`` from dim 1.

    A thin subclass, so that ``from convkit import Flatten`` sits beside the other
    blocks; it computes exactly what ``nn.Flatten`` computes, outputs and gradients.

    Args:
        start_dim: First dimension to flatten (1 keeps the batch dimension).
        end_dim: Last dimension to flatten.

    Examples:
        >>> Flatten()(torch.zeros(8, 64, 4, 4)).shape
        torch.Size([8, 1024])
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__(start_dim=start_dim, end_dim=end_dim)


#: How each number of spatial dimensions names its sizes in messages.
_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def check_block_input(block: Any, input: torch.Tensor) -> None:
    """Raise unless ``input`` is ``(N, block.in_channels, *spatial)`` with ``block.dims``
    spatial dimensions, naming the full input shape."""
    if input.dim() != block.dims + 2 or input.shape[1] != block.in_channels:
        raise ValueError(
            f"{type(block).__name__} expected input of shape (N, {block.in_channels}, "
            f"{_SPATIAL_NAMES[block.dims]}); received a tensor of shape {tuple(input.shape)}."
        )


def _active_stages(order: str, settings: dict[str, Any]) -> list[str]:
    """The stages of ``order`` that are switched on; every switched-on stage must be listed.

    ``settings`` maps each optional stage to its argument's value and whether it is on.
    """
    stages = parse_order("order", order, STAGES, required="conv")
    for stage, (value, on) in settings.items():
        if on and stage not in stages:
            raise ValueError(
                f"Invalid value for argument `order`: {stage}={value!r} is switched on "
                f"but {stage!r} is not in order={order!r}. Add {stage!r} to `order` or "
                f"switch the stage off."
            )
    return [stage for stage in stages if stage == "conv" or settings[stage][1]]


class ConvBlock(nn.Sequential):
    """A convolution with optional norm, activation, pooling and dropout, in any order.

    The children are named ``conv``, ``norm``, ``act``, ``pool`` and ``dropout`` and
    appear in the order given by ``order``; a stage that is switched off (``norm=None``,
    ``act=None``, ``pool=None``, ``dropout=0``) is left out. ``dims`` chooses 1-D, 2-D
    or 3-D layers (``nn.Conv1d``/``BatchNorm1d``/``MaxPool1d``/``Dropout1d`` and so on).

    Args:
        in_channels: Channels of the input, ``C_in``.
        out_channels: Channels produced by the convolution, ``C_out``.
        kernel_size: Kernel size, an int or one int per spatial dimension.
        dims: Spatial dimensions: 1 for ``(N, C, L)`` sequences, 2 (default) for
            ``(N, C, H, W)`` images, 3 for ``(N, C, D, H, W)`` volumes.
        stride: Convolution stride, an int or one per dimension.
        padding: As in ``nn.Conv2d`` (an int, or one per dimension, of zeros on each
            side), ``"valid"`` (no padding), or ``"same"``: the output is
            ``ceil(input / stride)`` for any kernel size, stride and dilation. ``"same"``
            pads ``dilation * (K - 1)`` zeros in all per dimension, whatever the stride
            and the input size, symmetrically where that total is even; otherwise the
            extra zero goes after (bottom/right) through a fixed ``F.pad``. For stride 1
            this is exactly ``nn.Conv2d(padding="same")``. It is not TensorFlow's
            ``"SAME"`` for stride > 1: TensorFlow pads
            ``max((ceil(H / S) - 1) * S + D(K - 1) + 1 - H, 0)`` in total, which depends
            on the input size, so the two can place the windows differently (for
            ``H=16, K=3, S=2`` TensorFlow pads ``(0, 1)``, convkit ``(1, 1)``).
        dilation: Spacing between kernel taps, an int or one per dimension.
        groups: Blocked connections, as in ``nn.Conv2d``; must divide both channel counts.
        bias: Whether the convolution has a bias. ``None`` (default): no bias when the
            norm comes right after the conv (it subtracts the per-channel mean, which
            makes a bias redundant), a bias otherwise.
        norm: ``"batch"`` (``BatchNorm{dims}d``), ``"group"`` (``GroupNorm`` with the
            largest group count <= 32 dividing the channels), ``"instance"`` (affine
            ``InstanceNorm{dims}d``), ``"layer"`` (``GroupNorm(1, C)``), ``None``, or a
            callable ``num_channels -> nn.Module``. A norm placed before the conv in
            ``order`` normalises ``in_channels``; after it, ``out_channels``.
        act: ``"relu"``, ``"leaky_relu"``, ``"gelu"``, ``"silu"``, ``"elu"``, ``"tanh"``,
            ``"sigmoid"``, ``None``, an ``nn.Module`` subclass, a zero-argument callable
            returning a module, or a module instance (copied); not a function applied to
            tensors such as ``torch.relu``. ``"relu"``, ``"leaky_relu"`` and ``"elu"``
            run in place (as in torchvision) after a conv, a pool or a named norm, which
            make a new tensor; anywhere else (first, or after dropout, which returns its
            input itself in eval mode) they would overwrite the block's input, so there
            they run out of place, and so does an in-place module you pass.
        pool: ``"max"``, ``"avg"`` or ``None``.
        pool_size: Pooling window, also used as its stride; an int or one per dimension.
        dropout: Probability in ``[0, 1)`` of zeroing a whole channel
            (``nn.Dropout{dims}d``); 0 leaves the stage out.
        order: Dash-separated stage names, each at most once, containing ``conv``, e.g.
            ``"conv-norm-act-pool-dropout"`` (default), ``"conv-pool-act-norm-dropout"``,
            or pre-activation ``"norm-act-conv"``. Every stage that is switched on must
            be listed.

    Attributes:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        dims: The number of spatial dimensions.

    Raises:
        ValueError: For a non-positive size, ``dims`` not 1, 2 or 3, an unknown layer
            name, a norm class for another number of dimensions, a bad ``order``,
            ``dropout`` outside ``[0, 1)``, or ``groups`` not dividing the channels.
        TypeError: For arguments of the wrong type, or an activation function applied to
            tensors (``torch.relu``) instead of a layer.

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
        >>> ConvBlock(28, 16, dims=1, pool="max")(torch.zeros(8, 28, 28)).shape
        torch.Size([8, 16, 14])
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
        groups: int = 1,
        bias: bool | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        pool: str | None = None,
        pool_size: IntOrTuple = 2,
        dropout: float = 0.0,
        order: str = "conv-norm-act-pool-dropout",
    ) -> None:
        # Validate everything before building anything.
        dims = check_dims(dims)
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        conv_args: dict[str, Any] = {
            "kernel_size": check_int_or_tuple("kernel_size", kernel_size, dims),
            "stride": check_int_or_tuple("stride", stride, dims),
            "dilation": check_int_or_tuple("dilation", dilation, dims),
            "groups": check_groups(in_channels, out_channels, groups),
        }
        pads = padding_pairs(padding, conv_args["kernel_size"], conv_args["dilation"])
        check_optional_bool("bias", bias, "no bias when a norm follows the conv")
        check_norm("norm", norm, CONV_NORMS[dims], dims=dims)
        check_act("act", act)
        check_pool("pool", pool)
        pools = check_int_or_tuple("pool_size", pool_size, dims)
        p_drop = check_probability("dropout", dropout)
        active = _active_stages(
            order,
            {
                "norm": (norm, norm is not None),
                "act": (act, act is not None),
                "pool": (pool, pool is not None),
                "dropout": (dropout, p_drop > 0),
            },
        )
        conv_at = active.index("conv")
        if bias is None:
            bias = active[conv_at + 1 : conv_at + 2] != ["norm"]

        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        for position, stage in enumerate(active):
            layer: nn.Module | None
            if stage == "conv":
                layer = create_conv(in_channels, out_channels, padding=pads, bias=bias, **conv_args)
            elif stage == "norm":
                channels = in_channels if position < conv_at else out_channels
                layer = create_norm("norm", norm, channels, CONV_NORMS[dims])
            elif stage == "act":
                # in place only on a tensor the block made: dropout in eval mode and a
                # norm of your own may return their input itself
                fresh = _FRESH.intersection(active[:position]) or (
                    "norm" in active[:position] and isinstance(norm, str)
                )
                layer = create_act("act", act, inplace=bool(fresh))
            elif stage == "pool":
                layer = create_pool("pool", pool, pools)
            else:
                layer = DROPOUTS[dims](p_drop)
            self.add_module(stage, layer)  # enabled stages always build a layer

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size this block produces for an input of spatial size ``size``.

        Computed from the formulas in [`convkit.shapes`][convkit.shapes] for the block's
        own layers in their ``order``, without running the block. A value below 1 means
        the input is too small.

        Args:
            size: One int per spatial dimension: ``(L,)``, ``(H, W)`` or ``(D, H, W)``.

        Examples:
            >>> ConvBlock(1, 8, 5, padding="valid", pool="max").output_size((28, 28))
            (12, 12)
            >>> ConvBlock(1, 8, 3, padding="valid", pool="max",
            ...           order="pool-conv-norm-act").output_size((7, 7))
            (1, 1)
        """
        return stack_output_size(self, size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_block_input(self, input)
        x = input
        for module in self:
            x = module(x)
        return x
