"""What a model is trained to do, read from its first batch: the task, its loss, its labels.

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
contradictory evidence before any training, naming the fix. The result is a small
frozen [`TaskSpec`][convkit.train.tasks.TaskSpec] that the metrics and ``predict`` read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OUTPUTS",
    "TASKS",
    "TaskSpec",
    "check_task",
    "default_loss",
    "infer_task",
    "loss_kind",
    "transform_outputs",
]

#: The values ``task=`` accepts.
TASKS = ("auto", "multiclass", "binary", "multilabel", "regression")

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


@dataclass(frozen=True)
class TaskSpec:
    """What the first batch said about the task; read by metrics and ``predict``.

    Attributes:
        task: ``"multiclass"``, ``"binary"``, ``"multilabel"`` or ``"regression"``.
        num_classes: Classes (multiclass), labels (multilabel), 1 (binary), ``None``
            (regression).
        dense: Multiclass scores with spatial dimensions ``(N, C, *S)``.
        soft_targets: Multiclass targets given as one-hot or soft float ``(N, C, ...)``.
        ignore_index: Multiclass target value that counts for no metric (``None``: none).
        threshold: Binary/multilabel decision threshold on the outputs: 0 for logits,
            0.5 for probabilities (``nn.BCELoss``).
    """

    task: str
    num_classes: int | None = None
    dense: bool = False
    soft_targets: bool = False
    ignore_index: int | None = None
    threshold: float = 0.0

    def describe(self) -> str:
        """One line for the log, e.g. ``"multiclass (10 classes)"``."""
        if self.task == "multiclass":
            extra = ", dense" if self.dense else ""
            extra += ", soft targets" if self.soft_targets else ""
            return f"multiclass ({self.num_classes} classes{extra})"
        if self.task == "multilabel":
            return f"multilabel ({self.num_classes} labels)"
        return self.task


def check_task(task: Any) -> str:
    """Return ``task`` if it is one of [`TASKS`][convkit.train.tasks.TASKS], else raise."""
    if not isinstance(task, str):
        raise TypeError(
            f"Invalid type for argument `task`. Expected one of {', '.join(map(repr, TASKS))}. "
            f"Received task={task!r}."
        )
    if task not in TASKS:
        raise ValueError(
            f"Invalid value for argument `task`. Expected one of {', '.join(map(repr, TASKS))}. "
            f"Received task={task!r}."
        )
    return task


def loss_kind(loss: Any) -> str | None:
    """``"ce"``, ``"bce"``, ``"probs"``, ``"regression"`` or ``None`` (unknown or no loss)."""
    for known, kind in _LOSS_KINDS:
        if isinstance(loss, tuple(k for k in known if isinstance(k, type))):
            return kind
        if any(loss is k for k in known if not isinstance(k, type)):
            return kind
    return None


def default_loss(spec: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _loss_name(loss: Any) -> str:
    return getattr(loss, "__name__", None) or type(loss).__name__


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
        fix = "reshape them to (N, 1) with targets.unsqueeze(1)"
    elif _is_integer(targets) and len(out) == 2 and tgt == (out[0], 1):
        fix = f"class indices need shape ({out[0]},): pass targets.squeeze(1)"
    elif targets.is_floating_point() and _is_class_map(outputs, targets):
        fix = "class indices must be integers: pass targets.long()"
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
        f"Invalid value for argument `loss`: {_loss_name(loss)} contradicts task={task!r} "
        f"(it trains {' or '.join(_KIND_TASKS[kind])} models). Pass loss=None for the "
        f"task's default ({type(default).__name__}) or a loss for {task} targets."
    )


def _multiclass(outputs: torch.Tensor, targets: torch.Tensor, loss: Any) -> TaskSpec:
    if outputs.dim() < 2 or outputs.shape[1] < 2:
        raise ValueError(
            f"Invalid data for task 'multiclass': the model has one output unit "
            f"{_shape(outputs)}, and cross-entropy over one class is always 0. Build the "
            "model with one output per class, or for two classes keep one output and pass "
            "task='binary' (BCEWithLogitsLoss) with float 0/1 targets; for a continuous "
            "target use task='regression'."
        )
    classes = int(outputs.shape[1])
    if loss is None:
        ignore: int | None = -100  # nn.CrossEntropyLoss()'s default
    else:
        ignore = getattr(loss, "ignore_index", None)
    if _is_integer(targets) and targets.dtype != torch.bool and _is_class_map(outputs, targets):
        return TaskSpec("multiclass", classes, dense=outputs.dim() > 2, ignore_index=ignore)
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
        The task, its number of classes, and how targets and outputs are laid out.

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
        return _multiclass(outputs, targets, loss)
    return _elementwise(name, outputs, targets, kind)


#: The values ``predict(output=...)`` accepts.
OUTPUTS = ("logits", "probs", "labels")


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
