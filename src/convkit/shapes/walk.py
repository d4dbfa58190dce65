"""The one layer walk: the layers a model's output size and receptive field go through.

``walk(model)`` lists a model's leaf layers in registration order,
which is the order of computation for sequential models such as
[`ConvBlock`][convkit.ConvBlock] (in any ``order``) and those
[`build_cnn`][convkit.build_cnn] makes, and follows a block's
[`SpatialPath`][convkit.shapes.SpatialPath] where it has one (a residual block's
branch, not its shortcut). Every stack function of ``convkit.shapes`` (output sizes,
smallest inputs, receptive fields and their regions, ``summary``) reads this one list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from ..utils.validation import check_positive_int
from .geometry import Geometry, geometry

__all__ = [
    "SpatialPath",
    "Step",
    "layer_output_size",
    "min_input_size",
    "output_size",
    "trace",
    "walk",
]


@runtime_checkable
class SpatialPath(Protocol):
    """A block whose children don't all run one after another, such as a residual block.

    ``spatial_path`` lists the children that set the block's output size and receptive
    field, in the order they run (a residual block's branch; its shortcut runs beside
    it). The stack functions here walk that path instead of every child. A layer of
    your own that keeps every position where it is (an element-wise layer) can return
    ``[]``, so that the stack functions measure it as such.

    Examples:
        >>> from convkit import ResidualBlock
        >>> block = ResidualBlock(8, 16, stride=2)
        >>> isinstance(block, SpatialPath), [type(m).__name__ for m in block.spatial_path()]
        (True, ['ConvBlock', 'ConvBlock'])
    """

    def spatial_path(self) -> list[nn.Module]:
        """The children on the block's longest path, in order of computation."""


@dataclass(frozen=True)
class Step:
    """One leaf layer on the walk: its name in the model, the layer and its geometry."""

    name: str
    layer: nn.Module
    geometry: Geometry


def _visit(name: str, module: nn.Module, steps: list[Step], arg: str) -> None:
    if isinstance(module, SpatialPath):
        names = {id(m): n for n, m in module.named_modules() if n}
        for child in module.spatial_path():
            child_name = names.get(id(child), type(child).__name__)
            _visit(f"{name}.{child_name}" if name else child_name, child, steps, arg)
        return
    children = list(module.named_children())
    for child_name, child in children:
        _visit(f"{name}.{child_name}" if name else child_name, child, steps, arg)
    if not children:
        steps.append(Step(name, module, geometry(module, name, arg)))


def walk(layers: nn.Module | Sequence[nn.Module], name: str = "layers") -> list[Step]:
    """The leaf layers of a model (or of a sequence of modules) on its spatial path.

    Args:
        layers: A model, or a sequence of layers and blocks applied in order.
        name: The argument's name, for error messages.

    Returns:
        One ``Step`` per leaf layer, in order of computation.

    Raises:
        TypeError: If ``layers`` is neither.
        ValueError: For a layer whose geometry convkit doesn't know, naming it.
    """
    if isinstance(layers, nn.Module):
        roots: list[tuple[str, nn.Module]] = [("", layers)]
    elif isinstance(layers, Sequence) and all(isinstance(m, nn.Module) for m in layers):
        roots = [(str(i), m) for i, m in enumerate(layers)]
    else:
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an nn.Module or a sequence of "
            f"nn.Module layers. Received {type(layers).__name__}."
        )
    steps: list[Step] = []
    for root_name, module in roots:
        _visit(root_name, module, steps, name)
    return steps


def _check_dims(step: Step, size: tuple[int, ...], arg: str = "size") -> None:
    dims = step.geometry.dims
    if dims is not None and len(size) != dims:
        raise ValueError(
            f"Invalid value for argument `{arg}`: {type(step.layer).__name__} is {dims}-D, so "
            f"`{arg}` needs {dims} entries (one per spatial dimension). Received "
            f"{arg}={size!r}."
        )


def _step_output(step: Step, size: tuple[int, ...]) -> tuple[int, ...]:
    _check_dims(step, size)
    length = step.geometry.length
    return tuple(length(d, n) if n >= 1 else n for d, n in enumerate(size))


def trace(steps: Sequence[Step], size: Sequence[int]) -> list[tuple[int, ...]]:
    """The spatial size before each step and after the last (``len(steps) + 1`` sizes).

    A dimension whose size is already below 1 stays as it is.
    """
    sizes = [tuple(size)]
    for step in steps:
        sizes.append(_step_output(step, sizes[-1]))
    return sizes


def layer_output_size(layer: nn.Module, size: Sequence[int]) -> tuple[int, ...]:
    """Spatial output size of one layer for an input of spatial size ``size``.

    Convolutions (``nn.Conv1d/2d/3d``, also with ``padding="same"`` and any
    ``padding_mode``), transposed convolutions (with ``output_padding`` and
    ``dilation``), max, average and power-average pooling (with their padding,
    dilation and ``ceil_mode``), adaptive pooling, ``nn.Upsample`` (``size`` or
    ``scale_factor``), ``nn.PixelShuffle`` / ``nn.PixelUnshuffle`` and the padding
    layers (``nn.ZeroPad2d``, ``nn.ConstantPad2d``, ``nn.ReflectionPad2d``,
    ``nn.ReplicationPad2d``, ``nn.CircularPad2d``, in 1-D, 2-D and 3-D) change the
    size; element-wise layers (norms, activations, dropout, ``Flatten``, ``Linear``)
    keep it; any other layer is refused. A module with children is measured through
    them, as [`output_size`][convkit.shapes.output_size] does. A dimension whose size is
    already below 1 stays as it is. ``nn.AvgPool3d`` counts as too small for an input
    smaller than its window, padding or not, as torch refuses it.

    Args:
        layer: An ``nn.Module``.
        size: The input's spatial size, one int per dimension (``(L,)``, ``(H, W)`` or
            ``(D, H, W)``).

    Returns:
        The output's spatial size. A value below 1 means the input is too small.

    Raises:
        ValueError: If ``size`` doesn't have one entry per dimension of the layer, or
            the layer's geometry is unknown (the message names it).

    Examples:
        >>> layer_output_size(nn.Conv2d(1, 8, 5), (28, 28))
        (24, 24)
        >>> layer_output_size(nn.MaxPool1d(2), (7,))
        (3,)
        >>> layer_output_size(nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), (7, 7))
        (14, 14)
        >>> layer_output_size(nn.Upsample(scale_factor=1.5), (7, 8))
        (10, 12)
    """
    return trace(walk(layer, "layer"), size)[-1]


def output_size(layers: nn.Module | Sequence[nn.Module], size: Sequence[int]) -> tuple[int, ...]:
    """Spatial output size of a stack of layers, applied in order.

    The layers are those of the one layer walk: registration order, which
    is the order of computation for sequential models such as
    [`ConvBlock`][convkit.ConvBlock] (in any ``order``) and those
    [`build_cnn`][convkit.build_cnn] makes, following a block's
    [`SpatialPath`][convkit.shapes.SpatialPath].

    Args:
        layers: A model, or a sequence of layers.
        size: The input's spatial size, one int per dimension.

    Returns:
        The output's spatial size. A value below 1 means the input is too small.

    Raises:
        ValueError: As [`layer_output_size`][convkit.shapes.layer_output_size].

    Examples:
        >>> output_size([nn.Conv2d(1, 8, 5), nn.MaxPool2d(2)], (28, 28))
        (12, 12)
    """
    return trace(walk(layers), size)[-1]


def _search_smallest(measure: Callable[[tuple[int, ...]], Sequence[int]], dims: int) -> list[int]:
    """Per dimension, the smallest input a size function maps to at least 1 (by search)."""
    smallest = []
    for d in range(dims):

        def length(n: int, d: int = d) -> int:
            return int(measure(tuple(n if i == d else 1 << 20 for i in range(dims)))[d])

        high = 1
        while length(high) < 1:  # grows at most linearly with the input: doubling ends
            high *= 2
        low = high // 2  # length(low) < 1 or low == 0
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if length(mid) >= 1 else (mid, high)
        smallest.append(high)
    return smallest


def _invert(steps: Sequence[Step], dims: int) -> list[int]:
    """Per dimension, the smallest input the steps map to at least 1, from the last
    step back: each layer's output only grows with its input, so the smallest input of
    a stack is the smallest input of its first layer that gives what the rest need."""
    need = [1] * dims
    for step in reversed(steps):
        _check_dims(step, tuple(need), arg="dims")
        for d in range(dims):
            smallest = step.geometry.min_length(d, need[d])
            if smallest is None:
                out = step.geometry.length(d, 1 << 20)
                raise ValueError(
                    f"Invalid value for argument `layers`: no input is large enough, because "
                    f"{type(step.layer).__name__} ({step.name}) always outputs {out} positions "
                    f"along dimension {d + 1} and the layers after it need at least {need[d]}."
                )
            need[d] = max(1, smallest)
    return need


def min_input_size(
    layers: nn.Module | Sequence[nn.Module] | Callable[[tuple[int, ...]], Sequence[int]],
    dims: int,
) -> tuple[int, ...]:
    """The smallest spatial input size for which a stack of layers outputs at least 1.

    Output sizes never shrink when the input grows, so every larger input works too
    (except that ``nn.PixelUnshuffle`` also needs sizes divisible by its factor). For
    layers, the size is found from the last layer back to the first, one layer at a
    time, so it costs a few evaluations per layer, however many layers there are.

    Args:
        layers: A model or a sequence of layers (walked as in
            [`output_size`][convkit.shapes.output_size]), or a function mapping an
            input's spatial size to the output's, which is searched by bisection.
        dims: The number of spatial dimensions (1, 2 or 3).

    Returns:
        One int per dimension.

    Raises:
        ValueError: If no input is large enough (a layer with a fixed output size,
            smaller than what the layers after it need), or as ``output_size``.

    Examples:
        >>> min_input_size([nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.Conv2d(8, 8, (3, 5))], 2)
        (10, 14)
    """
    check_positive_int("dims", dims)
    if isinstance(layers, nn.Module) or not callable(layers):
        return tuple(_invert(walk(layers), dims))
    return tuple(_search_smallest(layers, dims))


def check_steps_dims(steps: Sequence[Step], arg: str = "layers") -> int | None:
    """The one number of spatial dimensions of the steps' layers (``None``: no such layer).

    Raises:
        ValueError: If the layers mix 1-D, 2-D and 3-D.
    """
    all_dims = sorted({s.geometry.dims for s in steps if s.geometry.dims is not None})
    if len(all_dims) > 1:
        raise ValueError(
            f"Invalid value for argument `{arg}`: they mix "
            f"{' and '.join(f'{d}-D' for d in all_dims)} layers; a receptive field is "
            "defined for layers of one dimensionality."
        )
    return all_dims[0] if all_dims else None
