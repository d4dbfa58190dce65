"""``build_cnn``: a CNN from a few numbers, with its feature size inferred for you.

The features are a stack of ``ConvBlock`` stages (1-D, 2-D or 3-D, from the length of
``input_shape``); the head is an ``MLPHead`` after either a flatten, whose input size is
found once at construction by a dry run that leaves every parameter, buffer and
train/eval flag as it was (so the head is a plain ``nn.Linear``, no lazy modules), or a
global pooling layer, which frees the model from one input size.

The feature stacks of the block families are built in ``convkit.models.stages``;
this module puts a feature module (those or your own), the global pool and the head
together into a ``CNN``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import shapes
from ..layers.blocks import Flatten
from ..layers.create import (
    FEATURE_NORMS,
    check_act,
    check_global_pool,
    check_norm,
    create_global_pool,
)
from ..layers.heads import MLPHead
from ..utils.probe import infer_output_shape
from ..utils.typing import IntOrTuple, LayerSpec, Padding
from ..utils.validation import (
    SHAPE_NAMES,
    check_positive_int,
    check_positive_int_sequence,
    check_probability,
    check_sample_shape,
)
from .stages import RESIDUAL_DEFAULTS, family_features

__all__ = ["CNN", "build_cnn"]

#: ``head_act``'s default: the head uses the blocks' activation (``act``'s last entry).
INHERIT = "inherit"


class CNN(nn.Sequential):
    """The model [`build_cnn`][convkit.build_cnn] returns.

    ``features -> flatten -> head``, or ``features -> global_pool -> flatten -> head``
    with a global pooling head. An ``nn.Sequential`` with named children, so it prints,
    indexes and saves like any other; it also remembers the shapes it was built for, as
    the attributes of [`DescribedModel`][convkit.DescribedModel].

    Attributes:
        input_shape: One input sample's shape it was built for: ``(C, L)``, ``(C, H, W)``
            or ``(C, D, H, W)``.
        min_input_shape: ``None`` when the model takes only ``input_shape`` (a flatten
            before the head); with a global pool, the smallest sample shape it takes
            (any spatial size at least this large works).
        dims: Spatial dimensions, ``len(input_shape) - 1``.
        feature_shape: One sample's shape after ``features`` for ``input_shape``.
        num_features: The input size of the head.
        num_classes: Size of the output.
        config: ``build_cnn``'s arguments as plain, JSON-able data, or ``None`` when they
            can't be (custom ``features`` or layer factories).

    Examples:
        >>> model = build_cnn((1, 28, 28), 10, channels=(8, 16), head_pool="avg")
        >>> [name for name, _ in model.named_children()]
        ['features', 'global_pool', 'flatten', 'head']
        >>> model.min_input_shape
        (1, 4, 4)
        >>> model(torch.zeros(2, 1, 40, 36)).shape
        torch.Size([2, 10])
    """

    input_shape: tuple[int, ...]
    min_input_shape: tuple[int, ...] | None
    dims: int
    feature_shape: tuple[int, ...]
    num_features: int
    num_classes: int
    config: dict[str, Any] | None

    def __init__(
        self,
        features: nn.Module,
        head: MLPHead,
        *,
        input_shape: tuple[int, ...],
        feature_shape: tuple[int, ...],
        global_pool: nn.Module | None = None,
        min_input_shape: tuple[int, ...] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        if global_pool is not None:
            self.global_pool = global_pool
        self.flatten = Flatten()
        self.head = head
        self.input_shape = input_shape
        self.min_input_shape = min_input_shape
        self.dims = len(input_shape) - 1
        self.feature_shape = feature_shape
        self.num_features = head.in_features
        self.num_classes = head.out_features
        self.config = config

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.min_input_shape is not None:
            self._check_min_size(input)
        x = self.features(input)  # (N, C, *spatial) -> (N, C', *spatial')
        if "global_pool" in self._modules:
            x = self.global_pool(x)  # (N, C', *spatial') -> (N, C', 1, ...)
        x = self.flatten(x)  # (N, C', *spatial') -> (N, C' * prod(spatial'))
        if x.shape[-1] != self.num_features:
            dims = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"This CNN was built for inputs of shape (N, {dims})"
                f" whose features flatten to {self.num_features} values; the input of shape "
                f"{tuple(input.shape)} flattens to {x.shape[-1]}. Rebuild it with "
                f"build_cnn(input_shape={tuple(input.shape[1:])}, ...), or with "
                "head_pool='avg' to take any input size."
            )
        logits: torch.Tensor = self.head(x)  # (N, num_features) -> (N, num_classes)
        return logits

    def _check_min_size(self, input: torch.Tensor) -> None:
        smallest = self.min_input_shape or self.input_shape
        sample = tuple(input.shape[1:])
        if (
            len(sample) != len(smallest)
            or sample[0] != smallest[0]
            or any(s < m for s, m in zip(sample[1:], smallest[1:], strict=True))
        ):
            wanted = ", ".join([str(smallest[0]), *(f">={m}" for m in smallest[1:])])
            raise ValueError(
                f"This CNN takes inputs of shape (N, {wanted}): {smallest[0]} channel(s) and "
                f"a spatial size of at least {smallest[1:]} (its minimum input, below which "
                f"the feature map shrinks to nothing); received a tensor of shape "
                f"{tuple(input.shape)}."
            )


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    return False


def _plain_config(arguments: dict[str, Any]) -> dict[str, Any] | None:
    """``arguments`` as JSON-able data (tuples as lists), or ``None`` if they aren't."""
    if not _jsonable(list(arguments.values())):
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}


def _feature_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample after ``module`` (a side-effect-free dry run), for ``features``."""
    try:
        return infer_output_shape(module, input_shape)
    except Exception as err:
        raise ValueError(
            f"Invalid value for argument `features`: the module failed on an input of shape "
            f"{(1, *input_shape)} (batch of 1, input_shape={tuple(input_shape)}): {err}. "
            "Check that `input_shape` matches what `features` expects."
        ) from err


def _check_head_args(
    hidden: Any, head_act: LayerSpec, head_norm: LayerSpec, head_dropout: Any, head_pool: Any
) -> None:
    check_positive_int_sequence("hidden", hidden, example="(128,) or ()", allow_empty=True)
    if head_act != INHERIT:
        check_act("head_act", head_act)
    check_norm("head_norm", head_norm, FEATURE_NORMS, dims=0)
    check_probability("head_dropout", head_dropout)
    check_global_pool("head_pool", head_pool)


def _min_input_shape(
    features: nn.Module, input_shape: tuple[int, ...], *, verify: bool
) -> tuple[int, ...]:
    """The smallest sample shape ``features`` takes, from ``convkit.shapes``.

    The size comes from the layers of the one walk (``convkit.shapes.min_input_size``);
    with ``verify`` (a module convkit didn't build) a dry run confirms it, and where the
    walk can't measure the module or the dry run fails, the model keeps to sizes at
    least ``input_shape``.
    """
    try:
        computed = shapes.min_input_size(features, len(input_shape) - 1)
    except ValueError:  # a layer of unknown geometry: stay safe
        return input_shape
    smallest = (
        input_shape[0],
        *(min(c, s) for c, s in zip(computed, input_shape[1:], strict=True)),
    )
    if verify and smallest != input_shape:
        try:
            infer_output_shape(features, smallest)
        except Exception:  # the layers don't run in registration order: stay safe
            return input_shape
    return smallest


def _assemble_cnn(
    features: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int],
    act: LayerSpec,
    norm: LayerSpec,
    dropout: float,
    head_pool: str | None,
    config: dict[str, Any] | None,
    verify_min_size: bool = True,
) -> CNN:
    """Put a feature module, an optional global pool and an ``MLPHead`` into a ``CNN``.

    Arguments are checked by the caller; ``act``/``norm``/``dropout`` are the head's.
    """
    feature_shape = _feature_shape(features, input_shape)
    dims = len(input_shape) - 1
    pool = create_global_pool("head_pool", head_pool, dims)
    min_shape = None
    if pool is not None:
        if len(feature_shape) != dims + 1:
            raise ValueError(
                f"Invalid value for argument `head_pool`: a global pool needs features of "
                f"shape {SHAPE_NAMES[dims]} to pool over, but `features` returns "
                f"{feature_shape} for input_shape={input_shape}. Use head_pool=None."
            )
        head_inputs = feature_shape[0]
        min_shape = _min_input_shape(features, input_shape, verify=verify_min_size)
    else:
        head_inputs = math.prod(feature_shape)
    head = MLPHead(head_inputs, num_classes, hidden, act=act, norm=norm, dropout=dropout)
    return CNN(
        features,
        head,
        input_shape=input_shape,
        feature_shape=feature_shape,
        global_pool=pool,
        min_input_shape=min_shape,
        config=config,
    )


def build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64),
    kernel_size: IntOrTuple | Sequence[IntOrTuple] = 3,
    stride: IntOrTuple | Sequence[IntOrTuple] = 1,
    padding: Padding | Sequence[Padding] = "same",
    norm: LayerSpec | Sequence[LayerSpec] = "batch",
    act: LayerSpec | Sequence[LayerSpec] = "relu",
    pool: str | Sequence[str | None] | None = "max",
    pool_size: IntOrTuple | Sequence[IntOrTuple] = 2,
    dropout: float | Sequence[float] = 0.0,
    order: str | Sequence[str] = "conv-norm-act-pool-dropout",
    block: str = "plain",
    depths: int | Sequence[int] = 1,
    stem: int | Sequence[Any] | None = None,
    preact: bool = False,
    shortcut: str = "conv",
    se_reduction: int | None = None,
    drop_path: float = 0.0,
    init: str = "torch",
    hidden: Sequence[int] = (128,),
    head_act: LayerSpec = INHERIT,
    head_norm: LayerSpec = None,
    head_dropout: float = 0.0,
    head_pool: str | None = None,
    features: nn.Module | None = None,
) -> CNN:
    """Build a CNN classifier: a stack of [`ConvBlock`][convkit.ConvBlock]s, then a
    flatten (or a global pool) and an [`MLPHead`][convkit.MLPHead], with sizes inferred.

    The length of ``input_shape`` sets the blocks' dimensions: ``(C, L)`` builds 1-D
    blocks (``nn.Conv1d``), ``(C, H, W)`` 2-D, ``(C, D, H, W)`` 3-D. Every per-block
    option takes one value for all blocks or a sequence with one entry per element of
    ``channels``. For ``kernel_size``, ``stride``, ``padding`` and ``pool_size`` a tuple
    with one int per spatial dimension is one value unless its length equals the number
    of blocks: with two 2-D blocks, ``kernel_size=(5, 3)`` means 5 for the first block and
    3 for the second; write ``[(5, 3), (5, 3)]`` for a non-square kernel in both.

    Args:
        input_shape: One sample's shape: ``(C, L)``, ``(C, H, W)`` (e.g. ``(1, 28, 28)``
            for MNIST) or ``(C, D, H, W)``.
        num_classes: Number of output logits.
        channels: Output channels of each block; its length is the number of blocks.
        kernel_size: Per block, see [`ConvBlock`][convkit.ConvBlock].
        stride: Per block.
        padding: Per block; ``"same"`` keeps ``ceil(size / stride)``.
        norm: Per block.
        act: Per block; also the head's activation unless ``head_act`` says otherwise.
        pool: Per block: ``"max"``, ``"avg"`` or ``None``.
        pool_size: Per block.
        dropout: Per block (``nn.Dropout1d/2d/3d``).
        order: Per block, e.g. ``"conv-pool-act-norm-dropout"``.
        block: The block family: ``"plain"`` (a [`ConvBlock`][convkit.ConvBlock] per
            entry of ``channels``), ``"residual"`` or ``"bottleneck"`` (stages of
            [`ResidualBlock`][convkit.ResidualBlock]s: ``channels`` gives each stage's
            width, ``stride`` the stride of its first block, ``pool``/``pool_size``/
            ``dropout`` close it; ``padding`` and ``order`` stay at their defaults).
        depths: Residual blocks per stage: an int, or one per entry of ``channels``.
        stem: ``None`` (default): no stem. A conv-norm-act stem before the stages:
            its output channels (3x3, stride 1), or ``(channels, kernel_size, stride)``
            such as ``(64, 7, 2)``; it uses the first stage's ``norm`` and ``act``.
        preact: Residual families: pre-activation blocks, and a final norm-act.
        shortcut: Residual families: ``"conv"`` or ``"avg"`` (ResNet-D) projections.
        se_reduction: Residual families: a squeeze-excite in every block.
        drop_path: Residual families: the stochastic-depth rate of the last block,
            growing linearly from 0 at the first.
        init: ``"torch"``, ``"kaiming"`` or (residual families) ``"zero_last"`` for the
            features, see [`init_weights`][convkit.init_weights].
        hidden: Widths of the head's hidden layers.
        head_act: The head's activation, as ``act`` in [`MLPHead`][convkit.MLPHead];
            ``None`` switches it off; ``"inherit"`` (default) uses ``act`` (its last entry
            when ``act`` is per block).
        head_norm: The head's norm: ``"batch"``, ``"layer"``, ``None`` or a callable.
        head_dropout: The head's dropout probability (``nn.Dropout``).
        head_pool: ``None`` (default): flatten the features, which ties the model to
            ``input_shape``. ``"avg"``, ``"max"`` or ``"avgmax"`` (the mean of both, as
            in timm): pool each channel over all positions first; the head then sees
            ``C`` values whatever the input size, and the model takes any input at least
            its ``min_input_shape`` (computed by [`convkit.shapes`][convkit.shapes]).
        features: Your own feature extractor instead of the generated blocks; then none
            of ``channels`` ... ``order`` may be given, except ``act``, which still sets
            the head's activation.

    Returns:
        A [`CNN`][convkit.CNN] (an ``nn.Sequential``) with children ``features``,
        ``global_pool`` (only with ``head_pool``), ``flatten`` and ``head``, in train
        mode, mapping ``(N, *input_shape)`` to ``(N, num_classes)``.

    Raises:
        ValueError: For a bad ``input_shape``, per-block sequences of the wrong length, a
            stack that shrinks the feature map to nothing (naming the block, its input
            shape and the smallest input the stack takes), block options given together
            with ``features``, or a ``features`` module that fails on the input (the
            original error is chained).
        TypeError: For arguments of the wrong type.

    Examples:
        Two conv blocks and one hidden layer of 200 for 28x28 grey images:

        >>> model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5,
        ...                   padding="valid", order="conv-pool-act-norm-dropout",
        ...                   dropout=0.25, hidden=(200,), head_norm="batch",
        ...                   head_dropout=0.25)
        >>> model.feature_shape, model.num_features
        ((64, 4, 4), 1024)
        >>> sum(p.numel() for p in model.parameters())
        259698
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])

        A 1-D CNN over sequences of 28 steps with 28 features each:

        >>> build_cnn((28, 28), 10, channels=(16,), head_pool="avg").features.block1.conv
        Conv1d(28, 16, kernel_size=(3,), stride=(1,), padding=(1,), bias=False)
    """
    shape = check_sample_shape(
        "input_shape",
        input_shape,
        (2, 3, 4),
        "(channels, length) for 1-D, (channels, height, "
        "width) for 2-D, e.g. (1, 28, 28), or (channels, depth, height, width) for 3-D",
    )
    check_positive_int("num_classes", num_classes)
    _check_head_args(hidden, head_act, head_norm, head_dropout, head_pool)
    given: dict[str, Any] = {
        "channels": channels,
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "norm": norm,
        "act": act,
        "pool": pool,
        "pool_size": pool_size,
        "dropout": dropout,
        "order": order,
    }
    family: dict[str, Any] = {
        "block": block,
        "depths": depths,
        "stem": stem,
        "preact": preact,
        "shortcut": shortcut,
        "se_reduction": se_reduction,
        "drop_path": drop_path,
        "init": init,
    }
    head_args = {
        "hidden": hidden,
        "head_act": head_act,
        "head_norm": head_norm,
        "head_dropout": head_dropout,
        "head_pool": head_pool,
    }
    if features is not None:
        _check_own_features(features, {**given, **family})
        feature_module: nn.Module = features
        config = None
    else:
        feature_module = _family_features(shape, given, family)
        config = _plain_config(
            {"input_shape": shape, "num_classes": num_classes, **given, **family, **head_args}
        )
    head_layer: Any = head_act
    if head_act == INHERIT:
        head_layer = act[-1] if isinstance(act, (list, tuple)) and act else act
        check_act("act", head_layer)
    return _assemble_cnn(
        feature_module,
        shape,
        num_classes,
        hidden=hidden,
        act=head_layer,
        norm=head_norm,
        dropout=head_dropout,
        head_pool=head_pool,
        config=config,
        verify_min_size=features is not None,
    )


def _family_features(
    shape: tuple[int, ...], given: dict[str, Any], family: dict[str, Any]
) -> nn.Module:
    return family_features(
        shape,
        block=family["block"],
        depths=family["depths"],
        stem=family["stem"],
        init=family["init"],
        residual={k: family[k] for k in RESIDUAL_DEFAULTS},
        options=given,
    )


def _check_own_features(features: Any, given: dict[str, Any]) -> None:
    if not isinstance(features, nn.Module):
        raise TypeError(
            "Invalid type for argument `features`. Expected an nn.Module mapping "
            f"(N, *input_shape) to features. Received {type(features).__name__}."
        )
    clashing = [k for k, v in given.items() if k != "act" and v != BUILD_CNN_DEFAULTS[k]]
    if clashing:
        raise ValueError(
            f"Invalid arguments: {', '.join(f'`{k}`' for k in clashing)} configure the "
            "generated blocks and can't be combined with `features=` (your own module "
            "replaces those blocks). Drop them, or drop `features`."
        )


# build_cnn's own defaults, read from its signature so that they can't drift
BUILD_CNN_DEFAULTS = {k: p.default for k, p in inspect.signature(build_cnn).parameters.items()}
