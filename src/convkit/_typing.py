"""Type aliases shared across convkit (one place, as in timm's ``layers/typing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

import torch
from torch import nn

#: An int, or one int per spatial dimension ``(height, width)``.
IntOrPair: TypeAlias = int | tuple[int, int]

#: ``nn.Conv2d``'s padding, plus convkit's ``"same"`` (any stride) and ``"valid"``.
Padding: TypeAlias = str | int | tuple[int, int]

#: A layer given by name, by class, by factory or switched off with ``None``.
LayerSpec: TypeAlias = str | type[nn.Module] | Callable[..., nn.Module] | nn.Module | None

#: Anything accepted as a device: ``"auto"``, ``"cpu"``, ``"cuda:1"``, ``torch.device``...
DeviceLike: TypeAlias = str | torch.device

#: ``(outputs, targets) -> scalar tensor`` (the mean over the batch).
MetricFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class DescribedModel(Protocol):
    """Optional attributes a model may carry; the training loops read them when present.

    Every attribute is optional: ``fit``, ``evaluate`` and ``predict`` work with any
    ``nn.Module``. A model that has them (every [`CNN`][convkit.CNN] from
    [`build_cnn`][convkit.build_cnn] does) gets earlier, clearer errors.

    Attributes:
        input_shape: The shape of one sample, without the batch dimension, e.g.
            ``(1, 28, 28)``; batches of another shape are refused before training, and
            ``predict`` accepts a single sample of this shape.
        num_classes: The number of outputs of a classifier; class-index targets outside
            ``[0, num_classes)`` are refused before training.

    Examples:
        >>> from convkit import build_cnn
        >>> isinstance(build_cnn((1, 28, 28), 10), DescribedModel)
        True
    """

    input_shape: tuple[int, ...]
    num_classes: int


def model_input_shape(model: object) -> tuple[int, ...] | None:
    """The model's ``input_shape`` when it declares a valid one, else ``None``."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        return tuple(shape)
    return None


def model_num_classes(model: object) -> int | None:
    """The model's ``num_classes`` when it declares a positive int, else ``None``."""
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0:
        return classes
    return None
