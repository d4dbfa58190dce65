"""Where and how a run computes: the device, the numeric precision and the memory format.

``device="auto"`` picks CUDA, then MPS, then the CPU; in a ``torchrun`` launch it is the
process's own GPU (``LOCAL_RANK``). An explicit device that isn't there is an error
that says what is available, never a silent fallback to the CPU (which would turn a
2-minute GPU run into a 2-hour one without a word).

Precision and memory format are levers measured in ``benchmarks/`` (see the
Performance page for the figures).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..utils.typing import DeviceLike
from ..utils.validation import check_choice

__all__ = ["available_devices", "resolve_device"]

#: ``precision=`` values and the autocast dtype each means (``None``: plain float32).
PRECISIONS = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def launched() -> bool:
    """Whether this process is one of several (torchrun's variables, or a live group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``["cuda:0", "cuda:1", "cpu"]``.

    Examples:
        >>> "cpu" in available_devices()
        True
    """
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """Turn ``"auto"``, a device string or a ``torch.device`` into a usable ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA if available, else MPS, else CPU; in a ``torchrun``
            launch the GPU of ``LOCAL_RANK``), or an explicit ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"`` or ``torch.device``.

    Returns:
        The device. ``"cuda"`` without an index becomes the current CUDA device.

    Raises:
        ValueError: If the device doesn't exist on this machine (the message lists the
            available ones) or the string isn't a device.
        TypeError: If ``device`` is neither a string nor a ``torch.device``.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            if launched():  # one process per GPU
                local_rank = int(os.environ.get("LOCAL_RANK", "0"))
                return torch.device("cuda", local_rank % torch.cuda.device_count())
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available() and not launched():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            "Invalid type for argument `device`. Expected 'auto', a device string such as "
            f"'cpu' or 'cuda:0', or a torch.device. Received device={device!r}."
        )
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"Invalid value for argument `device`: {device!r} is not a device. Use 'auto' or "
            f"one of the available devices: {', '.join(available_devices())}."
        ) from err
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = (
            dev.index if dev.index is not None else (torch.cuda.current_device() if count else 0)
        )
        if index < count:
            return torch.device("cuda", index)
    elif dev.type == "mps" and _mps_available():
        return dev
    raise ValueError(
        f"Invalid value for argument `device`: {device!r} is not available on this machine. "
        f"Available: {', '.join(available_devices())} (or 'auto' to pick the best of them)."
    )


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype exact totals add up in on ``device``: float64, which MPS lacks."""
    return torch.float32 if device.type == "mps" else torch.float64


def _autocast_dtype(precision: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32)."""
    if isinstance(precision, int) and not isinstance(precision, bool) and precision in (16, 32):
        precision = "32" if precision == 32 else "16-mixed"  # Lightning's int spellings
    wrong_type = isinstance(precision, bool) or not isinstance(precision, (str, int))
    if wrong_type or precision not in PRECISIONS:
        raise (TypeError if wrong_type else ValueError)(
            f"Invalid {'type' if wrong_type else 'value'} for argument `precision`. Expected "
            "'32' (float32), 'bf16' (bfloat16 autocast) or '16-mixed' (float16 autocast with "
            f"loss scaling, CUDA only). Received precision={precision!r}"
            + (f" of type {type(precision).__name__}." if wrong_type else ".")
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


class Runtime:
    """The device, precision and memory format of one ``fit``/``evaluate``/``predict`` call.

    Args:
        model: The model; ``memory_format="auto"`` means ``channels_last`` when it holds
            2-D convolutions and runs on the CPU or CUDA, where that is measured faster.
        device: As ``fit`` takes it.
        precision: ``"32"``, ``"bf16"`` or ``"16-mixed"`` (and Lightning's spellings).
        memory_format: ``"auto"``, ``"channels_last"`` or ``"contiguous"``.
    """

    def __init__(
        self, model: nn.Module, device: DeviceLike, precision: Any, memory_format: Any
    ) -> None:
        self.device = resolve_device(device)
        self.autocast_dtype = _autocast_dtype(precision, self.device)
        check_choice("memory_format", memory_format, MEMORY_FORMATS)
        if memory_format == "auto":
            has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
            use_cl = has_conv and self.device.type in ("cpu", "cuda")
            memory_format = "channels_last" if use_cl else "contiguous"
        self.memory_format = (
            torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        )
        self.accumulator = accumulator_dtype(self.device)

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
