"""``summary``: a per-layer table of shapes, parameters, MACs and receptive fields.

Like Keras' ``model.summary()`` and torchinfo's table: one sample runs through the model
(nothing in it changes) and each leaf layer's output is recorded; the MACs and receptive
fields come from the formulas of ``convkit.shapes`` along the one layer walk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..utils.display import html_table
from ..utils.probe import infer_output_shape
from ..utils.typing import model_input_shape
from ..utils.validation import check_sample_shape
from . import torch_layers as T
from .formulas import conv_macs
from .receptive import field_of
from .walk import check_steps_dims, trace, walk

__all__ = ["ModelSummary", "summary"]


@dataclass
class ModelSummary:
    """Per-layer table returned by [`summary`][convkit.shapes.summary]; ``print`` it.

    Attributes:
        rows: One dict per leaf layer: ``name``, ``type``, ``output_shape``, ``params``,
            ``macs``, ``receptive_field``.
        input_shape: The input shape the summary was made for (without the batch).
        total_params: All parameters of the model.
        trainable_params: Those with ``requires_grad``.
        total_macs: Multiply-accumulates of one forward pass on one sample.

    Examples:
        >>> from convkit import build_cnn
        >>> table = summary(build_cnn((1, 28, 28), 10, channels=(8,), hidden=()), (1, 28, 28))
        >>> table.total_params == sum(row["params"] for row in table.rows)
        True
        >>> table.rows[0]["name"], table.rows[0]["output_shape"]
        ('features.block1.conv', (8, 28, 28))
    """

    rows: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    total_macs: int

    _HEADER = ("Layer", "Type", "Output shape", "Params", "MACs", "RF")

    def _cells(self) -> list[tuple[str, ...]]:
        return [
            (
                row["name"],
                row["type"],
                str(tuple(row["output_shape"])),
                f"{row['params']:,}",
                f"{row['macs']:,}",
                "x".join(map(str, row["receptive_field"])),
            )
            for row in self.rows
        ]

    def _totals(self) -> list[str]:
        return [
            f"Total params: {self.total_params:,} (trainable: {self.trainable_params:,})",
            f"Total MACs per sample: {self.total_macs:,}",
        ]

    def __str__(self) -> str:
        header, body = self._HEADER, self._cells()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        lines = [f"Input shape: {self.input_shape}", rule]
        for i, cells in enumerate([header, *body]):
            lines.append(
                "  ".join(
                    cell.rjust(w) if j >= 3 else cell.ljust(w)
                    for j, (cell, w) in enumerate(zip(cells, widths, strict=True))
                )
            )
            if i == 0:
                lines.append(rule)
        return "\n".join([*lines, rule, *self._totals()])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return html_table(
            self._HEADER,
            self._cells(),
            caption=f"Input shape: {self.input_shape}",
            footer=self._totals(),
            numeric_from=3,
        )


def _macs(layer: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """Multiply-accumulates of one layer on one sample (0 for layers without weights).

    As ``torch.utils.flop_counter`` counts them (one MAC is two FLOPs): convolutions,
    transposed convolutions and linear layers; pooling, upsampling and norms add none.
    """
    conv: Any = layer
    if isinstance(layer, tuple(T.CONV.values())):
        kernel = tuple(conv.weight.shape[2:])
        out = tuple(int(n) for n in output.shape[2:])
        return conv_macs(conv.in_channels, conv.out_channels, kernel, out, groups=conv.groups)
    if isinstance(layer, tuple(T.CONV_TRANSPOSE.values())):
        # the gradient of a convolution from out_channels to in_channels whose output is
        # this layer's input: every input position meets every kernel tap once
        kernel = tuple(conv.weight.shape[2:])
        size = tuple(int(n) for n in inputs.shape[2:])
        return conv_macs(conv.out_channels, conv.in_channels, kernel, size, groups=conv.groups)
    if isinstance(layer, nn.Linear):
        rows = math.prod(output.shape[1:-1])  # one product per position for N-D inputs
        return layer.in_features * layer.out_features * rows
    return 0


def _summary_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = model_input_shape(model)
        if input_shape is None:
            raise TypeError(
                "Missing argument `input_shape`: this model has no `input_shape` attribute "
                f"({type(model).__name__}), so summary can't know what to run. Pass one "
                "sample's shape, e.g. summary(model, (1, 28, 28))."
            )
    return check_sample_shape(
        "input_shape", input_shape, None, "one sample's shape, e.g. (1, 28, 28)"
    )


@dataclass
class _Record:
    """One leaf layer's call: the layer and its input and output tensors."""

    layer: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


def _run(model: nn.Module, shape: tuple[int, ...]) -> list[_Record]:
    """Each leaf layer's call on one zero sample, in order (nothing in the model changes)."""
    records: list[_Record] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        first = inputs[0] if inputs else None
        if isinstance(output, torch.Tensor) and isinstance(first, torch.Tensor):
            records.append(_Record(module, first, output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        infer_output_shape(model, shape)  # eval mode, no_grad, modes restored
    finally:
        for handle in handles:
            handle.remove()
    return records


def summary(model: nn.Module, input_shape: Sequence[int] | None = None) -> ModelSummary:
    """A per-layer table like Keras' ``model.summary()``: shapes, parameters, MACs, RF.

    Runs one sample through the model in eval mode under ``no_grad`` and restores every
    submodule's mode afterwards, so no parameter, buffer (BatchNorm statistics) or mode
    changes. Also available as ``convkit.summary``.

    Args:
        model: Any model whose leaf layers run in order.
        input_shape: One sample's shape, e.g. ``(1, 28, 28)``; ``None`` (default): the
            model's own ``input_shape`` attribute (models from
            [`build_cnn`][convkit.build_cnn] have one).

    Returns:
        A [`ModelSummary`][convkit.shapes.ModelSummary]: ``print`` it, or read ``rows``.

    Raises:
        TypeError: If ``model`` isn't an ``nn.Module``, or ``input_shape`` is ``None``
            and the model has no ``input_shape``.
        ValueError: If ``input_shape`` isn't a sequence of positive ints.

    Examples:
        >>> from convkit import build_cnn
        >>> table = summary(build_cnn((1, 28, 28), 10, channels=(8,), hidden=()))
        >>> [row["name"] for row in table.rows]
        ['features.block1.conv', 'features.block1.norm', 'features.block1.act', \
'features.block1.pool', 'flatten', 'head.output']
        >>> table.rows[0]["output_shape"], table.rows[0]["receptive_field"]
        ((8, 28, 28), (3, 3))
        >>> table.total_params == sum(p.numel() for p in build_cnn((1, 28, 28), 10,
        ...                               channels=(8,), hidden=()).parameters())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "Invalid type for argument `model`. Expected an nn.Module. "
            f"Received {type(model).__name__}."
        )
    shape = _summary_input_shape(model, input_shape)
    steps = {id(step.layer): step for step in walk(model, "model")}  # refuses unknown layers
    records = _run(model, shape)
    # the walk's layers in the order they ran: a residual block's shortcut runs beside it
    path = [steps[id(r.layer)] for r in records if id(r.layer) in steps]
    sizes = trace(path, shape[1:])
    dims = check_steps_dims(path) or len(shape) - 1
    names = {id(module): name for name, module in model.named_modules()}
    rows, done = [], 0
    for record in records:
        if id(record.layer) in steps:
            done += 1
        rows.append(
            {
                "name": names.get(id(record.layer), type(record.layer).__name__),
                "type": type(record.layer).__name__,
                "output_shape": tuple(record.output.shape[1:]),
                "params": sum(p.numel() for p in record.layer.parameters(recurse=False)),
                "macs": _macs(record.layer, record.inputs, record.output),
                "receptive_field": field_of(path[:done], dims, sizes[: done + 1]),
            }
        )
    return ModelSummary(
        rows=rows,
        input_shape=shape,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(row["macs"] for row in rows),
    )
