"""Running a model without changing it: mode snapshots and side-effect-free dry runs.

Shared by the model side (``build_cnn`` infers its flattened size, ``shapes.summary``
records layer outputs) and the training side (``evaluate``/``predict`` run in eval mode,
the data checks read a model's output shape). It imports neither side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "infer_output_shape", "preserved_modes", "probe_tensor"]


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


def probe_tensor(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """One zero sample ``(1, *input_shape)`` on the model's device, in its float dtype."""
    tensor: torch.Tensor | None = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
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
