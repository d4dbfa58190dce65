"""The feature stacks of ``build_cnn``'s block families: stem, blocks or stages.

``block="plain"`` is a stack of [`ConvBlock`][convkit.ConvBlock]s, one per entry of
``channels``, optionally after a stem. ``block="residual"`` and ``"bottleneck"`` follow
the ResNet layout of torchvision and timm: an optional stem conv, then one stage per
entry of ``channels`` with ``depths[i]`` [`ResidualBlock`][convkit.ResidualBlock]s, the
first of which carries the stage's ``stride``; a pool (and a dropout) may close each
stage. The CIFAR ResNet-20 of He et al. (2016, section 4.2) is ``stem=16,
channels=(16, 32, 64), depths=3, stride=(1, 2, 2), pool=None`` with a global average
pool.

Every part of the stack (the stem, each block or stage) is first built on the ``meta``
device and measured with [`convkit.shapes`][convkit.shapes], one part at a time: a
stack that shrinks the feature map to nothing is refused at the first part that
doesn't fit, before any weight is initialised or any random number drawn.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import shapes
from ..layers.blocks import ConvBlock
from ..layers.create import (
    CONV_NORMS,
    DROPOUTS,
    check_act,
    check_norm,
    check_pool,
    create_act,
    create_norm,
    create_pool,
)
from ..layers.init import check_init, init_weights
from ..layers.residual import SHORTCUTS, ResidualBlock
from ..utils.validation import (
    check_bool,
    check_choice,
    check_int_or_tuple,
    check_positive_int,
    check_positive_int_sequence,
    check_probability,
)

__all__ = ["CONVS_PER_BLOCK", "FAMILIES", "RESIDUAL_DEFAULTS", "family_features", "per_block"]

#: The values of ``build_cnn(block=...)``.
FAMILIES = ("plain", "residual", "bottleneck")

#: Convolutions in one block of each family (a projection shortcut adds one).
CONVS_PER_BLOCK = {"plain": 1, "residual": 2, "bottleneck": 3}

#: ``build_cnn`` arguments that configure residual blocks only, with their defaults.
RESIDUAL_DEFAULTS: dict[str, Any] = {
    "preact": False,
    "shortcut": "conv",
    "se_reduction": None,
    "drop_path": 0.0,
}

#: The per-block options of plain blocks.
_PER_BLOCK = (
    "kernel_size",
    "stride",
    "padding",
    "norm",
    "act",
    "pool",
    "pool_size",
    "dropout",
    "order",
)
#: The options every stage takes one value of (or one for all stages).
_PER_STAGE = ("kernel_size", "stride", "norm", "act", "pool", "pool_size", "dropout")
_SPATIAL_OPTIONS = ("kernel_size", "stride", "padding", "pool_size")
_STEM_EXAMPLE = "16, or (channels, kernel_size, stride) such as (64, 7, 2)"


def _is_spatial_tuple(value: Any, dims: int) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == dims
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def per_block(name: str, value: Any, n: int, *, spatial_dims: int = 0) -> list[Any]:
    """Broadcast one value to ``n`` blocks, or check a sequence has one entry per block.

    For per-dimension options (``spatial_dims`` > 0) a sequence of length ``n`` is
    per-block; a tuple of ``spatial_dims`` ints is otherwise one value for all blocks.
    """
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if spatial_dims and _is_spatial_tuple(value, spatial_dims):
            return [tuple(value)] * n
        raise ValueError(
            f"Invalid value for argument `{name}`: a sequence must have one entry per block, "
            f"i.e. {n} entries for channels of length {n}. Received {name}={value!r} with "
            f"{len(value)} entries. Pass a single value to use it for every block."
        )
    return [value] * n


@dataclass
class _Part:
    """One child of ``features``: how to build it, and what to say if it doesn't fit."""

    name: str
    build: Callable[[], nn.Module]
    out_channels: int
    label: str  # e.g. "block 2 of 3 (kernel_size=3, ...)"
    fix: str


def _check_fits(parts: Sequence[_Part], input_shape: tuple[int, ...]) -> None:
    """Raise at the first part that shrinks the feature map to nothing.

    Each part is built on the ``meta`` device (no memory, no random numbers) and
    measured by ``convkit.shapes``; nothing after the first part that doesn't fit is
    built, so the check costs a few shape evaluations per part up to it.
    """
    channels, size = input_shape[0], tuple(input_shape[1:])
    built = nn.Sequential()
    with torch.device("meta"):
        for i, part in enumerate(parts):
            built.add_module(part.name, part.build())
            out = shapes.output_size(built[-1], size)
            if min(out) < 1:
                smallest = shapes.min_input_size(built, len(size))
                upto = part.name if i == 0 else f"{parts[0].name} to {part.name}"
                raise ValueError(
                    f"The feature map shrinks to nothing: {part.label} receives an input of "
                    f"shape {(channels, *size)} and would output a {'x'.join(map(str, out))} "
                    f"map. The smallest input that {upto} take is "
                    f"{(input_shape[0], *smallest)}. {part.fix}"
                )
            channels, size = part.out_channels, out


def _build(parts: Sequence[_Part]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((part.name, part.build()) for part in parts))


def check_stem(stem: Any, dims: int) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """``stem`` as ``(channels, kernel, stride)``, or ``None`` for no stem; else raise."""
    if stem is None:
        return None
    if isinstance(stem, int) and not isinstance(stem, bool):
        stem = (stem, 3, 1)
    if not isinstance(stem, (list, tuple)) or len(stem) != 3:
        raise TypeError(
            "Invalid type for argument `stem`. Expected None, the stem conv's output "
            f"channels, or (channels, kernel_size, stride), e.g. {_STEM_EXAMPLE}. "
            f"Received stem={stem!r}."
        )
    try:
        channels = check_positive_int("stem", stem[0])
        kernel = check_int_or_tuple("stem", stem[1], dims)
        stride = check_int_or_tuple("stem", stem[2], dims)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"Invalid value for argument `stem`. Expected None, a positive int, or "
            f"(channels, kernel_size, stride) of positive ints (kernel_size and stride: an "
            f"int or {dims} ints), e.g. {_STEM_EXAMPLE}. Received stem={stem!r}."
        ) from None
    return channels, kernel, stride


def check_depths(depths: Any, n: int, channels: Sequence[int]) -> list[int]:
    """One number of blocks per stage (an int for every stage), else raise."""
    if isinstance(depths, int) and not isinstance(depths, bool):
        return [check_positive_int("depths", depths)] * n
    values = check_positive_int_sequence(
        "depths", depths, example="2 or (2, 2, 2), one per stage", allow_empty=False
    )
    if len(values) != n:
        raise ValueError(
            f"Invalid value for argument `depths`: it needs one entry per stage, i.e. {n} "
            f"entries for channels={tuple(channels)}. Received depths={depths!r} with "
            f"{len(values)} entries. Pass one int to use it for every stage."
        )
    return list(values)


def _check_plain_family(stages: list[int], init: str, residual: dict[str, Any]) -> None:
    if any(depth != 1 for depth in stages):
        raise ValueError(
            "Invalid value for argument `depths`: plain blocks have one ConvBlock per entry "
            f"of `channels`. Received depths={stages!r} with block='plain'; repeat the "
            "channels instead (e.g. channels=(32, 32, 64)) or use block='residual'."
        )
    clashing = [k for k, v in residual.items() if v != RESIDUAL_DEFAULTS[k]]
    if init == "zero_last":
        clashing.append("init")
    if clashing:
        raise ValueError(
            f"Invalid arguments: {', '.join(f'`{k}`' for k in clashing)} configure residual "
            "blocks, but block='plain'. Use block='residual' or 'bottleneck', or drop them."
        )


def _check_residual_family(
    block: str, channels: Sequence[int], residual: dict[str, Any], options: dict[str, Any]
) -> None:
    check_bool("preact", residual["preact"])
    check_choice("shortcut", residual["shortcut"], SHORTCUTS)
    if residual["se_reduction"] is not None:
        check_positive_int("se_reduction", residual["se_reduction"])
    check_probability("drop_path", residual["drop_path"])
    if block == "bottleneck":
        for i, c in enumerate(channels):
            if c % 4:
                raise ValueError(
                    f"Invalid value for argument `channels`: a bottleneck stage's channels "
                    f"must be divisible by its expansion 4 (the inner width is channels // 4). "
                    f"Received channels[{i}]={c} in channels={tuple(channels)}; e.g. "
                    f"{(c // 4 + 1) * 4} would work."
                )
    defaults = {"padding": "same", "order": "conv-norm-act-pool-dropout"}
    for key, default in defaults.items():
        if options[key] != default:
            fix = "preact=True for pre-activation" if key == "order" else "the default 'same'"
            raise ValueError(
                f"Invalid value for argument `{key}`: residual blocks keep the feature map "
                f"with padding='same' and set their own layer order. Received {key}="
                f"{options[key]!r} with block={block!r}; use {fix}."
            )


def family_features(
    input_shape: tuple[int, ...],
    *,
    block: str,
    depths: Any,
    stem: Any,
    init: str,
    residual: dict[str, Any],
    options: dict[str, Any],
) -> nn.Sequential:
    """The ``features`` of ``build_cnn`` for a block family; everything checked first.

    Args:
        input_shape: One sample's shape ``(C, *spatial)``.
        block: ``"plain"``, ``"residual"`` or ``"bottleneck"``.
        depths: Blocks per stage.
        stem: ``None``, channels, or ``(channels, kernel_size, stride)``.
        init: The weight initialisation of the features.
        residual: The residual-only arguments (``RESIDUAL_DEFAULTS``' keys).
        options: ``build_cnn``'s per-block arguments (``channels`` ... ``order``).
    """
    check_choice("block", block, FAMILIES)
    check_init(init)
    dims = len(input_shape) - 1
    channels = options["channels"]
    check_positive_int_sequence(
        "channels", channels, example="(32, 64), one per block or stage", allow_empty=False
    )
    stages = check_depths(depths, len(channels), channels)
    stem_spec = check_stem(stem, dims)
    if block == "plain":
        _check_plain_family(stages, init, residual)
    else:
        _check_residual_family(block, channels, residual, options)
    keys = _PER_BLOCK if block == "plain" else _PER_STAGE
    per = {
        key: per_block(
            key, options[key], len(channels), spatial_dims=dims if key in _SPATIAL_OPTIONS else 0
        )
        for key in keys
    }
    _check_names(per, dims)
    parts = [] if stem_spec is None else [_stem_part(input_shape, stem_spec, per)]
    c_in = input_shape[0] if stem_spec is None else stem_spec[0]
    if block == "plain":
        parts += _plain_parts(c_in, channels, per, input_shape)
    else:
        parts += _residual_parts(block, c_in, stages, per, residual, options, input_shape)
    _check_fits(parts, input_shape)
    return init_weights(_build(parts), init)  # type: ignore[return-value]


def _check_names(per: dict[str, list[Any]], dims: int) -> None:
    """Every block's norm and pool names, before anything is built (a ``ConvBlock`` checks
    the rest of its arguments itself, naming its block)."""
    for i in range(len(per["norm"])):  # so that a bad name is reported for any block
        check_norm("norm", per["norm"][i], CONV_NORMS[dims], dims=dims)
        check_pool("pool", per["pool"][i])


def _stem_part(
    input_shape: tuple[int, ...],
    spec: tuple[int, tuple[int, ...], tuple[int, ...]],
    per: dict[str, list[Any]],
) -> _Part:
    channels, kernel, stride = spec
    # the stem uses the first stage's norm and activation
    options: dict[str, Any] = {"stride": stride, "norm": per["norm"][0], "act": per["act"][0]}
    options["dims"] = len(input_shape) - 1

    def build() -> nn.Module:
        return ConvBlock(input_shape[0], channels, kernel, **options)

    return _Part("stem", build, channels, "the stem", "Use a stem with a smaller stride.")


def _plain_parts(
    c_in: int, channels: Sequence[int], per: dict[str, list[Any]], input_shape: tuple[int, ...]
) -> list[_Part]:
    """``block1`` ... ``blockN``: one [`ConvBlock`][convkit.ConvBlock] per channel count."""
    n, dims = len(channels), len(input_shape) - 1
    parts = []
    for i, c_out in enumerate(channels):
        options = {key: values[i] for key, values in per.items()}
        where = f"block {i + 1} of {n}" if n > 1 else "the block"
        settings = ", ".join(
            f"{key}={options[key]!r}" for key in ("kernel_size", "stride", "padding", "pool")
        )
        fixes = [
            *(["padding='same'"] if options["padding"] != "same" else []),
            *(["pool=None there"] if options["pool"] is not None else []),
            *(["stride 1 there"] if options["stride"] not in (1, (1,) * dims) else []),
            f"fewer blocks (channels={tuple(channels[:i])})",
        ]
        fix = f"Use {', '.join(fixes)} or a larger input than input_shape={input_shape}."
        parts.append(
            _Part(
                f"block{i + 1}",
                _conv_block(
                    c_in, c_out, dims, options, f"{where}, built from channels[{i}]={c_out}"
                ),
                c_out,
                f"block {i + 1} of {n} ({settings})",
                fix,
            )
        )
        c_in = c_out
    return parts


def _conv_block(
    c_in: int, c_out: int, dims: int, options: dict[str, Any], where: str
) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            return ConvBlock(c_in, c_out, dims=dims, **options)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err} (in {where})") from None

    return build


def _residual_parts(
    block: str,
    c_in: int,
    depths: list[int],
    per: dict[str, list[Any]],
    residual: dict[str, Any],
    options: dict[str, Any],
    input_shape: tuple[int, ...],
) -> list[_Part]:
    """``stage1`` ... ``stageN`` of residual blocks (and ``final`` for pre-activation)."""
    channels, dims = options["channels"], len(input_shape) - 1
    for i in range(len(channels)):
        check_act("act", per["act"][i])
        check_probability("dropout", per["dropout"][i])
        for key in ("kernel_size", "stride", "pool_size"):
            per[key][i] = check_int_or_tuple(key, per[key][i], dims)
    total, rate = sum(depths), residual["drop_path"]
    # stochastic depth grows linearly with depth, from 0 to drop_path (as in timm)
    rates = [rate * k / (total - 1) if total > 1 else rate for k in range(total)]
    parts, first = [], 0
    for i, c_out in enumerate(channels):
        stage = {key: values[i] for key, values in per.items()}
        spec = (block, c_in, c_out, depths[i], dims, rates[first : first + depths[i]])
        settings = (
            f"stride={stage['stride']}, pool={stage['pool']!r}, pool_size={stage['pool_size']}"
        )
        parts.append(
            _Part(
                f"stage{i + 1}",
                _stage(spec, stage, residual),
                c_out,
                f"stage {i + 1} of {len(channels)} ({settings})",
                "Use fewer stages, pool=None or stride 1 there, or a larger input than "
                f"input_shape={input_shape}.",
            )
        )
        c_in, first = c_out, first + depths[i]
    if residual["preact"]:  # pre-activation blocks end with a sum: normalise it once
        parts.append(_Part("final", _final(c_in, dims, per), c_in, "the final norm", ""))
    return parts


def _stage(
    spec: tuple[str, int, int, int, int, list[float]],
    stage: dict[str, Any],
    residual: dict[str, Any],
) -> Callable[[], nn.Module]:
    block, c_in, c_out, depth, dims, rates = spec

    def build() -> nn.Module:
        layers = nn.Sequential()
        for j in range(depth):
            layers.add_module(
                f"block{j + 1}",
                ResidualBlock(
                    c_in if j == 0 else c_out,
                    c_out,
                    stage["kernel_size"],
                    dims=dims,
                    stride=stage["stride"] if j == 0 else 1,
                    bottleneck=block == "bottleneck",
                    norm=stage["norm"],
                    act=stage["act"],
                    preact=residual["preact"],
                    shortcut=residual["shortcut"],
                    se_reduction=residual["se_reduction"],
                    drop_path=rates[j],
                ),
            )
        pool = create_pool("pool", stage["pool"], stage["pool_size"])
        if pool is not None:
            layers.add_module("pool", pool)
        if stage["dropout"] > 0:
            layers.add_module("dropout", DROPOUTS[dims](stage["dropout"]))
        return layers

    return build


def _final(channels: int, dims: int, per: dict[str, list[Any]]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        final = nn.Sequential()
        norm = create_norm("norm", per["norm"][-1], channels, CONV_NORMS[dims])
        act = create_act("act", per["act"][-1], inplace=True)
        for name, layer in (("norm", norm), ("act", act)):
            if layer is not None:
                final.add_module(name, layer)
        return final

    return build
