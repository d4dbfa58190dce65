"""What a model is trained to do and how it is scored: the task definition and its metrics.

``fit``, ``evaluate`` and ``predict`` serve five kinds of supervision:

- ``"multiclass"``: ``(N, C)`` scores with class-index targets ``(N,)`` (or one-hot/soft
  float targets ``(N, C)``); *dense* when the scores are ``(N, C, *S)`` and the targets
  are class maps ``(N, *S)``, as in segmentation. ``ignore_index`` targets are skipped.
- ``"binary"``: one logit per sample (``(N, 1)`` or ``(N,)``, or ``(N, 1, *S)`` masks) with
  float 0/1 targets of the same shape.
- ``"multilabel"``: ``(N, K)`` logits with float 0/1 targets ``(N, K)``.
- ``"regression"``: float targets of the outputs' shape.

[`infer_task`][convkit.train.tasks.infer_task] decides from the first batch's output and
target shapes and dtypes (and the loss, when one is given), and refuses ambiguous or
contradictory evidence before any training, naming the fix. Its result, a frozen
[`TaskSpec`][convkit.train.tasks.TaskSpec], is the one place that answers every question
about the task: the loss and its reduction, the target value it ignores, the range the
targets must lie in, how outputs become probabilities and labels. The loop, the data
checks, ``evaluate``, ``predict`` and the callbacks read it; nothing re-derives it.

Metrics are exact over every sample of the epoch. Each built-in metric is a function of a
few *statistics* (per-class true positives, predicted and true counts; sums of absolute
and squared errors) that every batch adds to one flat device tensor; the loop
all-reduces that tensor once per epoch under DDP and reads it to the host once, so an
epoch's F1 or RMSE is the F1 or RMSE of the whole epoch, not a mean of per-batch values.
Macro averages (``f1``, ``precision``, ``recall``, ``iou``) are over the classes that
occur in the targets or the predictions, as torchmetrics' multiclass metrics do; a
value with nothing to average over is NaN. Each metric has a direction
(torchmetrics' ``higher_is_better``), read through
[`metric_direction`][convkit.train.tasks.metric_direction]. User callables return the
batch *mean* and are weighted by batch size; torchmetrics ``Metric`` objects keep their
own state (``update``/``compute``/``reset``) and sync across processes themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.typing import MetricFn
from ..utils.validation import check_choice

__all__ = [
    "OUTPUTS",
    "TASKS",
    "MetricSet",
    "Request",
    "TaskSpec",
    "bind_metrics",
    "check_loss",
    "check_task",
    "default_loss",
    "default_metrics",
    "infer_task",
    "loss_kind",
    "loss_settings",
    "metric_direction",
    "parse_metrics",
    "transform_outputs",
]

#: The values ``task=`` accepts.
TASKS = ("auto", "multiclass", "binary", "multilabel", "regression")

#: The values ``predict(output=...)`` accepts.
OUTPUTS = ("logits", "probs", "labels")

#: ``(outputs, targets) -> scalar``: a loss module or function.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Loss classes and functions convkit recognises, by the task they imply. ``"ce"``
#: losses take class scores, ``"bce"`` ones logits, ``"probs"`` ones probabilities.
_REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)
_REGRESSION_FUNCTIONS = (F.mse_loss, F.l1_loss, F.huber_loss, F.smooth_l1_loss)
_LOSS_KINDS: tuple[tuple[tuple[Any, ...], str], ...] = (
    ((nn.CrossEntropyLoss, nn.NLLLoss, F.cross_entropy, F.nll_loss), "ce"),
    ((nn.BCEWithLogitsLoss, F.binary_cross_entropy_with_logits), "bce"),
    ((nn.BCELoss, F.binary_cross_entropy), "probs"),
    ((*_REGRESSION_LOSSES, *_REGRESSION_FUNCTIONS), "regression"),
)

#: The task each recognised loss kind implies (binary vs multi-label: by shape).
_KIND_TASKS = {
    "ce": ("multiclass",),
    "bce": ("binary", "multilabel"),
    "probs": ("binary", "multilabel"),
    "regression": ("regression",),
}

#: Reductions whose batch values add up to an exact epoch mean: a mean is multiplied
#: back by what it divided by, a sum is added as it is (``"batchmean"``: ``KLDivLoss``).
REDUCTIONS = ("mean", "sum", "batchmean")


# ------------------------------------------------------------------ losses


def check_task(task: Any) -> str:
    """Return ``task`` if it is one of [`TASKS`][convkit.train.tasks.TASKS], else raise."""
    return check_choice("task", task, TASKS)


def _unwrap(loss: Any) -> tuple[Any, dict[str, Any]]:
    """The loss under a ``functools.partial``, and the keywords the partial fixes."""
    if isinstance(loss, functools.partial):
        return loss.func, dict(loss.keywords)
    return loss, {}


def loss_kind(loss: Any) -> str | None:
    """``"ce"``, ``"bce"``, ``"probs"``, ``"regression"`` or ``None`` (unknown or no loss)."""
    base, _ = _unwrap(loss)
    for known, kind in _LOSS_KINDS:
        if isinstance(base, tuple(k for k in known if isinstance(k, type))):
            return kind
        if any(base is k for k in known if not isinstance(k, type)):
            return kind
    return None


def _setting(loss: Any, name: str, default: Any) -> Any:
    """A setting of a loss: a module's attribute, or a keyword its partial fixes."""
    base, keywords = _unwrap(loss)
    return keywords.get(name, getattr(base, name, default))


def _short_name(loss: Any) -> str:
    """``CrossEntropyLoss``, ``mse_loss``: the loss's class or function name, for messages."""
    base, _ = _unwrap(loss)
    return str(getattr(base, "__name__", None) or type(base).__name__)


def loss_name(loss: Any) -> str:
    """``CrossEntropyLoss()``, ``mse_loss`` or the callable's class name."""
    if isinstance(loss, nn.Module):
        return repr(loss)
    base, _ = _unwrap(loss)
    return str(getattr(base, "__name__", None) or type(base).__name__)


def loss_settings(loss: Any) -> tuple[str, int | None]:
    """The reduction of ``loss`` and the target value it ignores, read in this one place.

    ``F.cross_entropy`` and ``F.nll_loss`` ignore -100 as their modules do; a callable
    convkit doesn't know is taken to return the batch mean and to ignore nothing.

    Raises:
        ValueError: For a reduction the exact epoch mean can't be computed from:
            ``"none"`` (one loss per element, nothing to train on), or ``"sum"`` of a
            loss convkit doesn't know (what it sums over is unknown).

    Examples:
        >>> loss_settings(nn.CrossEntropyLoss(reduction="sum", ignore_index=255))
        ('sum', 255)
        >>> loss_settings(F.cross_entropy)
        ('mean', -100)
    """
    base, _ = _unwrap(loss)
    reduction = _setting(loss, "reduction", "mean")
    ignore = -100 if base is F.cross_entropy or base is F.nll_loss else None
    ignore = _setting(loss, "ignore_index", ignore)
    known = loss_kind(loss) is not None
    if reduction in REDUCTIONS and (known or reduction != "sum"):
        return reduction, ignore
    why = (
        f"convkit doesn't know what {_short_name(loss)} sums over, so the batch sums can't "
        "be turned into the exact epoch mean"
        if reduction == "sum"
        else "fit trains on one number per batch and reports exact means over the epoch, "
        "which it computes from a batch's mean or sum"
    )
    raise ValueError(
        f"Invalid value for argument `loss`: {_short_name(loss)} has reduction={reduction!r}; "
        f"{why}. Pass the loss with reduction='mean'"
        f"{' (or reduction=' + repr('sum') + ')' if known else ''}."
    )


def check_loss(loss: Any) -> LossFn | None:
    """The loss ``fit`` trains with, checked before any work; ``None`` stays ``None``.

    A loss *class* such as ``nn.CrossEntropyLoss`` is instantiated with its defaults;
    its reduction is checked by [`loss_settings`][convkit.train.tasks.loss_settings].
    """
    if loss is None:
        return None
    if isinstance(loss, type):
        if not issubclass(loss, nn.Module):
            raise TypeError(
                f"Invalid type for argument `loss`. {loss.__name__} is a class but not a loss "
                "module; pass an instance such as nn.CrossEntropyLoss()."
            )
        try:
            loss = loss()
        except TypeError as err:
            raise TypeError(
                f"Invalid value for argument `loss`: the class {loss.__name__} can't be built "
                f"without arguments ({err}); pass an instance, e.g. loss={loss.__name__}(...)."
            ) from None
    if not callable(loss):
        raise TypeError(
            "Invalid type for argument `loss`. Expected None (the task's default), a loss "
            "module such as nn.CrossEntropyLoss() or a callable (outputs, targets) -> scalar "
            f"tensor. Received loss={loss!r}."
        )
    loss_settings(loss)
    checked: LossFn = loss
    return checked


def default_loss(spec: TaskSpec) -> LossFn:
    """The loss a task trains with when ``loss=None``.

    Examples:
        >>> default_loss(TaskSpec("regression"))
        MSELoss()
    """
    if spec.task == "multiclass":
        return nn.CrossEntropyLoss()
    if spec.task in ("binary", "multilabel"):
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


# ------------------------------------------------------------------ the task definition


@dataclass(frozen=True)
class TaskSpec:
    """What a run trains: the task, its loss, and how targets and outputs are read.

    Attributes:
        task: ``"multiclass"``, ``"binary"``, ``"multilabel"`` or ``"regression"``.
        num_classes: Classes (multiclass), labels (multilabel), 1 (binary), ``None``
            (regression).
        dense: Multiclass scores with spatial dimensions ``(N, C, *S)``.
        soft_targets: Multiclass targets given as one-hot or soft float ``(N, C, ...)``.
        ignore_index: Multiclass target value that counts for no loss and no metric
            (``None``: none), read from the loss.
        threshold: Binary/multilabel decision threshold on the outputs: 0 for logits,
            0.5 for probabilities (``nn.BCELoss``).
        reduction: The loss's reduction: ``"mean"``, ``"sum"`` or ``"batchmean"``.
        loss: The loss trained with (``None`` in a spec built only to read outputs).
    """

    task: str
    num_classes: int | None = None
    dense: bool = False
    soft_targets: bool = False
    ignore_index: int | None = None
    threshold: float = 0.0
    reduction: str = "mean"
    loss: Any = dataclasses.field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One line for the log, e.g. ``"multiclass (10 classes)"``."""
        if self.task == "multiclass":
            extra = ", dense" if self.dense else ""
            extra += ", soft targets" if self.soft_targets else ""
            return f"multiclass ({self.num_classes} classes{extra})"
        if self.task == "multilabel":
            return f"multilabel ({self.num_classes} labels)"
        return self.task

    def loss_count(self, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What the loss's batch mean divides by, on the device, without a host read.

        The counted targets of a cross-entropy (``ignore_index`` left out, class weights
        summed), the elements of the other known losses, the samples of a callable
        convkit doesn't know (taken to return the batch mean). 0 for a batch whose
        targets are all ``ignore_index``: its mean is NaN (0/0) and its gradients zero.
        """
        kind = loss_kind(self.loss)
        if kind is None:
            return torch.tensor(float(targets.shape[0]), dtype=dtype, device=targets.device)
        if kind != "ce" or self.soft_targets:
            positions = targets.numel() // (targets.shape[1] if self.soft_targets else 1)
            return torch.tensor(float(positions), dtype=dtype, device=targets.device)
        counted = torch.ones_like(targets, dtype=torch.bool)
        if self.ignore_index is not None:
            counted = targets != self.ignore_index
        weight: torch.Tensor | None = _setting(self.loss, "weight", None)
        if weight is None:
            return counted.sum().to(dtype)
        weight = weight.to(targets.device, dtype)  # class weights: the mean divides by their sum
        return (weight[targets.clamp(0, weight.numel() - 1)] * counted).sum()

    def loss_total(
        self, loss: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss as ``(sum, count)``, so that epochs add up to exact means.

        A mean is multiplied back by its count, a sum is taken as it is; a batch with
        nothing counted adds ``(0, 0)``.
        """
        value = loss.detach().to(count.dtype)
        total = value if self.reduction == "sum" else value * count
        return torch.where(count > 0, total, torch.zeros_like(total)), count

    def check_targets(self, name: str, targets: torch.Tensor) -> None:
        """Refuse targets outside the task's range (one host read), before any work.

        Class indices must lie in ``[0, num_classes)`` unless they are ``ignore_index``;
        binary and multi-label targets in ``[0, 1]``.
        """
        if self.task == "multiclass" and not self.soft_targets:
            if self.ignore_index is not None:
                targets = targets[targets != self.ignore_index]
            low, high = _bounds(targets)
            classes = int(self.num_classes or 0)
            if low < 0 or high >= classes:
                ignored = (
                    f" (or ignore_index={self.ignore_index}, which counts for nothing)"
                    if self.ignore_index is not None
                    else ""
                )
                raise ValueError(
                    f"Invalid data in `{name}`: target {low if low < 0 else high:g} is outside "
                    f"[0, {classes}) for a model with {classes} outputs. Targets must be class "
                    f"indices 0..{classes - 1}{ignored}; build the model with more classes or "
                    "fix the labels."
                )
        elif self.task in ("binary", "multilabel"):
            low, high = _bounds(targets)
            if low < 0 or high > 1:
                raise ValueError(
                    f"Invalid data in `{name}`: target {low if low < 0 else high:g} is outside "
                    f"[0, 1] for task {self.task!r}, whose targets are 0/1 labels (or "
                    "probabilities between them). Map the labels to 0 and 1, e.g. "
                    "(targets > 0).float(), or pass task='multiclass' or 'regression'."
                )


def _bounds(targets: torch.Tensor) -> tuple[float, float]:
    """The smallest and largest target, in one host read (``(0, 0)`` for none)."""
    if targets.numel() == 0:
        return 0.0, 0.0
    low, high = torch.stack(torch.aminmax(targets)).tolist()
    return float(low), float(high)


# ------------------------------------------------------------------ reading the task
def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _is_class_map(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Targets ``(N, *S)`` for outputs ``(N, C, *S)``: one class index per position."""
    return outputs.dim() >= 2 and _shape(targets) == (outputs.shape[0], *outputs.shape[2:])


def _is_integer(targets: torch.Tensor) -> bool:
    return not targets.is_floating_point() and not targets.is_complex()


def _guess(kind: str | None, outputs: torch.Tensor, targets: torch.Tensor) -> str:
    """The task ``"auto"`` means for this batch, or an error naming the way out."""
    if kind is not None:
        tasks = _KIND_TASKS[kind]
        if len(tasks) == 1:
            return tasks[0]
        return "binary" if outputs.dim() == 1 or outputs.shape[1] == 1 else "multilabel"
    if targets.dtype == torch.bool:
        raise ValueError(
            "Invalid data: the targets are booleans. Pass targets.float() for binary or "
            "multi-label targets (with task='binary' or 'multilabel'), or targets.long() "
            "for class indices."
        )
    if _is_integer(targets):
        if _is_class_map(outputs, targets) and outputs.shape[1] == 1:
            raise ValueError(
                f"Ambiguous task: integer targets {_shape(targets)} look like class indices, "
                f"but the model has one output unit {_shape(outputs)} and cross-entropy over "
                "one class is always 0. For two classes, either build the model with 2 "
                "outputs, or keep 1 output and pass task='binary' with targets.float() "
                "shaped like the outputs (targets.unsqueeze(1)); for a regression target "
                "pass targets.float() with task='regression'."
            )
        if _is_class_map(outputs, targets):
            return "multiclass"
        if _shape(targets) == _shape(outputs):
            raise ValueError(
                f"Ambiguous task: integer targets of the outputs' shape {_shape(outputs)}. "
                "For multi-label 0/1 targets pass targets.float() (task='multilabel' or "
                "'binary'); for one-hot classes pass targets.argmax(1) as class indices."
            )
        raise _mismatch(outputs, targets)
    if _shape(targets) != _shape(outputs):
        raise _mismatch(outputs, targets)
    if bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError(
            f"Ambiguous task: float 0/1 targets of the outputs' shape {_shape(outputs)} fit "
            "a binary or multi-label classifier and a regression alike. Pass "
            "task='binary' (one output) or task='multilabel' (several), "
            "task='multiclass' for one-hot class targets, or task='regression'."
        )
    return "regression"


def _mismatch(outputs: torch.Tensor, targets: torch.Tensor) -> ValueError:
    out, tgt = _shape(outputs), _shape(targets)
    if len(out) == 2 and out[1] == 1 and tgt == out[:1]:
        fix = "reshape them to (N, 1) with targets.unsqueeze(1) (NumPy: targets[:, None])"
    elif _is_integer(targets) and len(out) == 2 and tgt == (out[0], 1):
        fix = f"class indices need shape ({out[0]},): pass targets.squeeze(1)"
    elif targets.is_floating_point() and _is_class_map(outputs, targets):
        fix = (
            "class indices must be integers: pass targets.long() (NumPy: targets.astype(np.int64))"
        )
    else:
        fix = (
            f"class indices need shape {(out[0], *out[2:])}, every other task targets of "
            f"the outputs' shape {out}"
        )
    return ValueError(
        f"Invalid data: targets of shape {tgt} ({targets.dtype}) don't fit outputs of shape "
        f"{out}; {fix}."
    )


def _check_loss_fits(task: str, kind: str | None, loss: Any) -> None:
    if kind is None or task in _KIND_TASKS[kind]:
        return
    default = default_loss(TaskSpec(task))
    raise ValueError(
        f"Invalid value for argument `loss`: {_short_name(loss)} contradicts task={task!r} "
        f"(it trains {' or '.join(_KIND_TASKS[kind])} models). Pass loss=None for the "
        f"task's default ({type(default).__name__}) or a loss for {task} targets."
    )


def _multiclass(outputs: torch.Tensor, targets: torch.Tensor) -> TaskSpec:
    if outputs.dim() < 2 or outputs.shape[1] < 2:
        raise ValueError(
            f"Invalid data for task 'multiclass': the model has one output unit "
            f"{_shape(outputs)}, and cross-entropy over one class is always 0. Build the "
            "model with one output per class, or for two classes keep one output and pass "
            "task='binary' (BCEWithLogitsLoss) with float 0/1 targets; for a continuous "
            "target use task='regression'."
        )
    classes = int(outputs.shape[1])
    if _is_integer(targets) and targets.dtype != torch.bool and _is_class_map(outputs, targets):
        return TaskSpec("multiclass", classes, dense=outputs.dim() > 2)
    if targets.is_floating_point() and _shape(targets) == _shape(outputs):
        return TaskSpec("multiclass", classes, dense=outputs.dim() > 2, soft_targets=True)
    if targets.is_floating_point():
        raise ValueError(
            f"Invalid data for task 'multiclass': float targets of shape {_shape(targets)} "
            f"with cross-entropy over outputs {_shape(outputs)}. Class indices must be "
            f"integers of shape {(outputs.shape[0], *outputs.shape[2:])} (targets.long()); "
            "soft targets must have the outputs' shape; a continuous target needs "
            "task='regression' (MSELoss)."
        )
    raise _mismatch(outputs, targets)


def _elementwise(task: str, outputs: torch.Tensor, targets: torch.Tensor, kind: Any) -> TaskSpec:
    """Binary, multi-label and regression: float targets of the outputs' shape."""
    single = outputs.dim() == 1 or outputs.shape[1] == 1
    if task == "binary" and not single:
        raise ValueError(
            f"Invalid data for task 'binary': the model has {outputs.shape[1]} outputs "
            f"{_shape(outputs)}; binary classification uses one logit per sample. Use "
            "task='multilabel' for several independent 0/1 labels, or task='multiclass' "
            "for one class out of several."
        )
    if task == "multilabel" and single:
        raise ValueError(
            f"Invalid data for task 'multilabel': the model has one output {_shape(outputs)}; "
            "use task='binary', or one output per label."
        )
    if _is_integer(targets):
        raise ValueError(
            f"Invalid data for task {task!r}: the targets are integers ({targets.dtype}); "
            f"{task} targets are floats of the outputs' shape: pass targets.float()."
        )
    if _shape(targets) != _shape(outputs):
        raise _mismatch(outputs, targets)
    if task == "regression":
        return TaskSpec("regression")
    labels = 1 if task == "binary" else int(outputs.shape[1])
    return TaskSpec(
        task, labels, dense=outputs.dim() > 2, threshold=0.5 if kind == "probs" else 0.0
    )


def infer_task(task: Any, outputs: torch.Tensor, targets: torch.Tensor, loss: Any) -> TaskSpec:
    """The [`TaskSpec`][convkit.train.tasks.TaskSpec] of a run, from its first batch.

    Args:
        task: One of [`TASKS`][convkit.train.tasks.TASKS]; ``"auto"`` decides from the loss
            (cross-entropy: multiclass, BCE: binary or multi-label by the outputs'
            width, MSE/L1/Huber: regression) or, with ``loss=None`` or an unknown
            callable, from the targets: integers of the outputs' shape without its class
            dimension are class indices, float targets that are not all 0 or 1 are a
            regression, float 0/1 targets are ambiguous.
        outputs: The model's outputs on the first batch.
        targets: The first batch's targets.
        loss: The ``loss`` argument (``None``: the task's default).

    Returns:
        The task, its number of classes, how targets and outputs are laid out, and the
        loss (the task's default for ``loss=None``) with its reduction and ignored value.

    Raises:
        ValueError: For ambiguous evidence, a loss that contradicts ``task``, or targets
            that don't fit the task; the message names the fix.

    Examples:
        >>> outputs = torch.zeros(8, 10)
        >>> infer_task("auto", outputs, torch.zeros(8, dtype=torch.long), None).describe()
        'multiclass (10 classes)'
        >>> infer_task("auto", torch.zeros(8, 1), torch.rand(8, 1) + 0.1, None).task
        'regression'
    """
    check_task(task)
    kind = loss_kind(loss)
    name = _guess(kind, outputs, targets) if task == "auto" else task
    _check_loss_fits(name, kind, loss)
    if name == "multiclass":
        spec = _multiclass(outputs, targets)
    else:
        spec = _elementwise(name, outputs, targets, kind)
    loss = loss if loss is not None else default_loss(spec)
    reduction, ignore = loss_settings(loss)
    class_indices = spec.task == "multiclass" and not spec.soft_targets
    return dataclasses.replace(
        spec, reduction=reduction, ignore_index=ignore if class_indices else None, loss=loss
    )


def transform_outputs(spec: TaskSpec | None, outputs: torch.Tensor, output: str) -> torch.Tensor:
    """``predict``'s raw outputs as ``output`` asks: logits, probabilities or labels.

    Multiclass: softmax over the class dimension / its arg-max; binary and multi-label:
    sigmoid (outputs that already are probabilities, from ``nn.BCELoss``, stay) / 0-1
    labels at the task's threshold. Regression outputs are values: only ``"logits"``
    (the raw outputs) applies.

    Raises:
        ValueError: For ``"probs"``/``"labels"`` without a known task, or of a regression.

    Examples:
        >>> transform_outputs(TaskSpec("multiclass", 3), torch.tensor([[0.0, 2.0, 1.0]]), "labels")
        tensor([1])
    """
    if output == "logits":
        return outputs
    if spec is None:
        raise ValueError(
            f"Invalid value for argument `output`: output={output!r} needs the task. Pass "
            "history= (the History fit returned) or task='multiclass', 'binary' or "
            "'multilabel'; output='logits' gives the raw outputs of any model."
        )
    if spec.task == "regression":
        raise ValueError(
            f"Invalid value for argument `output`: a regression model's outputs are values, "
            f"not scores; output={output!r} means nothing for it. Use output='logits' "
            "(the raw outputs)."
        )
    if spec.task == "multiclass":
        return outputs.softmax(1) if output == "probs" else outputs.argmax(1)
    if output == "probs":
        return outputs if spec.threshold else outputs.sigmoid()
    return (outputs > spec.threshold).long()


# ------------------------------------------------------------------ metrics: names

_TOPK = re.compile(r"top(\d+)_accuracy")
_CLASSIFIERS = ("multiclass", "binary", "multilabel")

#: Built-in metric names -> the tasks they mean something for, and their direction
#: (``"max"``: higher is better, torchmetrics' ``higher_is_better``; ``"min"``: lower).
_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "accuracy": (("multiclass",), "max"),
    "binary_accuracy": (("binary", "multilabel"), "max"),
    "f1": (_CLASSIFIERS, "max"),
    "precision": (_CLASSIFIERS, "max"),
    "recall": (_CLASSIFIERS, "max"),
    "iou": (_CLASSIFIERS, "max"),
    "mae": (("regression",), "min"),
    "mse": (("regression",), "min"),
    "rmse": (("regression",), "min"),
}
_TASKS_OF = {name: tasks for name, (tasks, _) in _METRICS.items()}
_NAMES = (*_METRICS, "top{k}_accuracy")

_DEFAULTS = {
    "multiclass": ("accuracy",),
    "binary": ("binary_accuracy",),
    "multilabel": ("binary_accuracy",),
    "regression": ("mae",),
}


def default_metrics(spec: TaskSpec) -> tuple[str, ...]:
    """The metrics a task reports when ``metrics=None``: dense multiclass adds ``iou``."""
    return ("accuracy", "iou") if spec.task == "multiclass" and spec.dense else _DEFAULTS[spec.task]


def metric_direction(name: str) -> str | None:
    """How a logged value improves: ``"max"`` (higher is better), ``"min"`` or ``None``.

    Reads the names ``fit`` logs: ``loss``, the built-in metrics and their ``val_``
    versions. ``None`` for a name whose direction convkit doesn't know (a callable's or
    a torchmetrics ``Metric``'s): a callback monitoring it needs ``mode=``.

    Examples:
        >>> metric_direction("val_f1"), metric_direction("loss"), metric_direction("top5_accuracy")
        ('max', 'min', 'max')
        >>> metric_direction("my_metric") is None
        True
    """
    base = name.removeprefix("val_")
    if base == "loss":
        return "min"
    if _TOPK.fullmatch(base):
        return "max"
    known = _METRICS.get(base)
    return known[1] if known is not None else None


def known_metric_names() -> list[str]:
    """Every name ``fit`` may log whose direction convkit knows (top-k as ``top5_...``).

    Examples:
        >>> "val_accuracy" in known_metric_names()
        True
    """
    bases = ["loss", *_METRICS, "top5_accuracy"]
    return [*bases, *(f"val_{base}" for base in bases)]


# ------------------------------------------------------------------ metrics: batch statistics


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


# ------------------------------------------------------------------ metrics: epoch values


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


# ------------------------------------------------------------------ metrics: objects


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

    The loop adds [`batch_totals`][convkit.train.tasks.MetricSet.batch_totals] to its
    device state, reduces that state once per epoch, and passes the host values to
    [`compute`][convkit.train.tasks.MetricSet.compute]. External (torchmetrics) metrics
    are updated on the side and compute their own synced value.
    """

    def __init__(
        self,
        spec: TaskSpec,
        metrics: list[_Metric],
        external: dict[str, Any],
        requests: list[Request] | None,
        order: list[str],
    ) -> None:
        self.spec, self.requests, self.names = spec, requests, tuple(order)
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

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Run every external metric once on a first batch: it must give one number."""
        self.reset(outputs.device)
        for name, external in self._external.items():
            external.update(outputs, targets)
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
) -> MetricSet:
    """The [`MetricSet`][convkit.train.tasks.MetricSet] for ``spec``, checked on a first batch.

    Raises:
        ValueError: For a built-in metric that doesn't fit the task, or a callable or
            torchmetrics Metric that doesn't return one number.
    """
    chosen = requests if requests is not None else [Request(n, n) for n in default_metrics(spec)]
    metrics: list[_Metric] = []
    external: dict[str, Any] = {}
    for request in chosen:
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
    metric_set = MetricSet(spec, metrics, external, requests, [r.name for r in chosen])
    if external:
        metric_set.check(outputs, targets)
    return metric_set
