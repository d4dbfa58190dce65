"""Running a model without changing it: mode snapshots and side-effect-free dry runs.

Shared by the model side (``build_cnn`` infers its flattened size, ``shapes.summary``
records layer outputs) and the training side (``evaluate``/``predict`` run in eval mode,
the data checks read a model's output shape). It imports neither side.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "eval_mode",
    "infer_output_shape",
    "model_dtype_device",
    "preserved_modes",
    "probe_tensor",
]


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's own train/eval flag on exit (not just the root's)."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; each submodule's flag restored afterwards."""
    with preserved_modes(model):
        model.eval()
        yield


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The floating-point dtype ``model``'s inputs need, and the device it sits on.

    Read from its first floating-point parameter or buffer, else its first tensor of any
    kind (the device); a model with neither, such as ``nn.Flatten()``, takes float32 on
    the CPU.

    Examples:
        >>> model_dtype_device(nn.Linear(2, 2).double())
        (torch.float64, device(type='cpu'))
    """
    device: torch.device | None = None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
        device = device or tensor.device
    return torch.float32, device or torch.device("cpu")


def probe_tensor(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """One zero sample ``(1, *input_shape)`` on the model's device, in its float dtype."""
    dtype, device = model_dtype_device(model)
    return torch.zeros((1, *input_shape), device=device, dtype=dtype)


def infer_output_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample after ``model``, from a dry run that changes nothing.

    The run is in eval mode (BatchNorm reads its running statistics instead of updating
    them, dropout is off) under ``no_grad``, on one zero sample on the model's own device
    and dtype; every submodule's train/eval flag is restored afterwards. Errors raised by
    the model propagate unchanged: callers add their own context.

    Raises:
        ValueError: If the model doesn't return a tensor with a batch dimension.
    """
    probe = probe_tensor(model, input_shape)
    with eval_mode(model), torch.no_grad():
        output = model(probe)
    if not isinstance(output, torch.Tensor) or output.dim() < 1:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"The model must return a tensor of shape (N, ...); on an input of shape "
            f"{tuple(probe.shape)} it returned {got}."
        )
    return tuple(output.shape[1:])
