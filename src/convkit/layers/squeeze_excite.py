"""``SqueezeExcite``: channel attention from globally pooled features.

Hu et al., "Squeeze-and-Excitation Networks" (2018), as torchvision's
``ops.SqueezeExcitation`` and timm's ``layers.SqueezeExcite`` build it: average over
the spatial positions, a bottleneck of two fully connected layers, a gate in
``[0, 1]`` per channel, and the input rescaled channel by channel. The squeeze is a mean
over every dimension after the channels, so one module serves 1-D, 2-D and 3-D inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..utils.typing import LayerSpec
from ..utils.validation import check_positive_int
from .create import check_act, create_act

__all__ = ["SqueezeExcite"]

#: Gate names: activations whose outputs lie in [0, 1].
GATES: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
}


def _check_gate(gate: LayerSpec) -> None:
    if isinstance(gate, str) and gate not in GATES:
        names = ", ".join(map(repr, GATES))
        raise ValueError(
            f"Invalid value for argument `gate`: unknown name {gate!r}. Valid names are "
            f"{names} (outputs in [0, 1]), an nn.Module subclass or a factory. "
            f"Received gate={gate!r}."
        )
    if gate is None:
        raise ValueError(
            "Invalid value for argument `gate`. Expected 'sigmoid', 'hard_sigmoid', an "
            "nn.Module subclass or a factory; a squeeze-excite block needs a gate. "
            "Received gate=None."
        )
    if not isinstance(gate, str):
        check_act("gate", gate)


def _create_gate(gate: LayerSpec) -> nn.Module:
    layer = create_act("gate", gate)
    if layer is None:  # _check_gate has ruled None out
        raise ValueError("Invalid value for argument `gate`. Received gate=None.")
    return layer


class SqueezeExcite(nn.Module):
    """Rescale each channel by a learned gate computed from the channel means.

    ``out = x * gate(fc2(act(fc1(mean(x)))))``, where the mean is over all positions of
    an ``(N, C, *spatial)`` input, ``fc1`` maps ``C`` to ``squeeze_channels`` and ``fc2``
    back to ``C``. The children are ``fc1``, ``act``, ``fc2`` and ``gate``; ``fc1`` and
    ``fc2`` are ``nn.Linear`` layers (a 1x1 convolution on a 1x1 map is the same map).

    Args:
        channels: Channels ``C`` of the input (and output).
        reduction: Reduction ratio: ``squeeze_channels = max(1, channels // reduction)``.
        squeeze_channels: The bottleneck width, instead of ``reduction``.
        act: Activation between ``fc1`` and ``fc2``: a name as in
            [`ConvBlock`][convkit.ConvBlock], an ``nn.Module`` subclass, a factory or an
            instance (copied).
        gate: ``"sigmoid"`` (default), ``"hard_sigmoid"``, an ``nn.Module`` subclass or a
            factory. The names give gates in ``[0, 1]``.

    Attributes:
        in_channels: ``C``.
        out_channels: ``C``.
        squeeze_channels: The bottleneck width.

    Raises:
        ValueError: For a non-positive size, an unknown name or ``gate=None``.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> se = SqueezeExcite(64, reduction=16)
        >>> se.squeeze_channels, [name for name, _ in se.named_children()]
        (4, ['fc1', 'act', 'fc2', 'gate'])
        >>> se(torch.randn(2, 64, 8, 8)).shape, se(torch.randn(2, 64, 20)).shape
        (torch.Size([2, 64, 8, 8]), torch.Size([2, 64, 20]))
    """

    in_channels: int
    out_channels: int
    squeeze_channels: int
    act: nn.Module | None
    gate: nn.Module

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        squeeze_channels: int | None = None,
        act: LayerSpec = "relu",
        gate: LayerSpec = "sigmoid",
    ) -> None:
        check_positive_int("channels", channels)
        check_positive_int("reduction", reduction)
        if squeeze_channels is None:
            squeeze_channels = max(1, channels // reduction)
        check_positive_int("squeeze_channels", squeeze_channels)
        check_act("act", act)
        _check_gate(gate)

        super().__init__()
        self.in_channels = self.out_channels = channels
        self.squeeze_channels = squeeze_channels
        self.fc1 = nn.Linear(channels, squeeze_channels)
        # fc1's output is a fresh tensor, so the activation may overwrite it
        self.act = create_act("act", act, inplace=True)
        self.fc2 = nn.Linear(squeeze_channels, channels)
        self.gate = GATES[gate]() if isinstance(gate, str) else _create_gate(gate)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 3 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"SqueezeExcite expected input of shape (N, {self.in_channels}, *spatial); "
                f"received a tensor of shape {tuple(input.shape)}."
            )
        spatial = tuple(range(2, input.dim()))
        scale = input.mean(dim=spatial)  # (N, C, *spatial) -> (N, C)
        scale = self.fc1(scale)  # (N, C) -> (N, squeeze_channels)
        if self.act is not None:
            scale = self.act(scale)
        scale = self.gate(self.fc2(scale))  # (N, C), each in [0, 1] for the named gates
        scale = scale.view(*scale.shape, *([1] * len(spatial)))  # (N, C) -> (N, C, 1, ...)
        out: torch.Tensor = input * scale
        return out
