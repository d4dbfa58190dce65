"""Name -> layer lookup for normalisation, activation and pooling layers.

One small table per kind, after timm's ``create_act.py``. Every resolver accepts a
name, a class or factory, or ``None`` (the stage is switched off), and an unknown name
raises a ``ValueError`` that lists the valid ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from ._typing import IntOrPair, LayerSpec

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


# Activations whose backward reads only their output, so they can overwrite their input:
# in place they save one tensor of memory traffic per call (about 10% of a training
# step of the teaching notebook's CNN on a 2-core CPU).
INPLACE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu"})


def _group_norm(num_channels: int) -> nn.Module:
    # The largest group count <= 32 that divides the channels (32 is the GroupNorm
    # paper's default; fewer channels than that get fewer groups, never an error).
    groups = max(g for g in range(1, min(32, num_channels) + 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


NORMS_2D: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": _group_norm,
    # affine=True: a norm inside a block should be learnable like the others.
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
    "layer": lambda c: nn.GroupNorm(1, c),
}

NORMS_1D: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}

POOLS: dict[str, type[nn.Module]] = {
    "max": nn.MaxPool2d,
    "avg": nn.AvgPool2d,
}


def _unknown(arg: str, value: str, table: dict[str, Any], extra: str) -> ValueError:
    names = ", ".join(repr(name) for name in table)
    return ValueError(
        f"Invalid value for argument `{arg}`: unknown name {value!r}. "
        f"Valid names are {names}{extra}. Received {arg}={value!r}."
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


def create_act(arg: str, act: LayerSpec, *, inplace: bool = False) -> nn.Module | None:
    """Build an activation layer from a name, class, factory or module instance.

    A module instance is deep-copied, so that one ``act=nn.PReLU()`` given to a factory
    gives every block its own parameters. ``inplace`` applies to the names in
    ``INPLACE_ACTIVATIONS`` only; the caller decides when overwriting the input is safe.
    """
    check_act(arg, act)
    if act is None:
        return None
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    if isinstance(act, str):
        if inplace and act in INPLACE_ACTIVATIONS:
            return ACTIVATIONS[act](inplace=True)  # type: ignore[call-arg]
        return ACTIVATIONS[act]()
    layer = act()
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"Invalid value for argument `{arg}`: calling {act!r} returned "
            f"{type(layer).__name__}, not an nn.Module."
        )
    return layer


def check_norm(arg: str, norm: LayerSpec, table: dict[str, Callable[[int], nn.Module]]) -> None:
    """Raise if ``norm`` can't be turned into a normalisation layer."""
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


def check_pool(arg: str, pool: Any) -> None:
    """Raise unless ``pool`` is ``"max"``, ``"avg"`` or ``None``."""
    if pool is None:
        return
    if not isinstance(pool, str):
        raise TypeError(
            f"Invalid type for argument `{arg}`. Expected 'max', 'avg' or None. "
            f"Received {arg}={pool!r} of type {type(pool).__name__}."
        )
    if pool not in POOLS:
        raise _unknown(arg, pool, POOLS, " or None")


def create_pool(arg: str, pool: str | None, pool_size: IntOrPair) -> nn.Module | None:
    """Build a pooling layer whose kernel and stride are both ``pool_size``."""
    check_pool(arg, pool)
    if pool is None:
        return None
    return POOLS[pool](kernel_size=pool_size, stride=pool_size)
