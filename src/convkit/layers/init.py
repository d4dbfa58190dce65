"""Weight initialisation schemes for convkit models: ``init_weights``.

``"torch"`` keeps PyTorch's defaults; ``"kaiming"`` is He et al. (2015) normal init in
``fan_out`` mode for every convolution, as torchvision's ResNet does; ``"zero_last"``
adds the zero-initialised last norm of each residual branch from Goyal et al.,
"Accurate, Large Minibatch SGD" (2017), popularised by He et al., "Bag of Tricks"
(2019), so that every residual block starts out as its shortcut.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..shapes import torch_layers as T

__all__ = ["INITS", "ZeroInitLast", "init_weights"]

INITS = ("torch", "kaiming", "zero_last")
"""The accepted values of ``init=`` (``build_cnn``, ``ResidualBlock``, ``init_weights``):
``"torch"`` keeps PyTorch's own initialisation, ``"kaiming"`` draws the convolutions'
weights with He et al.'s normal initialisation for ReLU (``nn.Linear`` layers keep
theirs) and sets the norms to weight 1, bias 0, and ``"zero_last"`` does that and also
zeroes the last norm's scale in each residual branch, so a block starts as its shortcut
(Goyal et al., 2017)."""

_CONVS = tuple(T.CONV.values())
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@runtime_checkable
class ZeroInitLast(Protocol):
    """A block whose residual branch can start at zero (``init="zero_last"``).

    [`ResidualBlock`][convkit.ResidualBlock] implements it: ``zero_init_last`` zeroes
    the scale of the last norm in the branch (or the last conv's weight where no norm
    ends the branch, as in pre-activation blocks).

    Examples:
        >>> from convkit import ResidualBlock
        >>> isinstance(ResidualBlock(8, 8), ZeroInitLast)
        True
    """

    def zero_init_last(self) -> None:
        """Make the residual branch output zeros."""


def check_init(init: object) -> str:
    """Return ``init`` if it names a scheme in ``INITS``, else raise."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(
            f"Invalid value for argument `init`. Expected one of {', '.join(map(repr, INITS))}. "
            f"Received init={init!r}."
        )
    return init


def init_weights(module: nn.Module, init: str = "kaiming") -> nn.Module:
    """Initialise ``module``'s weights in place with the scheme ``init``; return it.

    | ``init`` | convolutions | norms | residual branches |
    | --- | --- | --- | --- |
    | ``"torch"`` | unchanged | unchanged | unchanged |
    | ``"kaiming"`` | ``kaiming_normal_(fan_out, relu)``, bias 0 | weight 1, bias 0 | — |
    | ``"zero_last"`` | as ``"kaiming"`` | as ``"kaiming"`` | last norm's weight 0 |

    ``nn.Linear`` layers keep their initialisation, as in torchvision's ResNet.

    Args:
        module: Any model; the scheme reaches every submodule.
        init: ``"torch"``, ``"kaiming"`` or ``"zero_last"``.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: For an unknown ``init``.
        TypeError: If ``module`` is not an ``nn.Module``.

    Examples:
        >>> from convkit import ResidualBlock
        >>> block = init_weights(ResidualBlock(8, 8), "zero_last")
        >>> block.conv2.norm.weight.count_nonzero().item()
        0
    """
    check_init(init)
    if not isinstance(module, nn.Module):
        raise TypeError(
            "Invalid type for argument `module`. Expected an nn.Module. "
            f"Received {type(module).__name__}."
        )
    if init == "torch":
        return module
    for layer in module.modules():
        if isinstance(layer, _CONVS):
            conv: Any = layer
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        elif isinstance(layer, _NORMS) and layer.weight is not None:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    if init == "zero_last":
        for layer in module.modules():
            if isinstance(layer, ZeroInitLast):
                layer.zero_init_last()
    return module
