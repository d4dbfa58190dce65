"""``build_cnn``: a CNN from a few numbers, with the flattened size inferred for you.

The teaching notebook hard-codes ``nn.Linear(1024, 200)`` and breaks as soon as the
input or a block changes; here the size is worked out once, at construction, with a
dry run that leaves every parameter, buffer and train/eval flag as it was, and the
head is a plain ``nn.Linear`` (no lazy modules).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._layers import NORMS_2D, check_act, check_norm, check_pool
from ._typing import IntOrPair, LayerSpec, Padding
from ._validation import check_positive_int, check_positive_int_sequence
from .blocks import ConvBlock, Flatten
from .heads import MLPHead

__all__ = ["CNN", "build_cnn"]


class CNN(nn.Sequential):
    """The model [`build_cnn`][convkit.build_cnn] returns: ``features -> flatten -> head``.

    An ``nn.Sequential`` with three named children, so it prints, indexes and saves
    like any other; it also remembers the shapes it was built for.

    Attributes:
        input_shape: ``(C, H, W)`` of one input sample.
        feature_shape: Shape of one sample after ``features``, usually ``(C, H, W)``.
        num_features: ``prod(feature_shape)``, the input size of the head.
        num_classes: Size of the output.
        config: ``build_cnn``'s arguments as plain, JSON-able data, or ``None`` when they
            can't be (custom ``features`` or layer factories).
    """

    input_shape: tuple[int, ...]
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
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.flatten = Flatten()
        self.head = head
        self.input_shape = input_shape
        self.feature_shape = feature_shape
        self.num_features = head.in_features
        self.num_classes = head.out_features
        self.config = config

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.features(input)  # (N, C, H, W) -> (N, C', H', W')
        x = self.flatten(x)  # (N, C', H', W') -> (N, C'*H'*W')
        if x.shape[-1] != self.num_features:
            dims = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"This CNN was built for inputs of shape (N, {dims})"
                f" whose features flatten to {self.num_features} values; the input of shape "
                f"{tuple(input.shape)} flattens to {x.shape[-1]}. Rebuild it with "
                f"build_cnn(input_shape={tuple(input.shape[1:])}, ...)."
            )
        logits: torch.Tensor = self.head(x)  # (N, num_features) -> (N, num_classes)
        return logits


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _per_block(name: str, value: Any, n: int, *, pair_ok: bool = False) -> list[Any]:
    """Broadcast one value to ``n`` blocks, or check a sequence has one entry per block.

    For int-or-pair options (``pair_ok``) a sequence of length ``n`` is per-block; a pair
    of ints is otherwise one ``(h, w)`` value for all blocks.
    """
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if pair_ok and _is_pair(value):
            return [tuple(value)] * n
        raise ValueError(
            f"Invalid value for argument `{name}`: a sequence must have one entry per block, "
            f"i.e. {n} entries for channels of length {n}. Received {name}={value!r} with "
            f"{len(value)} entries. Pass a single value to use it for every block."
        )
    return [value] * n


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)
    ):
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected three positive ints "
            f"(channels, height, width), e.g. (1, 28, 28). Received input_shape={input_shape!r}."
        )
    return (input_shape[0], input_shape[1], input_shape[2])


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    return False


def _infer_output_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample after ``module``, found by a dry run that changes nothing.

    The run is in eval mode (BatchNorm reads its running statistics instead of updating
    them, dropout is off) under ``no_grad``, on one zero sample on the module's own
    device and dtype; every submodule's train/eval flag is restored afterwards.
    """
    tensor: torch.Tensor | None = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    modes = {sub: sub.training for sub in module.modules()}
    probe = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    try:
        module.eval()
        with torch.no_grad():
            output = module(probe)
    except Exception as err:
        raise ValueError(
            f"Invalid value for argument `features`: the module failed on an input of shape "
            f"{tuple(probe.shape)} (batch of 1, input_shape={tuple(input_shape)}): {err}. "
            "Check that `input_shape` matches what `features` expects."
        ) from err
    finally:
        for sub, training in modes.items():
            sub.training = training
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise ValueError(
            "Invalid value for argument `features`: it must return a tensor of shape "
            f"(N, ...); on an input of shape {tuple(probe.shape)} it returned "
            f"{output.shape if isinstance(output, torch.Tensor) else type(output).__name__}."
        )
    return tuple(output.shape[1:])


def build_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64),
    kernel_size: IntOrPair | Sequence[IntOrPair] = 3,
    stride: IntOrPair | Sequence[IntOrPair] = 1,
    padding: Padding | Sequence[Padding] = "same",
    norm: LayerSpec | Sequence[LayerSpec] = "batch",
    act: LayerSpec | Sequence[LayerSpec] = "relu",
    pool: str | Sequence[str | None] | None = "max",
    pool_size: IntOrPair | Sequence[IntOrPair] = 2,
    dropout: float | Sequence[float] = 0.0,
    order: str | Sequence[str] = "conv-norm-act-pool-dropout",
    hidden: Sequence[int] = (128,),
    head_act: LayerSpec = None,
    head_norm: LayerSpec = None,
    head_dropout: float = 0.0,
    features: nn.Module | None = None,
) -> CNN:
    """Build a CNN classifier: a stack of [`ConvBlock`][convkit.ConvBlock]s, a flatten and
    an [`MLPHead`][convkit.MLPHead], with the flattened size inferred.

    Every per-block option takes one value for all blocks or a sequence with one entry per
    element of ``channels``. For ``kernel_size``, ``stride``, ``padding`` and ``pool_size``
    a pair of ints is one ``(h, w)`` value unless its length equals the number of blocks:
    with two blocks, ``kernel_size=(5, 3)`` means 5 for the first block and 3 for the
    second; write ``[(5, 3), (5, 3)]`` for a non-square kernel in both.

    Args:
        input_shape: ``(C, H, W)`` of one sample, e.g. ``(1, 28, 28)`` for MNIST.
        num_classes: Number of output logits.
        channels: Output channels of each block; its length is the number of blocks.
        kernel_size: Per block, see [`ConvBlock`][convkit.ConvBlock].
        stride: Per block.
        padding: Per block; ``"same"`` keeps ``ceil(H / stride)``.
        norm: Per block.
        act: Per block; also the head's activation unless ``head_act`` is given.
        pool: Per block: ``"max"``, ``"avg"`` or ``None``.
        pool_size: Per block.
        dropout: Per block (``nn.Dropout2d``).
        order: Per block, e.g. ``"conv-pool-act-norm-dropout"`` (the notebook's).
        hidden: Widths of the head's hidden layers.
        head_act: The head's activation; ``None`` means the same as ``act`` (its last
            entry when ``act`` is per block).
        head_norm: The head's norm: ``"batch"``, ``"layer"``, ``None`` or a callable.
        head_dropout: The head's dropout probability (``nn.Dropout``).
        features: Your own feature extractor instead of the generated blocks; then none
            of ``channels`` ... ``order`` may be given, except ``act``, which still sets
            the head's activation.

    Returns:
        A [`CNN`][convkit.CNN] (an ``nn.Sequential``) with children ``features``,
        ``flatten`` and ``head``, in train mode, mapping ``(N, *input_shape)`` to
        ``(N, num_classes)``.

    Raises:
        ValueError: For a bad ``input_shape``, per-block sequences of the wrong length, a
            stack that shrinks the feature map to nothing (naming the block and its input
            shape), block options given together with ``features``, or a ``features``
            module that fails on the input (the original error is chained).
        TypeError: For arguments of the wrong type.

    Examples:
        The network of the teaching notebook, layer for layer:

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
    """
    shape = _check_input_shape(input_shape)
    check_positive_int("num_classes", num_classes)
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
    if features is not None:
        if not isinstance(features, nn.Module):
            raise TypeError(
                "Invalid type for argument `features`. Expected an nn.Module mapping "
                f"(N, *input_shape) to features. Received {type(features).__name__}."
            )
        # build_cnn's own defaults, read from its signature so that they can't drift
        defaults = {k: p.default for k, p in inspect.signature(build_cnn).parameters.items()}
        clashing = [k for k, v in given.items() if k != "act" and v != defaults[k]]
        if clashing:
            raise ValueError(
                f"Invalid arguments: {', '.join(f'`{k}`' for k in clashing)} configure the "
                "generated blocks and can't be combined with `features=` (your own module "
                "replaces those blocks). Drop them, or drop `features`."
            )
        feature_module = features
        config = None
    else:
        feature_module = _build_features(shape, **given)
        config = None
        head_args = {
            "hidden": hidden,
            "head_act": head_act,
            "head_norm": head_norm,
            "head_dropout": head_dropout,
        }
        all_args = {"input_shape": shape, "num_classes": num_classes, **given, **head_args}
        if _jsonable(list(all_args.values())):
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in all_args.items()}

    if isinstance(act, (list, tuple)):
        last_act = act[-1] if act else None
        check_act("act", last_act)
    else:
        last_act = act
    feature_shape = _infer_output_shape(feature_module, shape)
    head = MLPHead(
        math.prod(feature_shape),
        num_classes,
        hidden,
        act=last_act if head_act is None else head_act,
        norm=head_norm,
        dropout=head_dropout,
    )
    return CNN(feature_module, head, input_shape=shape, feature_shape=feature_shape, config=config)


def _build_features(
    input_shape: tuple[int, int, int],
    *,
    channels: Sequence[int],
    kernel_size: Any,
    stride: Any,
    padding: Any,
    norm: Any,
    act: Any,
    pool: Any,
    pool_size: Any,
    dropout: Any,
    order: Any,
) -> nn.Sequential:
    """The generated ``features`` stack, ``block1`` ... ``blockN``, with shapes checked."""
    check_positive_int_sequence(
        "channels", channels, example="(32, 64), one per block", allow_empty=False
    )
    n = len(channels)
    per_block = {
        "kernel_size": _per_block("kernel_size", kernel_size, n, pair_ok=True),
        "stride": _per_block("stride", stride, n, pair_ok=True),
        "padding": _per_block("padding", padding, n, pair_ok=True),
        "norm": _per_block("norm", norm, n),
        "act": _per_block("act", act, n),
        "pool": _per_block("pool", pool, n),
        "pool_size": _per_block("pool_size", pool_size, n, pair_ok=True),
        "dropout": _per_block("dropout", dropout, n),
        "order": _per_block("order", order, n),
    }
    for i in range(n):  # name-checks first, so a bad name is reported for all blocks
        check_norm("norm", per_block["norm"][i], NORMS_2D)
        check_pool("pool", per_block["pool"][i])

    stack = nn.Sequential()
    c_in, h, w = input_shape
    for i, c_out in enumerate(channels):
        options = {key: values[i] for key, values in per_block.items()}
        try:
            block = ConvBlock(c_in, c_out, **options)
        except (TypeError, ValueError) as err:
            where = f"block {i + 1} of {n}" if n > 1 else "the block"
            raise type(err)(f"{err} (in {where}, built from channels[{i}]={c_out})") from None
        h_out, w_out = block.output_size((h, w))
        if h_out < 1 or w_out < 1:
            raise ValueError(
                f"The feature map shrinks to nothing: block {i + 1} of {n} (kernel_size="
                f"{options['kernel_size']}, stride={options['stride']}, padding="
                f"{options['padding']!r}, pool={options['pool']!r}) receives an input of shape "
                f"{(c_in, h, w)} and would output a {h_out}x{w_out} map. Use padding='same', "
                f"fewer blocks (channels={tuple(channels[:i])}) or a larger input than "
                f"input_shape={input_shape}."
            )
        stack.add_module(f"block{i + 1}", block)
        c_in, h, w = c_out, h_out, w_out
    return stack
