"""How a loop runs on its device: numeric precision and memory format.

Both are levers measured in ``benchmarks/`` (see the Performance page for the figures).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_precision(precision: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32)."""
    if isinstance(precision, int) and not isinstance(precision, bool) and precision in (16, 32):
        precision = "32" if precision == 32 else "16-mixed"  # Lightning's int spellings
    if not isinstance(precision, (str, int)) or isinstance(precision, bool):
        raise TypeError(
            "Invalid type for argument `precision`. Expected '32' (float32), 'bf16' "
            "(bfloat16 autocast) or '16-mixed' (float16 autocast with loss scaling, CUDA "
            f"only). Received precision={precision!r} of type {type(precision).__name__}."
        )
    if precision not in PRECISIONS:
        raise ValueError(
            "Invalid value for argument `precision`. Expected '32' (float32), 'bf16' "
            "(bfloat16 autocast) or '16-mixed' (float16 autocast with loss scaling, CUDA "
            f"only). Received precision={precision!r}."
        )
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(
            f"Invalid value for argument `precision`: '16-mixed' needs a CUDA device (it uses "
            f"a GradScaler); the device is {device}. Use precision='bf16' on {device.type}, "
            "or '32'."
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"Invalid value for argument `precision`: {device} does not support bfloat16. "
            "Use precision='16-mixed' or '32'."
        )
    return dtype


def resolve_memory_format(
    memory_format: Any, model: nn.Module, device: torch.device
) -> torch.memory_format:
    """``"auto"``: ``channels_last`` for models with 2-D convolutions on CPU and CUDA."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            "Invalid value for argument `memory_format`. Expected 'auto', 'channels_last' or "
            f"'contiguous'. Received memory_format={memory_format!r}."
        )
    if memory_format == "channels_last":
        return torch.channels_last
    if memory_format == "contiguous":
        return torch.contiguous_format
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    use_cl = has_conv and device.type in ("cpu", "cuda")
    return torch.channels_last if use_cl else torch.contiguous_format


@dataclass
class Runtime:
    """Device, memory format and precision of one ``fit``/``evaluate``/``predict`` call."""

    device: torch.device
    memory_format: torch.memory_format
    autocast_dtype: torch.dtype | None

    @classmethod
    def create(
        cls, model: nn.Module, device: torch.device, precision: Any, memory_format: Any
    ) -> Runtime:
        return cls(
            device,
            resolve_memory_format(memory_format, model, device),
            check_precision(precision, device),
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.autocast_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def format(self, inputs: torch.Tensor) -> torch.Tensor:
        """Inputs in the run's memory format (a no-op when they already are)."""
        if inputs.dim() == 4 and self.memory_format is torch.channels_last:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def place(self, model: nn.Module, *, memory_format: bool = True) -> None:
        """Move the model to the device (in place, like ``model.to``), and to the memory
        format too unless ``memory_format=False`` (inference keeps the model's layout and
        formats only the inputs)."""
        model.to(self.device)
        if memory_format:
            model.to(memory_format=self.memory_format)
