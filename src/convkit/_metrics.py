"""Metrics for ``fit`` and ``evaluate``, accumulated as exact sums over samples.

The notebook divides a running loss by the batch *index*; here every batch adds
``mean * batch_size`` (or an exact count) to a device-side sum that is divided by the
number of samples once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._typing import MetricFn


def correct_count(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Number of samples whose arg-max output is the target class."""
    predicted = outputs.argmax(dim=-1)
    if targets.shape == outputs.shape:  # one-hot or soft targets
        targets = targets.argmax(dim=-1)
    return (predicted == targets).sum()


@dataclass(frozen=True)
class Metric:
    """A named metric; ``is_sum`` says ``fn`` returns a batch total, not a batch mean."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    is_sum: bool


BUILTIN: dict[str, Metric] = {"accuracy": Metric("accuracy", correct_count, is_sum=True)}


def resolve_metrics(metrics: Any) -> list[Metric]:
    """Turn ``("accuracy", my_fn, ...)`` into ``Metric``s, checking names and types."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if not isinstance(metrics, Sequence):
        raise TypeError(
            "Invalid type for argument `metrics`. Expected a sequence of metric names "
            f"({', '.join(map(repr, BUILTIN))}) or callables (outputs, targets) -> tensor. "
            f"Received metrics={metrics!r}."
        )
    resolved: list[Metric] = []
    for metric in metrics:
        if isinstance(metric, str):
            if metric not in BUILTIN:
                raise ValueError(
                    f"Invalid value for argument `metrics`: unknown metric {metric!r}. Valid names "
                    f"are {', '.join(map(repr, BUILTIN))}, or pass a callable "
                    "(outputs, targets) -> tensor."
                )
            resolved.append(BUILTIN[metric])
        elif callable(metric):
            fn: MetricFn = metric
            name = getattr(metric, "__name__", type(metric).__name__)
            resolved.append(Metric(name, fn, is_sum=False))
        else:
            raise TypeError(
                f"Invalid value for argument `metrics`: {metric!r} is neither a metric name nor a "
                "callable (outputs, targets) -> tensor."
            )
    names = [m.name for m in resolved]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(
            f"Invalid value for argument `metrics`: metric names must be distinct and not "
            f"'loss'. Received names {names}."
        )
    return resolved
