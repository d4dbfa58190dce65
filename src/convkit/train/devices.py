"""Device selection: ``"auto"`` picks CUDA, then MPS, then the CPU.

An explicit device that isn't there is an error that says what is available, never a
silent fallback to the CPU (which would turn a 2-minute GPU run into a 2-hour one
without a word).
"""

from __future__ import annotations

import torch

from ..utils.typing import DeviceLike

__all__ = ["available_devices", "resolve_device"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


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
        device: ``"auto"`` (CUDA if available, else MPS, else CPU), or an explicit
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``torch.device``.

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
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
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
