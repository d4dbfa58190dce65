"""Classifier heads: ``MLPHead``, a stack of fully connected layers.

Shaped like torchvision's ``ops.MLP``: hidden ``Linear`` layers, each followed by its
activation / norm / dropout stages, then one output ``Linear`` with nothing after it
(the logits go straight to ``nn.CrossEntropyLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..utils.typing import LayerSpec
from ..utils.validation import (
    check_positive_int,
    check_positive_int_sequence,
    check_probability,
    parse_order,
)
from .create import FEATURE_NORMS, check_act, check_norm, create_act, create_norm

__all__ = ["MLPHead"]

STAGES = ("linear", "act", "norm", "dropout")


class MLPHead(nn.Sequential):
    """Fully connected layers mapping ``(N, in_features)`` to ``(N, out_features)``.

    For each width in ``hidden``: a ``Linear`` followed by the stages in ``order``
    (children ``linear1``, ``act1``, ``norm1``, ``dropout1``, then ``linear2``, ...). Then
    a final ``Linear`` to ``out_features`` named ``output``, with nothing after it.

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample (e.g. the number of classes).
        hidden: Widths of the hidden layers; ``()`` makes a single ``Linear``.
        act: Activation after each hidden layer: a name as in
            [`ConvBlock`][convkit.ConvBlock], an ``nn.Module`` subclass, a factory, a
            module instance (copied), or ``None``.
        norm: ``"batch"`` (``BatchNorm1d``), ``"layer"`` (``LayerNorm``), ``None``, or a
            callable ``num_features -> nn.Module``.
        dropout: Probability in ``[0, 1)`` for ``nn.Dropout`` after each hidden layer.
        order: Dash-separated stages after each hidden ``Linear``, each at most once and
            starting with ``linear``, e.g. ``"linear-act-norm-dropout"`` (default) or
            ``"linear-norm-act-dropout"``.

    Attributes:
        in_features: As given.
        out_features: As given.

    Raises:
        ValueError: For non-positive sizes, unknown names, a bad ``order`` or
            ``dropout`` outside ``[0, 1)``.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> head = MLPHead(1024, 10, hidden=(200,), norm="batch", dropout=0.25)
        >>> [name for name, _ in head.named_children()]
        ['linear1', 'act1', 'norm1', 'dropout1', 'output']
        >>> head(torch.zeros(4, 1024)).shape
        torch.Size([4, 10])
    """

    in_features: int
    out_features: int

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (),
        *,
        act: LayerSpec = "relu",
        norm: LayerSpec = None,
        dropout: float = 0.0,
        order: str = "linear-act-norm-dropout",
    ) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int_sequence("hidden", hidden, example="(128,) or ()", allow_empty=True)
        check_act("act", act)
        check_norm("norm", norm, FEATURE_NORMS, dims=0)
        p_drop = check_probability("dropout", dropout)
        stages = parse_order("order", order, STAGES, required="linear")
        if stages[0] != "linear":
            raise ValueError(
                "Invalid value for argument `order`: it must start with 'linear' (the stages "
                f"that follow each hidden Linear). Received order={order!r}."
            )
        enabled = {"act": act is not None, "norm": norm is not None, "dropout": p_drop > 0}
        for stage, on in enabled.items():
            if on and stage not in stages:
                raise ValueError(
                    f"Invalid value for argument `order`: {stage!r} is switched on but not in "
                    f"order={order!r}. Add it to `order` or switch the stage off."
                )

        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        width_in = in_features
        for index, width in enumerate(hidden, start=1):
            for stage in stages:
                layer: nn.Module | None
                if stage == "linear":
                    layer = nn.Linear(width_in, width)
                elif stage == "act":
                    layer = create_act("act", act, inplace=True)  # never the first stage
                elif stage == "norm":
                    layer = create_norm("norm", norm, width, FEATURE_NORMS)
                else:
                    layer = nn.Dropout(p_drop) if p_drop > 0 else None
                if layer is not None:
                    self.add_module(f"{stage}{index}", layer)
            width_in = width
        self.output = nn.Linear(width_in, out_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"MLPHead expected input of shape (N, {self.in_features}); received a tensor "
                f"of shape {tuple(input.shape)}."
            )
        x = input
        for module in self:
            x = module(x)
        return x
