"""Epoch metrics for ``fit`` and ``evaluate``, exact over every sample of the epoch.

Each built-in metric is a function of a few *statistics* (per-class true positives,
predicted and true counts; sums of absolute and squared errors) that every batch adds
to one flat device tensor. Nothing is read back per batch: the loop all-reduces that
tensor once per epoch under DDP and reads it to the host once, and
[`MetricSet.compute`][convkit.train.metrics.MetricSet.compute] turns the totals into
numbers, so an epoch's F1 or RMSE is the F1 or RMSE of the whole epoch, not a mean of
per-batch values. Macro averages (``f1``, ``precision``, ``recall``, ``iou``) are over
the classes that occur in the targets or the predictions, as torchmetrics' multiclass
metrics do; a value with nothing to average over is NaN.

User callables return the batch *mean* and are weighted by batch size; torchmetrics
``Metric`` objects keep their own state (``update``/``compute``/``reset``) and sync
across processes themselves.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..utils.typing import MetricFn
from .tasks import TaskSpec

__all__ = [
    "MetricSet",
    "Request",
    "bind_metrics",
    "default_metrics",
    "metric_direction",
    "parse_metrics",
]

_TOPK = re.compile(r"top(\d+)_accuracy")
_CLASSIFIERS = ("multiclass", "binary", "multilabel")


@dataclass(frozen=True)
class _Builtin:
    """A built-in metric: the tasks it means something for, and its direction."""

    tasks: tuple[str, ...]
    higher_is_better: bool  # as torchmetrics' Metric.higher_is_better


#: Built-in metric names -> their definitions (``top{k}_accuracy``: multiclass, higher).
_BUILTINS: dict[str, _Builtin] = {
    "accuracy": _Builtin(("multiclass",), higher_is_better=True),
    "binary_accuracy": _Builtin(("binary", "multilabel"), higher_is_better=True),
    "f1": _Builtin(_CLASSIFIERS, higher_is_better=True),
    "precision": _Builtin(_CLASSIFIERS, higher_is_better=True),
    "recall": _Builtin(_CLASSIFIERS, higher_is_better=True),
    "iou": _Builtin(_CLASSIFIERS, higher_is_better=True),
    "mae": _Builtin(("regression",), higher_is_better=False),
    "mse": _Builtin(("regression",), higher_is_better=False),
    "rmse": _Builtin(("regression",), higher_is_better=False),
}
#: Built-in metric names -> the tasks they mean something for.
_TASKS_OF: dict[str, tuple[str, ...]] = {name: b.tasks for name, b in _BUILTINS.items()}
_NAMES = (*_TASKS_OF, "top{k}_accuracy")


def metric_direction(name: str) -> str | None:
    """Whether a logged value is better larger (``"max"``) or smaller (``"min"``).

    Reads the names ``fit`` logs: ``loss`` and the built-in metrics, each with or
    without the ``val_`` prefix. A name convkit doesn't define (a callable's or a
    torchmetrics Metric's) has no known direction: ``None``.

    Examples:
        >>> metric_direction("val_f1"), metric_direction("loss"), metric_direction("val_rmse")
        ('max', 'min', 'min')
        >>> metric_direction("top5_accuracy"), metric_direction("dice") is None
        ('max', True)
    """
    base = name.removeprefix("val_")
    if base == "loss":
        return "min"
    if _TOPK.fullmatch(base):
        return "max"
    builtin = _BUILTINS.get(base)
    if builtin is None:
        return None
    return "max" if builtin.higher_is_better else "min"


_DEFAULTS = {
    "multiclass": ("accuracy",),
    "binary": ("binary_accuracy",),
    "multilabel": ("binary_accuracy",),
    "regression": ("mae",),
}


def default_metrics(spec: TaskSpec) -> tuple[str, ...]:
    """The metrics a task reports when ``metrics=None``: dense multiclass adds ``iou``."""
    return ("accuracy", "iou") if spec.task == "multiclass" and spec.dense else _DEFAULTS[spec.task]


# ------------------------------------------------------------------ batch statistics


class _View:
    """One batch seen as flat predictions and targets, computed once for every metric."""

    def __init__(self, outputs: torch.Tensor, targets: torch.Tensor, spec: TaskSpec) -> None:
        self.outputs, self.targets, self.spec = outputs, targets, spec

    @functools.cached_property
    def scores(self) -> torch.Tensor:
        """``(M, C)``: one row of class scores (or label logits) per position."""
        out = self.outputs
        if out.dim() == 1:  # binary (N,) -> (N, 1)
            return out.unsqueeze(1)
        return out.movedim(1, -1).reshape(-1, out.shape[1])  # (N, C, *S) -> (N*S, C)

    @functools.cached_property
    def labels(self) -> torch.Tensor:
        """Multiclass: ``(M,)`` target classes; otherwise ``(M, K)`` targets."""
        tgt = self.targets
        if self.spec.task == "multiclass" and not self.spec.soft_targets:
            return tgt.reshape(-1)
        rows = tgt.unsqueeze(1) if tgt.dim() == 1 else tgt.movedim(1, -1).reshape(-1, tgt.shape[1])
        return rows.argmax(-1) if self.spec.task == "multiclass" else rows

    @functools.cached_property
    def valid(self) -> torch.Tensor | None:
        """``(M,)`` positions whose target isn't ``ignore_index`` (``None``: all)."""
        if self.spec.ignore_index is None or self.spec.soft_targets:
            return None
        return self.labels != self.spec.ignore_index


def _class_counts(view: _View, dtype: torch.dtype) -> torch.Tensor:
    """Multiclass ``[tp (C), predicted (C), true (C)]`` over the valid positions."""
    classes = torch.arange(view.scores.shape[1], device=view.scores.device)
    predicted = view.scores.argmax(-1).unsqueeze(1) == classes  # (M, C)
    true = view.labels.unsqueeze(1) == classes
    if view.valid is not None:
        predicted &= view.valid.unsqueeze(1)
        true &= view.valid.unsqueeze(1)
    return torch.cat([(predicted & true).sum(0), predicted.sum(0), true.sum(0)]).to(dtype)


def _label_counts(view: _View, dtype: torch.dtype) -> torch.Tensor:
    """Binary/multi-label ``[tp (K), predicted (K), true (K), total (K)]``."""
    predicted = view.scores > view.spec.threshold  # (M, K)
    true = view.labels > 0.5
    total = torch.full_like(predicted[0], predicted.shape[0], dtype=dtype)
    return torch.cat(
        [
            (predicted & true).sum(0).to(dtype),
            predicted.sum(0).to(dtype),
            true.sum(0).to(dtype),
            total,
        ]
    )


def _errors(view: _View, dtype: torch.dtype) -> torch.Tensor:
    """Regression ``[sum |e|, sum e^2, elements]``, errors in the accumulator's dtype."""
    err = view.outputs.to(dtype) - view.targets.to(dtype)
    count = torch.tensor(float(err.numel()), dtype=dtype, device=err.device)
    return torch.stack([err.abs().sum(), err.square().sum(), count])


def _topk_hits(k: int) -> Callable[[_View, torch.dtype], torch.Tensor]:
    def hits(view: _View, dtype: torch.dtype) -> torch.Tensor:
        """``[samples whose target is among the k best scores, samples]``."""
        found = (view.scores.topk(k, dim=-1).indices == view.labels.unsqueeze(1)).any(-1)
        if view.valid is None:
            count = torch.tensor(float(found.numel()), device=found.device)
            return torch.stack([found.sum().to(dtype), count.to(dtype)])
        return torch.stack([(found & view.valid).sum(), view.valid.sum()]).to(dtype)

    return hits


# ------------------------------------------------------------------ epoch values


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _macro(
    stat: Sequence[float], size: int, score: Callable[[float, float, float], float]
) -> float:
    """Mean of ``score(tp, predicted, true)`` over the classes that occur at all."""
    tp, pred, true = stat[:size], stat[size : 2 * size], stat[2 * size : 3 * size]
    scores = [score(t, p, r) for t, p, r in zip(tp, pred, true, strict=True) if p + r > 0]
    return sum(scores) / len(scores) if scores else math.nan


def _f1(tp: float, pred: float, true: float) -> float:
    return 2 * tp / (pred + true)


def _precision(tp: float, pred: float, true: float) -> float:
    return tp / pred if pred else 0.0


def _recall(tp: float, pred: float, true: float) -> float:
    return tp / true if true else 0.0


def _iou(tp: float, pred: float, true: float) -> float:
    return tp / (pred + true - tp)


_MACRO = {"f1": _f1, "precision": _precision, "recall": _recall, "iou": _iou}


def _binary_accuracy(stat: Sequence[float], size: int) -> float:
    tp, pred, true, total = (sum(stat[i * size : (i + 1) * size]) for i in range(4))
    return _ratio(total - pred - true + 2 * tp, total)  # (tp + tn) / total


# ------------------------------------------------------------------ metric objects


@dataclass(frozen=True)
class _Stat:
    """A statistic that batches add to the state: ``key`` shared by the metrics reading it."""

    key: str
    size: int
    update: Callable[[_View, torch.dtype], torch.Tensor]


@dataclass(frozen=True)
class _Metric:
    name: str
    stat: _Stat
    compute: Callable[[Sequence[float]], float]


@dataclass(frozen=True)
class Request:
    """A metric as asked for (before the task is known): a name and what computes it."""

    name: str
    source: Any  # a built-in name, a callable, or an object with update/compute/reset


def _is_external(metric: Any) -> bool:
    """A torchmetrics-style object: ``update``, ``compute`` and ``reset`` methods."""
    return all(callable(getattr(metric, m, None)) for m in ("update", "compute", "reset"))


def _check_name(source: str) -> None:
    if source not in _TASKS_OF and not _TOPK.fullmatch(source):
        raise ValueError(
            f"Invalid value for argument `metrics`: unknown metric {source!r}. Valid names are "
            f"{', '.join(map(repr, _NAMES))}; or pass a callable (outputs, targets) -> batch "
            "mean, a {name: callable} dict, or a torchmetrics Metric."
        )


def _callable_name(fn: Any, position: int) -> str:
    name = getattr(fn, "__name__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        name = getattr(inner, "__name__", None) or type(fn).__name__
    return f"metric_{position}" if name == "<lambda>" else name


def parse_metrics(metrics: Any) -> list[Request] | None:
    """Check ``metrics`` before any work; ``None`` means the task's defaults.

    Accepts a name, a callable, a torchmetrics ``Metric``, a sequence of those, or a
    ``{name: name | callable | Metric}`` dict. A lambda is named ``metric_<position>``
    (1-based); name it with a dict instead.

    Examples:
        >>> [r.name for r in parse_metrics(["f1", lambda o, t: o.mean()])]
        ['f1', 'metric_2']
    """
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
        if not all(isinstance(k, str) for k, _ in items):
            raise TypeError(
                f"Invalid type for argument `metrics`: dict keys must be names (str). "
                f"Received keys {list(metrics)}."
            )
    else:
        if isinstance(metrics, str) or callable(metrics) or _is_external(metrics):
            metrics = (metrics,)
        if not isinstance(metrics, Sequence):
            raise TypeError(
                "Invalid type for argument `metrics`. Expected None (the task's defaults), "
                "metric names, callables (outputs, targets) -> batch mean, torchmetrics "
                f"Metrics, or a dict name -> one of those. Received metrics={metrics!r}."
            )
        items = [(None, m) for m in metrics]
    requests = []
    for position, (key, source) in enumerate(items, start=1):
        if isinstance(source, str):
            _check_name(source)
            name = key or source
        elif _is_external(source):
            name = key or type(source).__name__
        elif callable(source):
            name = key or _callable_name(source, position)
        else:
            raise TypeError(
                f"Invalid value for argument `metrics`: {source!r} is neither a metric name, a "
                "callable (outputs, targets) -> batch mean, nor a torchmetrics Metric."
            )
        requests.append(Request(name, source))
    names = [r.name for r in requests]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(
            f"Invalid value for argument `metrics`: metric names must be distinct and not "
            f"'loss'. Received names {names}; name them with a dict {{name: metric}}."
        )
    return requests


def _builtin(name: str, source: str, spec: TaskSpec) -> _Metric:
    """The metric ``source`` for this task, or an error naming the ones that fit."""
    topk = _TOPK.fullmatch(source)
    tasks = ("multiclass",) if topk else _TASKS_OF[source]
    if spec.task not in tasks:
        fitting = [n for n, t in _TASKS_OF.items() if spec.task in t]
        if spec.task == "multiclass":
            fitting.append("top{k}_accuracy")
        raise ValueError(
            f"Invalid value for argument `metrics`: {source!r} doesn't fit task "
            f"{spec.task!r} (it is for {' and '.join(tasks)} models). Metrics for "
            f"{spec.task}: {', '.join(map(repr, fitting))}."
        )
    classes = spec.num_classes or 1
    if topk:
        k = int(topk.group(1))
        if not 1 <= k <= classes:
            raise ValueError(
                f"Invalid value for argument `metrics`: {source!r} needs 1 <= k <= the "
                f"number of classes ({classes}). Received k={k}."
            )
        return _Metric(name, _Stat(source, 2, _topk_hits(k)), lambda s: _ratio(s[0], s[1]))
    if spec.task == "regression":
        stat = _Stat("errors", 3, _errors)
        reduce = {
            "mae": lambda s: _ratio(s[0], s[2]),
            "mse": lambda s: _ratio(s[1], s[2]),
            "rmse": lambda s: math.sqrt(_ratio(s[1], s[2])),
        }[source]
        return _Metric(name, stat, reduce)
    if spec.task == "multiclass":
        stat = _Stat("classes", 3 * classes, _class_counts)
        if source == "accuracy":
            return _Metric(name, stat, lambda s: _ratio(sum(s[:classes]), sum(s[2 * classes :])))
    else:
        stat = _Stat("labels", 4 * classes, _label_counts)
        if source == "binary_accuracy":
            return _Metric(name, stat, lambda s: _binary_accuracy(s, classes))
    score = _MACRO[source]
    return _Metric(name, stat, lambda s: _macro(s, classes, score))


def _mean_of(fn: MetricFn, name: str) -> _Metric:
    """A callable returning the batch mean, weighted by batch size: ``[sum, samples]``."""

    def update(view: _View, dtype: torch.dtype) -> torch.Tensor:
        value = torch.as_tensor(fn(view.outputs, view.targets), device=view.outputs.device)
        n = float(view.outputs.shape[0])
        return torch.stack(
            [value.detach().to(dtype).reshape(()) * n, value.new_tensor(n, dtype=dtype)]
        )

    return _Metric(name, _Stat(f"callable:{name}", 2, update), lambda s: _ratio(s[0], s[1]))


class MetricSet:
    """A run's metrics: one flat statistics vector per batch, values once per epoch.

    The loop adds [`batch_totals`][convkit.train.metrics.MetricSet.batch_totals] to its
    device state, reduces that state once per epoch, and passes the host values to
    [`compute`][convkit.train.metrics.MetricSet.compute]. External (torchmetrics) metrics
    are updated on the side and compute their own synced value.
    """

    def __init__(
        self, spec: TaskSpec, metrics: list[_Metric], external: dict[str, Any], order: list[str]
    ) -> None:
        self.spec, self.names = spec, tuple(order)
        self._metrics, self._external = metrics, external
        self._stats: dict[str, _Stat] = {}
        for metric in metrics:
            self._stats.setdefault(metric.stat.key, metric.stat)
        offsets, start = {}, 0
        for key, stat in self._stats.items():
            offsets[key], start = start, start + stat.size
        self._offsets, self.size = offsets, start

    def batch_totals(
        self, outputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """This batch's statistics, ``(size,)`` on the outputs' device, no host sync."""
        view = _View(outputs, targets, self.spec)
        for metric in self._external.values():
            metric.update(outputs, targets)
        if not self._stats:
            return torch.zeros(0, dtype=dtype, device=outputs.device)
        return torch.cat([stat.update(view, dtype) for stat in self._stats.values()])

    def compute(self, state: Sequence[float]) -> dict[str, float]:
        """Epoch values, in the order asked for, from the reduced totals."""
        values: dict[str, float] = {}
        for metric in self._metrics:
            start = self._offsets[metric.stat.key]
            values[metric.name] = float(metric.compute(state[start : start + metric.stat.size]))
        for name, external in self._external.items():
            values[name] = float(external.compute())
        return {name: values[name] for name in self.names}

    def reset(self, device: torch.device) -> None:
        """Start an epoch: external metrics on ``device`` with empty state."""
        for metric in self._external.values():
            if callable(getattr(metric, "to", None)):
                metric.to(device)
            metric.reset()

    def check(self, outputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> None:
        """Run every metric once on a first batch (external ones must give one number)."""
        self.reset(outputs.device)
        self.batch_totals(outputs, targets, dtype)
        for name, external in self._external.items():
            value = external.compute()
            if not _is_scalar(value):
                raise ValueError(_not_scalar(name, value))
        self.reset(outputs.device)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _not_scalar(name: str, value: Any) -> str:
    got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    return (
        f"Invalid value for argument `metrics`: metric {name!r} returned {got} on the first "
        "batch; a metric must return one number (the batch mean, e.g. ... .mean()), or use "
        "average='macro' / a scalar-valued torchmetrics Metric."
    )


def bind_metrics(
    requests: list[Request] | None,
    spec: TaskSpec,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> MetricSet:
    """The [`MetricSet`][convkit.train.metrics.MetricSet] for ``spec``, checked on a first batch.

    Raises:
        ValueError: For a built-in metric that doesn't fit the task, or a callable or
            torchmetrics Metric that doesn't return one number.
    """
    if requests is None:
        requests = [Request(n, n) for n in default_metrics(spec)]
    metrics: list[_Metric] = []
    external: dict[str, Any] = {}
    for request in requests:
        if isinstance(request.source, str):
            metrics.append(_builtin(request.name, request.source, spec))
        elif _is_external(request.source):
            external[request.name] = request.source
        else:
            with torch.no_grad():
                value = request.source(outputs, targets)
            if not _is_scalar(value):
                raise ValueError(_not_scalar(request.name, value))
            metrics.append(_mean_of(request.source, request.name))
    metric_set = MetricSet(spec, metrics, external, [r.name for r in requests])
    metric_set.check(outputs, targets, dtype)
    return metric_set
