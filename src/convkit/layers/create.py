"""Name -> layer lookup for convolutions, norms, activations, pooling and dropout.

One small table per kind, after timm's ``create_act.py``; which torch class serves each
number of spatial dimensions (1, 2 or 3) is read from the one table of them,
``convkit.shapes.torch_layers``. Every resolver accepts a
name, a class or factory, or ``None`` (the stage is switched off), and an unknown name
raises a ``ValueError`` that lists the valid ones.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..shapes import torch_layers as T
from ..utils.typing import LayerSpec

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

# Activations whose backward reads only their output, so they can overwrite their input
# and save one tensor of memory traffic per call (see the Performance page).
INPLACE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu"})


def _group_norm(num_channels: int) -> nn.Module:
    # The largest group count <= 32 that divides the channels (32 is the GroupNorm
    # paper's default; fewer channels than that get fewer groups, never an error).
    groups = max(g for g in range(1, min(32, num_channels) + 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


def _conv_norms(
    batch: Callable[[int], nn.Module], instance: type[nn.Module]
) -> dict[str, Callable[[int], nn.Module]]:
    return {
        "batch": batch,
        "group": _group_norm,
        # affine=True: a norm inside a block should be learnable like the others.
        "instance": lambda c: instance(c, affine=True),
        "layer": lambda c: nn.GroupNorm(1, c),
    }


#: Norms over the channels of a ``dims``-D feature map ``(N, C, *spatial)``.
CONV_NORMS: dict[int, dict[str, Callable[[int], nn.Module]]] = {
    dims: _conv_norms(T.BATCH_NORM[dims], T.INSTANCE_NORM[dims]) for dims in T.CONV
}

#: Norms over the features of a fully connected layer's output ``(N, F)``.
FEATURE_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}

#: Pooling by name, per number of spatial dimensions.
POOLS: dict[int, dict[str, type[nn.Module]]] = {
    dims: {"max": T.MAX_POOL[dims], "avg": T.AVG_POOL[dims]} for dims in T.CONV
}

#: Dropout of whole channels, per number of spatial dimensions.
DROPOUTS = T.DROPOUT

# torch's norms that only accept inputs with a given number of spatial dimensions.
_DIM_BOUND_NORMS: dict[type[nn.Module], tuple[int, str]] = {
    **{cls: (dims, "batch") for dims, cls in T.BATCH_NORM.items()},
    **{cls: (dims, "instance") for dims, cls in T.INSTANCE_NORM.items()},
}


class AsymmetricPad:
    """Mixin for a convolution that zero-pads its input by a fixed ``pad`` first.

    Used for ``padding="same"`` when a total padding is odd (even kernels), which the
    symmetric ``padding`` of ``nn.Conv1d/2d/3d`` can't express. The layer is still an
    ``nn.ConvNd``, so its weights, ``state_dict`` keys and ``isinstance`` checks are the
    usual ones.

    Attributes:
        pad: The zeros in ``F.pad`` order: last dimension first, ``(before, after)`` each.
    """

    pad: tuple[int, ...]

    @property
    def padding_per_dim(self) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` for each spatial dimension, first dimension first."""
        pairs = [(self.pad[i], self.pad[i + 1]) for i in range(0, len(self.pad), 2)]
        return tuple(reversed(pairs))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        conv: Any = self
        return conv._conv_forward(F.pad(input, self.pad), conv.weight, conv.bias)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"  # type: ignore[misc]


class AsymmetricPadConv1d(AsymmetricPad, nn.Conv1d):
    """``nn.Conv1d`` after a fixed zero pad (see ``AsymmetricPad``)."""


class AsymmetricPadConv2d(AsymmetricPad, nn.Conv2d):
    """``nn.Conv2d`` after a fixed zero pad (see ``AsymmetricPad``)."""


class AsymmetricPadConv3d(AsymmetricPad, nn.Conv3d):
    """``nn.Conv3d`` after a fixed zero pad (see ``AsymmetricPad``)."""


_PADDED_CONVS: dict[int, type[nn.Module]] = {
    1: AsymmetricPadConv1d,
    2: AsymmetricPadConv2d,
    3: AsymmetricPadConv3d,
}


def create_conv(
    in_channels: int,
    out_channels: int,
    *,
    padding: Sequence[tuple[int, int]],
    **kwargs: Any,
) -> nn.Module:
    """A ``len(padding)``-D convolution with ``(before, after)`` zeros per dimension.

    A plain ``nn.ConvNd`` where every dimension is padded symmetrically, otherwise an
    ``AsymmetricPadConvNd``; ``kwargs`` are ``nn.ConvNd``'s other arguments.
    """
    dims = len(padding)
    if all(before == after for before, after in padding):
        return T.CONV[dims](
            in_channels, out_channels, padding=tuple(b for b, _ in padding), **kwargs
        )
    conv: Any = _PADDED_CONVS[dims](in_channels, out_channels, padding=0, **kwargs)
    conv.pad = tuple(side for pair in reversed(padding) for side in pair)
    return cast(nn.Module, conv)


def _unknown(arg: str, value: str, table: dict[str, Any], extra: str) -> ValueError:
    names = ", ".join(repr(name) for name in table)
    return ValueError(
        f"Invalid value for argument `{arg}`: unknown name {value!r}. "
        f"Valid names are {names}{extra}. Received {arg}={value!r}."
    )


def _needs_arguments(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` can't be called without arguments (e.g. ``torch.relu``)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins such as torch.relu have no signature
        return True
    return any(
        p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for p in signature.parameters.values()
    )


def check_act(arg: str, act: LayerSpec) -> None:
    """Raise if ``act`` can't be turned into an activation layer."""
    if act is None or isinstance(act, nn.Module):
        return
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise _unknown(arg, act, ACTIVATIONS, ", None, an nn.Module subclass or a factory")
        return
    if not callable(act):
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected a name such as 'relu', an nn.Module "
            f"subclass, a zero-argument callable returning a module, or None. "
            f"Received {arg}={act!r} of type {type(act).__name__}."
        )
    if not isinstance(act, type) and _needs_arguments(act):
        # A function applied to tensors (torch.relu, F.gelu), not a layer factory.
        name = getattr(act, "__name__", "").rstrip("_")
        fix = (
            f"its name {name!r} or the module class nn.{type(ACTIVATIONS[name]()).__name__}"
            if name in ACTIVATIONS
            else "a name such as 'relu', an nn.Module subclass, or a zero-argument callable "
            "returning a module"
        )
        raise TypeError(
            f"Invalid value for argument `{arg}`: {act!r} is a function applied to tensors, "
            f"not a layer; convkit needs a layer it can place in the block. Pass {fix}. "
            f"Received {arg}={act!r}."
        )


def create_act(arg: str, act: LayerSpec, *, inplace: bool = False) -> nn.Module | None:
    """Build an activation layer from a name, class, factory or module instance.

    A module instance is deep-copied, so that one ``act=nn.PReLU()`` given to a factory
    gives every block its own parameters. ``inplace`` switches the names in
    ``INPLACE_ACTIVATIONS`` to in-place; ``inplace=False`` also switches off an in-place
    flag that a given module or factory set, because the caller has decided that
    overwriting the input is unsafe there (e.g. the first stage of a block).
    """
    check_act(arg, act)
    if act is None:
        return None
    if isinstance(act, nn.Module):
        layer = copy.deepcopy(act)
    elif isinstance(act, str):
        if inplace and act in INPLACE_ACTIVATIONS:
            return ACTIVATIONS[act](inplace=True)  # type: ignore[call-arg]
        return ACTIVATIONS[act]()
    else:
        layer = act()
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"Invalid value for argument `{arg}`: calling {act!r} returned "
            f"{type(layer).__name__}, not an nn.Module."
        )
    if not inplace and getattr(layer, "inplace", False) is True:
        cast(Any, layer).inplace = False
    return layer


def check_norm(
    arg: str,
    norm: LayerSpec,
    table: dict[str, Callable[[int], nn.Module]],
    *,
    dims: int | None = None,
) -> None:
    """Raise if ``norm`` can't be turned into a normalisation layer.

    ``dims`` (1, 2 or 3) is the number of spatial dimensions of the feature maps the norm
    will see; torch's dimension-bound norm classes (``nn.BatchNorm1d`` ...) must match it.
    ``dims=0`` stands for the ``(N, F)`` features of a fully connected layer.
    """
    if norm is None:
        return
    if isinstance(norm, str):
        if norm not in table:
            raise _unknown(arg, norm, table, ", None or a callable num_channels -> nn.Module")
        return
    if isinstance(norm, nn.Module) or not callable(norm):
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected one of {', '.join(map(repr, table))}, "
            f"None, or a callable num_channels -> nn.Module (e.g. nn.BatchNorm2d). "
            f"Received {arg}={norm!r} of type {type(norm).__name__}."
        )
    if dims is None or not isinstance(norm, type):
        return
    for cls, (norm_dims, name) in _DIM_BOUND_NORMS.items():
        if issubclass(norm, cls) and max(norm_dims, 1) != max(dims, 1):
            what = (
                "the (N, F) features of a fully connected layer"
                if dims == 0
                else (f"{dims}-D feature maps (dims={dims})")
            )
            right = cls.__name__[:-2] + f"{max(dims, 1)}d"
            raise ValueError(
                f"Invalid value for argument `{arg}`: {norm.__name__} normalises "
                f"{norm_dims}-D inputs, but this layer sees {what}. Pass {arg}={name!r} "
                f"(the matching norm is chosen for you) or nn.{right}. "
                f"Received {arg}={norm.__name__}."
            )


def create_norm(
    arg: str,
    norm: LayerSpec,
    num_channels: int,
    table: dict[str, Callable[[int], nn.Module]],
) -> nn.Module | None:
    """Build a normalisation layer over ``num_channels`` channels (or features)."""
    check_norm(arg, norm, table)
    if norm is None:
        return None
    factory = table[norm] if isinstance(norm, str) else norm
    layer = factory(num_channels)
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"Invalid value for argument `{arg}`: calling {norm!r} with {num_channels} returned "
            f"{type(layer).__name__}, not an nn.Module."
        )
    return layer


def _check_name(arg: str, value: Any, names: Sequence[str], none_means: str = "") -> None:
    """Raise unless ``value`` is one of ``names`` or ``None``."""
    if value is None:
        return
    listed = f"{', '.join(map(repr, names))} or None{none_means}"
    if not isinstance(value, str):
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected {listed}. "
            f"Received {arg}={value!r} of type {type(value).__name__}."
        )
    if value not in names:
        raise _unknown(arg, value, dict.fromkeys(names), f" or None{none_means}")


def check_pool(arg: str, pool: Any) -> None:
    """Raise unless ``pool`` is ``"max"``, ``"avg"`` or ``None``."""
    _check_name(arg, pool, tuple(POOLS[2]))


def create_pool(arg: str, pool: str | None, pool_size: tuple[int, ...]) -> nn.Module | None:
    """Build a ``len(pool_size)``-D pooling layer whose kernel and stride are both ``pool_size``."""
    check_pool(arg, pool)
    if pool is None:
        return None
    # an equal window prints as nn.MaxPool2d(2) does: kernel_size=2
    size: int | tuple[int, ...] = pool_size[0] if len(set(pool_size)) == 1 else pool_size
    return POOLS[len(pool_size)][pool](kernel_size=size, stride=size)


#: Global pooling to size 1 over every spatial position: average and max, per dims.
GLOBAL_POOLS: dict[int, dict[str, type[nn.Module]]] = {
    dims: {"avg": T.ADAPTIVE_AVG_POOL[dims], "max": T.ADAPTIVE_MAX_POOL[dims]} for dims in T.CONV
}

#: The ``head_pool`` names.
HEAD_POOLS = ("avg", "max", "avgmax")


class AvgMaxPool(nn.Module):
    """Global average and global max pooling, averaged: ``0.5 * (avg + max)``.

    timm's ``"avgmax"`` pooling. Its children ``avg`` and ``max`` are the two adaptive
    pools, so it prints and is measured (``convkit.shapes``) like them.
    """

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.avg = GLOBAL_POOLS[dims]["avg"](1)
        self.max = GLOBAL_POOLS[dims]["max"](1)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = 0.5 * (self.avg(input) + self.max(input))
        return pooled  # (N, C, *spatial) -> (N, C, 1, ...)


def check_global_pool(arg: str, kind: Any) -> None:
    """Raise unless ``kind`` is ``"avg"``, ``"max"``, ``"avgmax"`` or ``None``."""
    _check_name(arg, kind, HEAD_POOLS, " (flatten instead)")


def create_global_pool(arg: str, kind: str | None, dims: int) -> nn.Module | None:
    """A ``dims``-D global pooling layer ``"avg"``, ``"max"`` or ``"avgmax"``, or ``None``."""
    check_global_pool(arg, kind)
    if kind is None:
        return None
    return AvgMaxPool(dims) if kind == "avgmax" else GLOBAL_POOLS[dims][kind](1)
