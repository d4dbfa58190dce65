"""Finding a model's layers by name and recording their outputs with forward hooks.

Used by ``convkit.viz``. The hooks exist only inside ``recorded_outputs`` and are
removed on exit, also when the forward pass raises. Works for any ``nn.Module``: layers
are found by type and by name (``model.named_modules()``), never by attribute
conventions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..train.data import check_finite, convert
from ..utils.probe import model_dtype_device

__all__ = [
    "CONV_TYPES",
    "conv_blocks",
    "conv_layers",
    "recorded_outputs",
    "resolve_conv",
    "resolve_layer",
    "resolve_layers",
    "sample_batch",
]

#: The convolutions whose kernels, outputs and gradients convkit.viz knows how to read.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

NamedModule = tuple[str, nn.Module]
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def conv_layers(model: nn.Module) -> list[NamedModule]:
    """Every convolution of ``model`` (itself included), in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CONV_TYPES)]


def conv_blocks(model: nn.Module) -> list[NamedModule]:
    """The outermost blocks of ``model`` that hold a convolution, in registration order.

    A block is a submodule with its own ``forward`` (not the root, not a plain
    ``nn.Sequential``/``ModuleList``/``ModuleDict`` container, not a convolution itself)
    with a convolution somewhere inside; blocks nested in another block don't count.
    For ``build_cnn`` models these are the ``ConvBlock``s; with
    ``ResidualBlock``s (or torchvision's ResNet blocks), the residual blocks, whose
    output is after the skip connection. A model without such blocks (a flat
    ``nn.Sequential`` of layers) gets its convolutions.
    """
    blocks: list[NamedModule] = []
    for name, module in model.named_modules():  # parents before their children
        if not name or isinstance(module, CONV_TYPES) or type(module) in _CONTAINERS:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in blocks):
            continue
        if any(isinstance(m, CONV_TYPES) for m in module.modules()):
            blocks.append((name, module))
    return blocks or conv_layers(model)


def _valid_names(model: nn.Module) -> str:
    names = [name for name, _ in model.named_modules() if name]
    if len(names) <= 24:
        return ", ".join(names) or "none (the model has no submodules)"
    shown = [name for name, _ in conv_blocks(model)] + [name for name, _ in conv_layers(model)]
    return ", ".join(dict.fromkeys(shown)) + ", or any other name in model.named_modules()"


def resolve_layer(model: nn.Module, arg: str, layer: str | nn.Module) -> NamedModule:
    """``(name, module)`` for a submodule given by its name or by the module itself."""
    if isinstance(layer, str):
        for name, module in model.named_modules():
            if name == layer and name:
                return name, module
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected the name of one of the model's "
            f"layers. Received {arg}={layer!r}. Valid names: {_valid_names(model)}."
        )
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name or type(model).__name__, module
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected a submodule of the model or its "
            f"name. Received a {type(layer).__name__} that is not part of it. Valid names: "
            f"{_valid_names(model)}."
        )
    raise TypeError(
        f"Invalid type for argument `{arg}`. Expected a layer name (str) or an nn.Module. "
        f"Received {arg}={layer!r} of type {type(layer).__name__}."
    )


def resolve_layers(
    model: nn.Module, arg: str, layers: str | nn.Module | Sequence[str | nn.Module] | None
) -> list[NamedModule]:
    """Several layers by name or module; ``None`` means the conv blocks."""
    if layers is None:
        return conv_blocks(model)
    if isinstance(layers, (str, nn.Module)):
        return [resolve_layer(model, arg, layers)]
    if not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected a layer name, an nn.Module, a "
            f"non-empty list of them, or None. Received {arg}={layers!r}."
        )
    return [resolve_layer(model, arg, layer) for layer in layers]


def resolve_conv(model: nn.Module, arg: str, layer: str | nn.Module | None) -> tuple[str, Conv]:
    """A convolution: the named one, the only one inside a named block, or the first."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected a model with a convolution "
            f"(nn.Conv1d/2d/3d). Received a {type(model).__name__} without one."
        )
    if layer is None:
        return convs[0][0], cast(Conv, convs[0][1])
    name, module = resolve_layer(model, arg, layer)
    if isinstance(module, CONV_TYPES):
        return name, module
    inner = [(f"{name}.{n}", m) for n, m in module.named_modules() if isinstance(m, CONV_TYPES)]
    if len(inner) == 1:
        return inner[0]
    raise ValueError(
        f"Invalid value for argument `{arg}`. Expected a convolution or a block holding "
        f"exactly one. Received {arg}={name!r}, a {type(module).__name__}. Convolutions: "
        f"{', '.join(n for n, _ in convs)}."
    )


def _record(outputs: dict[str, torch.Tensor], name: str) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return None
        outputs[name] = output
        # Later layers get a copy: an in-place activation after this layer must not
        # overwrite the recorded values (or their place in the autograd graph).
        return output.clone()

    return hook


@contextlib.contextmanager
def recorded_outputs(layers: Sequence[NamedModule]) -> Iterator[dict[str, torch.Tensor]]:
    """``{name: output}`` of each layer for the forward passes run inside the block.

    The outputs keep their autograd history (for Grad-CAM); the hooks are removed on
    exit, whether the block finishes or raises.
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, module in layers:
            handles.append(module.register_forward_hook(_record(outputs, name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _spatial_dims(model: nn.Module) -> int:
    convs = conv_layers(model)
    if not convs:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model with a convolution "
            f"(nn.Conv1d/2d/3d). Received a {type(model).__name__} without one."
        )
    return {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[
        next(t for t in CONV_TYPES if isinstance(convs[0][1], t))
    ]


def sample_batch(model: nn.Module, x: Any, *, single: bool) -> torch.Tensor:
    """``x`` as a batch on the model's device and float dtype, after checking its shape.

    ``x`` is one sample ``(C, *spatial)`` or a batch ``(N, C, *spatial)``, where the
    number of spatial dimensions is that of the model's first convolution; with
    ``single`` the batch must hold one sample.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            "Invalid type for argument `x`. Expected a tensor, e.g. one image of shape "
            f"(C, H, W). Received {type(x).__name__}."
        )
    dims = _spatial_dims(model)
    sample = "(C, " + ", ".join(["L"] if dims == 1 else ["D", "H", "W"][3 - dims :]) + ")"
    batch: torch.Tensor = x.unsqueeze(0) if x.dim() == dims + 1 else x
    if batch.dim() != dims + 2 or (single and len(batch) != 1) or len(batch) == 0:
        expected = f"one sample {sample}" + ("" if single else f" or a batch (N, {sample[1:]}")
        raise ValueError(
            f"Invalid value for argument `x`. Expected {expected}. Received a tensor of "
            f"shape {tuple(x.shape)}."
        )
    if not (batch.is_floating_point() or batch.dtype == torch.uint8):
        raise TypeError(
            f"Invalid value for argument `x`: a tensor of dtype {batch.dtype}. Expected "
            "floating-point inputs or uint8 images; convert it, e.g. x.float()."
        )
    dtype, device = model_dtype_device(model)
    batch, _ = convert(batch, None, dtype)  # uint8 images scaled to [0, 1], as fit does
    check_finite("x", batch)
    return batch.to(device)
