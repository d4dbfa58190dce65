"""Task inference from a first batch: every case the loops accept, and every one they refuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convkit._tasks import TaskSpec, default_loss, infer_task, loss_kind


def _f(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _cls(*shape: int, classes: int = 10) -> torch.Tensor:
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(0))


def _01(*shape: int) -> torch.Tensor:
    return _cls(*shape, classes=2).float()


def _cont(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(1)) + 0.1  # never 0/1


# (task, outputs, targets, loss) -> the spec inferred
ACCEPTED = [
    ("auto", _f(8, 10), _cls(8), None, TaskSpec("multiclass", 10, ignore_index=-100)),
    ("auto", _f(8, 10), _cls(8).int(), None, TaskSpec("multiclass", 10, ignore_index=-100)),
    ("auto", _f(8, 3, 4, 4), _cls(8, 4, 4, classes=3), None,
     TaskSpec("multiclass", 3, dense=True, ignore_index=-100)),
    ("auto", _f(8, 3, 4, 4), _cls(8, 4, 4, classes=3), nn.CrossEntropyLoss(ignore_index=255),
     TaskSpec("multiclass", 3, dense=True, ignore_index=255)),
    ("auto", _f(8, 10), F.softmax(_f(8, 10), 1), nn.CrossEntropyLoss(),
     TaskSpec("multiclass", 10, soft_targets=True)),
    ("auto", _f(8, 10), _cls(8), F.cross_entropy, TaskSpec("multiclass", 10)),
    ("auto", _f(8, 10), _cls(8), nn.NLLLoss(), TaskSpec("multiclass", 10, ignore_index=-100)),
    ("multiclass", _f(8, 2), _cls(8, classes=2), None,
     TaskSpec("multiclass", 2, ignore_index=-100)),
    ("auto", _f(8, 1), _cont(8, 1), None, TaskSpec("regression")),
    ("auto", _f(8, 3), _cont(8, 3), nn.L1Loss(), TaskSpec("regression")),
    ("auto", _f(8, 3), _01(8, 3), nn.HuberLoss(), TaskSpec("regression")),  # the loss decides
    ("regression", _f(8, 1), _01(8, 1), None, TaskSpec("regression")),
    ("auto", _f(8, 1), _01(8, 1), nn.BCEWithLogitsLoss(), TaskSpec("binary", 1)),
    ("auto", _f(8), _01(8), F.binary_cross_entropy_with_logits, TaskSpec("binary", 1)),
    ("auto", _f(8, 1).sigmoid(), _01(8, 1), nn.BCELoss(), TaskSpec("binary", 1, threshold=0.5)),
    ("auto", _f(8, 1, 4, 4), _01(8, 1, 4, 4), nn.BCEWithLogitsLoss(),
     TaskSpec("binary", 1, dense=True)),
    ("binary", _f(8, 1), _01(8, 1), None, TaskSpec("binary", 1)),
    ("auto", _f(8, 5), _01(8, 5), nn.BCEWithLogitsLoss(), TaskSpec("multilabel", 5)),
    ("multilabel", _f(8, 5), _01(8, 5), None, TaskSpec("multilabel", 5)),
    ("multilabel", _f(8, 5), _01(8, 5), lambda o, t: (o - t).abs().mean(),
     TaskSpec("multilabel", 5)),  # an unknown loss contradicts nothing
]  # fmt: skip


@pytest.mark.parametrize(("task", "outputs", "targets", "loss", "spec"), ACCEPTED)
def test_infer_task_accepts(task, outputs, targets, loss, spec) -> None:
    assert infer_task(task, outputs, targets, loss) == spec


# (task, outputs, targets, loss) -> the error, which names the fix
REFUSED = [
    # one output unit with cross-entropy (always 0)
    ("auto", _f(8, 1), _cls(8, classes=1), nn.CrossEntropyLoss(),
     r"one output unit.*task='binary'"),
    ("auto", _f(8, 1), _cls(8, classes=2), None,
     r"Ambiguous task.*one output unit.*always 0.*2 outputs.*task='binary'"
     r".*targets.unsqueeze\(1\)"),
    ("multiclass", _f(8, 1), _cls(8, classes=1), None, r"one output unit.*task='regression'"),
    # float targets with cross-entropy of a different shape
    ("auto", _f(8, 10), _cls(8).float(), nn.CrossEntropyLoss(),
     r"float targets of shape \(8,\).*targets.long\(\).*task='regression'"),
    ("auto", _f(8, 10), _f(8, 3), nn.CrossEntropyLoss(), r"float targets of shape \(8, 3\)"),
    # ambiguous evidence without a loss
    ("auto", _f(8, 1), _01(8, 1), None,
     r"Ambiguous task.*0/1 targets.*task='binary'.*'regression'"),
    ("auto", _f(8, 5), _01(8, 5), None, r"Ambiguous task.*task='multilabel'"),
    ("auto", _f(8, 5), _01(8, 5).long(), None,
     r"Ambiguous task: integer targets.*targets.float\(\).*targets.argmax\(1\)"),
    ("auto", _f(8, 5), _01(8, 5).bool(), None, r"booleans.*targets.float\(\).*targets.long\(\)"),
    # a loss that contradicts the task
    ("regression", _f(8, 10), _cls(8), nn.CrossEntropyLoss(),
     r"`loss`: CrossEntropyLoss contradicts task='regression'.*loss=None.*MSELoss"),
    ("multiclass", _f(8, 10), _cls(8), nn.MSELoss(),
     r"`loss`: MSELoss contradicts task='multiclass'"),
    ("binary", _f(8, 1), _01(8, 1), F.mse_loss, r"`loss`: mse_loss contradicts task='binary'"),
    ("multilabel", _f(8, 5), _01(8, 5), nn.CrossEntropyLoss(),
     r"contradicts task='multilabel'.*BCEWithLogitsLoss"),
    # targets that don't fit the task
    ("binary", _f(8, 3), _01(8, 3), None, r"task 'binary'.*3 outputs.*task='multilabel'"),
    ("multilabel", _f(8, 1), _01(8, 1), None, r"task 'multilabel'.*one output.*task='binary'"),
    ("regression", _f(8, 1), _cls(8, 1), None, r"integers \(torch.int64\).*targets.float\(\)"),
    ("binary", _f(8, 1), _cls(8, 1, classes=2), None, r"task 'binary'.*targets.float\(\)"),
    ("auto", _f(8, 1), _cont(8), nn.MSELoss(), r"targets of shape \(8,\).*unsqueeze\(1\)"),
    ("auto", _f(8, 3), _cont(8, 2), None, r"targets of shape \(8, 2\).*outputs of shape \(8, 3\)"),
    ("auto", _f(8, 3, 4, 4), _cls(8, 4, 5), None, r"class indices need shape \(8, 4, 4\)"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "outputs", "targets", "loss", "match"), REFUSED)
def test_infer_task_refuses_with_the_fix(task, outputs, targets, loss, match) -> None:
    with pytest.raises(ValueError, match=match):
        infer_task(task, outputs, targets, loss)


@pytest.mark.parametrize(
    ("task", "error", "match"),
    [
        ("classification", ValueError, r"`task`.*'auto', 'multiclass'.*'classification'"),
        (None, TypeError, r"`task`.*Received task=None"),
    ],
)
def test_bad_task_argument(task, error, match) -> None:
    with pytest.raises(error, match=match):
        infer_task(task, _f(8, 10), _cls(8), None)


def test_loss_kinds() -> None:
    assert loss_kind(nn.CrossEntropyLoss(label_smoothing=0.1)) == "ce"
    assert loss_kind(nn.BCEWithLogitsLoss(pos_weight=torch.ones(1))) == "bce"
    assert loss_kind(F.smooth_l1_loss) == "regression"
    assert loss_kind(lambda o, t: o.sum()) is None
    assert loss_kind(None) is None


@pytest.mark.parametrize(
    ("spec", "loss"),
    [
        (TaskSpec("multiclass", 10), nn.CrossEntropyLoss),
        (TaskSpec("binary", 1), nn.BCEWithLogitsLoss),
        (TaskSpec("multilabel", 5), nn.BCEWithLogitsLoss),
        (TaskSpec("regression"), nn.MSELoss),
    ],
)
def test_default_loss_per_task(spec, loss) -> None:
    assert type(default_loss(spec)) is loss


def test_describe() -> None:
    assert TaskSpec("multiclass", 3, dense=True).describe() == "multiclass (3 classes, dense)"
    assert TaskSpec("multilabel", 5).describe() == "multilabel (5 labels)"
    assert TaskSpec("regression").describe() == "regression"
