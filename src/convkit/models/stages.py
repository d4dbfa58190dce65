"""The feature stacks of ``build_cnn``'s block families: stem, stages, downsampling.

``block="plain"`` is a stack of [`ConvBlock`][convkit.ConvBlock]s (``factory.plain_features``),
optionally after a stem. ``block="residual"`` and ``"bottleneck"`` follow the ResNet
layout of torchvision and timm: an optional stem conv, then one stage per entry of
``channels`` with ``depths[i]`` [`ResidualBlock`][convkit.ResidualBlock]s, the first of
which carries the stage's ``stride``; a pool (and a dropout) may close each stage. The
CIFAR ResNet-20 of He et al. (2016, section 4.2) is ``stem=16, channels=(16, 32, 64),
depths=3, stride=(1, 2, 2), pool=None`` with a global average pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

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
from ..shapes import conv_output_size, pool_output_size, same_padding
from ..utils.validation import (
    check_bool,
    check_choice,
    check_int_or_tuple,
    check_positive_int,
    check_positive_int_sequence,
    check_probability,
)

__all__ = ["FAMILIES", "RESIDUAL_DEFAULTS", "family_features"]

#: The values of ``build_cnn(block=...)``.
FAMILIES = ("plain", "residual", "bottleneck")

#: ``build_cnn`` arguments that configure residual blocks only, with their defaults.
RESIDUAL_DEFAULTS: dict[str, Any] = {
    "preact": False,
    "shortcut": "conv",
    "se_reduction": None,
    "drop_path": 0.0,
}

#: The options every stage takes one value of (or one for all stages).
_PER_STAGE = ("kernel_size", "stride", "norm", "act", "pool", "pool_size", "dropout")
_SPATIAL_OPTIONS = ("kernel_size", "stride", "pool_size")
_STEM_EXAMPLE = "16, or (channels, kernel_size, stride) such as (64, 7, 2)"


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


def _stem_size(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[int, ...]:
    return tuple(
        conv_output_size(s, k, stride=st, padding=same_padding(k))
        for s, k, st in zip(size, kernel, stride, strict=True)
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
    from .factory import _per_block, plain_features  # factory imports this module

    check_choice("block", block, FAMILIES)
    check_init(init)
    dims = len(input_shape) - 1
    channels = options["channels"]
    check_positive_int_sequence(
        "channels", channels, example="(32, 64), one per stage", allow_empty=False
    )
    stages = check_depths(depths, len(channels), channels)
    stem_spec = check_stem(stem, dims)
    if block == "plain":
        _check_plain_family(stages, init, residual)
    else:
        _check_residual_family(block, channels, residual, options)
    per_stage = {
        key: _per_block(
            key, options[key], len(channels), spatial_dims=dims if key in _SPATIAL_OPTIONS else 0
        )
        for key in _PER_STAGE
    }
    stem_norm, stem_act = per_stage["norm"][0], per_stage["act"][0]
    check_norm("norm", stem_norm, CONV_NORMS[dims], dims=dims)
    check_act("act", stem_act)

    c_in, size = input_shape[0], tuple(input_shape[1:])
    if stem_spec is not None:
        c_in, size = stem_spec[0], _stem_size(size, stem_spec[1], stem_spec[2])
    if block == "plain":
        body = plain_features((c_in, *size), **options)
        features = nn.Sequential()
    else:
        body = _residual_stages(block, (c_in, *size), stages, per_stage, residual, options)
        features = nn.Sequential()
    if stem_spec is not None:
        channels_out, kernel, stride = stem_spec
        features.add_module(
            "stem",
            ConvBlock(
                input_shape[0],
                channels_out,
                kernel,
                dims=dims,
                stride=stride,
                norm=stem_norm,
                act=stem_act,
            ),
        )
    for name, module in body.named_children():
        features.add_module(name, module)
    return init_weights(features, init)  # type: ignore[return-value]


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


def _residual_stages(
    block: str,
    input_shape: tuple[int, ...],
    depths: list[int],
    per_stage: dict[str, list[Any]],
    residual: dict[str, Any],
    options: dict[str, Any],
) -> nn.Sequential:
    """``stage1`` ... ``stageN`` of residual blocks (and ``final`` for pre-activation)."""
    channels = options["channels"]
    dims = len(input_shape) - 1
    n = len(channels)
    for i in range(n):  # names and sizes first: nothing is built for a bad argument
        check_norm("norm", per_stage["norm"][i], CONV_NORMS[dims], dims=dims)
        check_act("act", per_stage["act"][i])
        check_pool("pool", per_stage["pool"][i])
        check_probability("dropout", per_stage["dropout"][i])
        for key in _SPATIAL_OPTIONS:
            per_stage[key][i] = check_int_or_tuple(key, per_stage[key][i], dims)
    _check_sizes(input_shape, per_stage, channels)

    total = sum(depths)
    rate = residual["drop_path"]
    # stochastic depth grows linearly with depth, from 0 to drop_path (as in timm)
    rates = [rate * k / (total - 1) if total > 1 else rate for k in range(total)]
    stack = nn.Sequential()
    c_in, k = input_shape[0], 0
    for i, c_out in enumerate(channels):
        stage = nn.Sequential()
        for j in range(depths[i]):
            stage.add_module(
                f"block{j + 1}",
                ResidualBlock(
                    c_in,
                    c_out,
                    per_stage["kernel_size"][i],
                    dims=dims,
                    stride=per_stage["stride"][i] if j == 0 else 1,
                    bottleneck=block == "bottleneck",
                    norm=per_stage["norm"][i],
                    act=per_stage["act"][i],
                    preact=residual["preact"],
                    shortcut=residual["shortcut"],
                    se_reduction=residual["se_reduction"],
                    drop_path=rates[k],
                ),
            )
            c_in, k = c_out, k + 1
        pool = create_pool("pool", per_stage["pool"][i], per_stage["pool_size"][i])
        if pool is not None:
            stage.add_module("pool", pool)
        if per_stage["dropout"][i] > 0:
            stage.add_module("dropout", DROPOUTS[dims](per_stage["dropout"][i]))
        stack.add_module(f"stage{i + 1}", stage)
    if residual["preact"]:  # pre-activation blocks end with a sum: normalise it once
        final = nn.Sequential()
        norm = create_norm("norm", per_stage["norm"][-1], c_in, CONV_NORMS[dims])
        act = create_act("act", per_stage["act"][-1], inplace=True)
        for name, layer in (("norm", norm), ("act", act)):
            if layer is not None:
                final.add_module(name, layer)
        stack.add_module("final", final)
    return stack


def _check_sizes(
    input_shape: tuple[int, ...], per_stage: dict[str, list[Any]], channels: Sequence[int]
) -> None:
    """Raise if a stage's pool shrinks the feature map to nothing ("same" convs never do)."""
    size = tuple(input_shape[1:])
    c_in = input_shape[0]
    for i, c_out in enumerate(channels):
        after = tuple(-(-s // st) for s, st in zip(size, per_stage["stride"][i], strict=True))
        if per_stage["pool"][i] is not None:
            after = tuple(
                pool_output_size(s, p)
                for s, p in zip(after, per_stage["pool_size"][i], strict=True)
            )
        if min(after) < 1:
            raise ValueError(
                f"The feature map shrinks to nothing: stage {i + 1} of {len(channels)} "
                f"(stride={per_stage['stride'][i]}, pool={per_stage['pool'][i]!r}, "
                f"pool_size={per_stage['pool_size'][i]}) receives an input of shape "
                f"{(c_in, *size)} and would output a {'x'.join(map(str, after))} map. Use "
                "fewer stages, pool=None or stride 1 there, or a larger input."
            )
        size, c_in = after, c_out
