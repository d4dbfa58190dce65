"""Receptive fields: how large one output position's field is, and where it lies.

``receptive_field`` is ``r = 1 + sum_l D_l (K_l - 1) prod_{i<l} S_i`` over the layers
of the walk (Araujo et al., "Computing Receptive Fields of Convolutional Neural
Networks", Distill, 2019), generalised to layers whose field varies with the position
(upsampling, adaptive pooling, reflection padding) by taking the largest over all
positions. ``region`` follows one output unit back to the input through the same
layers: a window at ``i`` of a layer with stride ``S`` and ``P`` zeros before its input
starts at ``i * S - P``, and positions that fall into a later layer's zero padding
depend on nothing before it, so they are dropped on the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..utils.typing import model_input_shape
from .geometry import ElementWise
from .walk import Step, check_steps_dims, trace, walk

__all__ = ["layers_up_to", "receptive_field", "region"]

Sizes = Sequence[tuple[int, ...]]


def _extent(steps: Sequence[Step], d: int) -> int:
    """``sum_l D_l (K_l - 1) prod_{i<l} S_i`` along ``d``, for shift-invariant steps."""
    extent, jump = 0, 1  # jump: input positions between neighbouring outputs so far
    for step in steps:
        stride, _, reach = step.geometry.affine(d) or (1, 0, 0)
        extent += reach * jump
        jump *= stride
    return extent


def _span_back(
    steps: Sequence[Step], sizes: Sizes, d: int, unit: int, *, clip: bool
) -> tuple[int, int]:
    """The input positions ``(first, last)`` output ``unit`` depends on along ``d``.

    ``clip``: drop positions in the zero padding of every layer but the first, which is
    where a unit's dependence on the input really ends; otherwise only the layers
    whose field varies with the position see positions inside their output.
    """
    lo = hi = unit
    for i in range(len(steps) - 1, -1, -1):
        geometry = steps[i].geometry
        if clip or not geometry.shift_invariant:
            lo, hi = max(lo, 0), min(hi, sizes[i + 1][d] - 1)
        if lo > hi:
            return 1, 0
        lo, hi = geometry.span(d, lo, hi, sizes[i][d])
    return lo, hi


def field_of(steps: Sequence[Step], dims: int, sizes: Sizes | None) -> tuple[int, ...]:
    """The receptive field of ``steps``; ``sizes`` (from ``trace``) are needed only when a
    step's field varies with the position."""
    if all(step.geometry.shift_invariant for step in steps):
        return tuple(_extent(steps, d) + 1 for d in range(dims))
    if sizes is None:
        raise ValueError("sizes are needed for a position-dependent receptive field")
    field = []
    for d in range(dims):
        spans = (_span_back(steps, sizes, d, o, clip=False) for o in range(sizes[-1][d]))
        field.append(max((hi - lo + 1 for lo, hi in spans), default=0))
    return tuple(field)


def receptive_field(
    layers: nn.Module | Sequence[nn.Module], input_size: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Receptive field of one output position of a stack of layers, per dimension.

    ``r_L = 1 + sum_l D_l (K_l - 1) prod_{i<l} S_i`` over the layers of the walk (as
    [`output_size`][convkit.shapes.output_size] takes them; a residual block's shortcut,
    which runs beside its branch, doesn't count), for convolutions, pooling, pixel
    unshuffling and constant padding, whose field is the same at every position;
    element-wise layers don't change it. After upsampling, a transposed convolution,
    adaptive pooling or reflection, replication or circular padding the field varies
    with the position; then it is the largest over all output positions, which needs
    the input size.

    Args:
        layers: A model, or a sequence of layers, all 1-D, all 2-D or all 3-D.
        input_size: The input's spatial size, needed only for position-dependent
            fields; ``None``: the model's own ``input_shape`` (without the channels).

    Returns:
        The number of input positions (counting the zero padding the windows read) one
        output position depends on: ``(r,)`` for 1-D layers, ``(r_h, r_w)`` for 2-D
        (also when there are no such layers), ``(r_d, r_h, r_w)`` for 3-D.

    Raises:
        ValueError: If the layers mix 1-D, 2-D and 3-D, a layer's geometry is unknown, or
            the field depends on the position and no input size is known.

    Examples:
        >>> receptive_field([nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)])
        (5, 5)
        >>> receptive_field([nn.Conv2d(1, 1, 5), nn.MaxPool2d(2), nn.Conv2d(1, 1, 5)])
        (14, 14)
        >>> receptive_field([nn.Conv1d(1, 1, 3, dilation=2)])
        (5,)
        >>> receptive_field([nn.Upsample(scale_factor=2), nn.Conv2d(1, 1, 3)], (8, 8))
        (2, 2)
    """
    steps = walk(layers)
    dims = check_steps_dims(steps) or (len(input_size) if input_size is not None else 2)
    varying = next((step for step in steps if not step.geometry.shift_invariant), None)
    if varying is None:
        return field_of(steps, dims, None)
    if input_size is None:
        shape = model_input_shape(layers)
        if shape is None:
            raise ValueError(
                f"Missing argument `input_size`: after {type(varying.layer).__name__} "
                f"({varying.name}) the receptive field depends on the position and on the "
                "input size. Pass the input's spatial size, e.g. "
                f"receptive_field(layers, {(32,) * dims})."
            )
        input_size = shape[1:]
    return field_of(steps, dims, trace(steps, input_size))


def layers_up_to(model: nn.Module, name: str) -> list[Step]:
    """The walk of a 2-D ``model`` up to the end of its layer (or block) ``name``.

    Raises:
        ValueError: If ``name`` is not on the walk (a residual block's shortcut runs
            beside it), or a layer up to it is 1-D or 3-D.
    """
    steps = walk(model, "model")
    ends = [i for i, s in enumerate(steps) if s.name == name or s.name.startswith(f"{name}.")]
    if not ends:
        raise ValueError(
            f"Invalid value for argument `layer`: {name} is not on the path that sets the "
            "model's output size (a residual block's shortcut runs beside it). Pick a "
            "layer or block of the main path."
        )
    steps = steps[: ends[-1] + 1]
    others = [s.name for s in steps if s.geometry.dims not in (None, 2)]
    if others:
        raise ValueError(
            "Invalid value for argument `model`. Expected 2-D convolutions and pooling for a "
            f"receptive-field plot. Received a model with 1-D/3-D layers: {', '.join(others)}."
        )
    return steps


def region(
    steps: Sequence[Step], position: Sequence[int], input_size: Sequence[int]
) -> tuple[int, ...]:
    """Where the receptive field of the unit at ``position`` lies in the input.

    Args:
        steps: The walk up to the unit's layer (``layers_up_to``).
        position: The unit's index along each spatial dimension.
        input_size: The input's spatial size.

    Returns:
        ``(*first, *length)``: for 2-D, ``(top, left, height, width)``. Inside the input
        it is exactly the pixels the unit depends on; it reaches outside (a negative
        start, or past the far edge) where the first layer's windows read the zero
        padding around the input. A length of 0: the unit depends on no input pixel.
    """
    moving = [s for s in steps if not isinstance(s.geometry, ElementWise)]
    sizes = trace(moving, input_size)
    spans = [_span_back(moving, sizes, d, unit, clip=True) for d, unit in enumerate(position)]
    return (*(lo for lo, _ in spans), *(max(hi - lo + 1, 0) for lo, hi in spans))
