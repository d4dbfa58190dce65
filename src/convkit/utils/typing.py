"""Type aliases shared across convkit (one place, as in timm's ``layers/typing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

import torch
from torch import nn

#: An int, or one int per spatial dimension ``(height, width)``.
IntOrPair: TypeAlias = int | tuple[int, int]

#: An int, or one int per spatial dimension: ``(L,)``, ``(H, W)`` or ``(D, H, W)``.
IntOrTuple: TypeAlias = int | tuple[int, ...]

#: ``nn.Conv2d``'s padding (an int, or one per spatial dimension), plus convkit's
#: ``"same"`` (any stride) and ``"valid"``.
Padding: TypeAlias = str | int | tuple[int, ...]

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
        min_input_shape: Optional, not part of the protocol's check: ``None`` when the
            model takes only ``input_shape``; otherwise the smallest sample shape it takes
            (the same channels, any spatial size at least this large in every dimension),
            as a CNN with a global pooling head has. Read it with
            ``model_min_input_shape``.

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


def model_min_input_shape(model: object) -> tuple[int, ...] | None:
    """The model's ``min_input_shape`` when it declares a valid one, else ``None``.

    A model with one takes any sample with ``min_input_shape[0]`` channels whose spatial
    sizes are at least ``min_input_shape[1:]``, not only its ``input_shape``.
    """
    shape = getattr(model, "min_input_shape", None)
    if isinstance(shape, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        return tuple(shape)
    return None


def takes_sample_shape(model: object, sample: tuple[int, ...]) -> bool:
    """Whether ``model`` takes samples of shape ``sample``, by what it declares.

    ``True`` for a model without an ``input_shape``, for ``sample == input_shape``, and
    for a sample with the channels of ``min_input_shape`` and spatial sizes at least its.
    """
    shape = model_input_shape(model)
    if shape is None or tuple(sample) == shape:
        return True
    low = model_min_input_shape(model)
    return (
        low is not None
        and len(sample) == len(low)
        and sample[0] == low[0]
        and all(s >= m for s, m in zip(sample[1:], low[1:], strict=True))
    )
