"""Type aliases shared across convkit (one place, as in timm's ``layers/typing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

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
