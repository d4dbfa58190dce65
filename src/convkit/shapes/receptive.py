"""Where one output unit's receptive field lies in the input, for a chain of 2-D layers.

Its size is [`shapes.receptive_field`][convkit.shapes.receptive_field]'s; its position
follows the layers back from the output unit: a unit at ``i`` of a layer with stride
``S`` and ``P`` zeros before the input starts at input index ``i * S - P``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from . import receptive_field

__all__ = ["SPATIAL_2D", "layers_up_to", "region", "region_start"]

#: The layers that move or widen a receptive field (as in ``shapes.receptive_field``).
SPATIAL_2D = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_OTHER_DIMS = (nn.Conv1d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d)


def layers_up_to(model: nn.Module, name: str) -> list[nn.Module]:
    """The 2-D conv and pooling layers of ``model`` up to the end of layer ``name``.

    In registration order, which is the order of computation for chains of layers.

    Raises:
        ValueError: If one of them is 1-D or 3-D.
    """
    named = list(model.named_modules())
    end = max(i for i, (n, _) in enumerate(named) if n == name or n.startswith(f"{name}."))
    others = [n for n, m in named[: end + 1] if isinstance(m, _OTHER_DIMS)]
    if others:
        raise ValueError(
            "Invalid value for argument `model`. Expected 2-D convolutions and pooling for a "
            f"receptive-field plot. Received a model with 1-D/3-D layers: {', '.join(others)}."
        )
    return [m for _, m in named[: end + 1] if isinstance(m, SPATIAL_2D)]


def _pad_before(layer: nn.Module, dim: int) -> int:
    """Zeros added before the input along ``dim`` (0: height, 1: width)."""
    explicit = getattr(layer, "padding_per_dim", None)  # a conv after a fixed zero pad
    if explicit is not None:
        return explicit[dim][0]  # type: ignore[no-any-return]
    padding: Any = layer.padding
    if padding == "valid":
        return 0
    if padding == "same":  # PyTorch puts the smaller half before
        kernel: Any = layer.kernel_size
        dilation: Any = layer.dilation
        return int(dilation[dim] * (kernel[dim] - 1) // 2)
    return int(padding if isinstance(padding, int) else padding[dim])


def _stride(layer: nn.Module, dim: int) -> int:
    stride: Any = layer.stride if layer.stride is not None else layer.kernel_size
    return int(stride if isinstance(stride, int) else stride[dim])


def region_start(layers: Sequence[nn.Module], position: tuple[int, int]) -> tuple[int, int]:
    """Input row and column where the receptive field of the unit at ``position`` starts.

    Negative values (and fields running past the far edge) reach into the padding.
    """
    start = list(position)
    for layer in reversed(layers):
        for dim in range(2):
            start[dim] = start[dim] * _stride(layer, dim) - _pad_before(layer, dim)
    return start[0], start[1]


def region(layers: Sequence[nn.Module], position: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the unit's receptive field, in input pixels."""
    height, width = receptive_field(list(layers))
    top, left = region_start(layers, position)
    return top, left, height, width
