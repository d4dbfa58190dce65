"""Task inference from a first batch: every case the loops accept, and every one they refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convkit.train.tasks import TaskSpec, default_loss, infer_task, loss_kind


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
    ("auto", _f(8, 10), _cls(8), F.cross_entropy, TaskSpec("multiclass", 10, ignore_index=-100)),
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
    ("auto", _f(8, 3), _cls(8, 1, classes=3), None, r"shape \(8,\): pass targets.squeeze\(1\)"),
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


# ------------------------------------------------------------------ fit / evaluate / predict
# Real models trained on the bundled MNIST images, for every task. The validation
# metrics of the last epoch, evaluate(history=...) and evaluate with the same inference
# must all equal references computed with NumPy from predict's raw outputs.

import numpy as np  # noqa: E402

from convkit import History, build_cnn, evaluate, fit, mnist_sample, predict  # noqa: E402
from test_metrics import label_reference, multiclass_reference, regression_reference  # noqa: E402


def _images(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_sample().tensors
    return x[offset : offset + n], y[offset : offset + n]


def _cnn(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return build_cnn((1, 28, 28), outputs, channels=(4,), hidden=(), norm=None)


def _regression_targets(x: torch.Tensor) -> torch.Tensor:
    """Ink mass (x10) and the vertical centre of mass (in image heights)."""
    images = x[:, 0]
    rows = torch.arange(28.0)
    centre = (images.sum(2) * rows).sum(1) / images.sum((1, 2)) / 28
    return torch.stack([images.mean((1, 2)) * 10, centre], 1)


def _label_targets(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Even digit, digit >= 5, a closed loop (0, 6, 8, 9), more ink than 0.13."""
    groups = [[0, 2, 4, 6, 8], [5, 6, 7, 8, 9], [0, 6, 8, 9]]
    labels = [torch.isin(y, torch.tensor(g)).float() for g in groups]
    labels.append((x.mean((1, 2, 3)) > 0.13).float())
    return torch.stack(labels, 1)


def _masks(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0 background, 1 ink of a digit < 5, 2 ink of a digit >= 5; faint edges ignored."""
    ink = x[:, 0]
    masks = torch.where(ink > 0.5, 1 + (y >= 5).long()[:, None, None], 0)
    masks[(ink > 0.1) & (ink <= 0.5)] = -100
    return masks


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bce(logits: np.ndarray, targets: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))))


def test_regression_trains_and_scores_with_mse_everywhere() -> None:
    x, _ = _images(640)
    y = _regression_targets(x)
    model = _cnn(2)
    history = fit(model, (x[:512], y[:512]), epochs=3, val_data=(x[512:], y[512:]),
                  metrics=["mae", "rmse"], lr=1e-2, progress=False, device="cpu",
                  seed=0)  # fmt: skip
    assert (history.task, history.loss, history.metrics) == ("regression", "MSELoss()",
                                                             ["mae", "rmse"])  # fmt: skip
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    outputs = predict(model, x[512:], device="cpu")
    reference = regression_reference(outputs, y[512:])
    expected = {"loss": reference["mse"], "mae": reference["mae"], "rmse": reference["rmse"]}
    last = {k: history[f"val_{k}"][-1] for k in expected}
    assert last == pytest.approx(expected, rel=1e-6)
    assert evaluate(model, (x[512:], y[512:]), history=history, device="cpu") == pytest.approx(
        expected, rel=1e-6
    )
    # without the History: the same inference, MSE and MAE, never cross-entropy
    plain = evaluate(model, (x[512:], y[512:]), device="cpu")
    assert plain == pytest.approx({"loss": reference["mse"], "mae": reference["mae"]}, rel=1e-6)


def test_binary_trains_and_scores_against_the_reference() -> None:
    x, digits = _images(640)
    y = (digits >= 5).float().unsqueeze(1)
    model = _cnn(1)
    names = ["binary_accuracy", "f1", "precision", "recall"]
    history = fit(model, (x[:512], y[:512]), epochs=3, val_data=(x[512:], y[512:]),
                  task="binary", metrics=names, lr=1e-2, progress=False, device="cpu",
                  seed=0)  # fmt: skip
    assert (history.task, history.loss) == ("binary", "BCEWithLogitsLoss()")
    assert history["loss"][-1] < history["loss"][0]
    logits = predict(model, x[512:], device="cpu")
    expected = {"loss": _bce(logits.numpy(), y[512:].numpy())}
    expected |= {k: v for k, v in label_reference(logits, y[512:]).items() if k in names}
    assert expected["binary_accuracy"] > 0.7
    assert {k: history[f"val_{k}"][-1] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert evaluate(model, (x[512:], y[512:]), history=history, device="cpu") == pytest.approx(
        expected, abs=1e-6
    )
    probs = predict(model, x[512:], output="probs", history=history, device="cpu")
    labels = predict(model, x[512:], output="labels", history=history, device="cpu")
    assert torch.allclose(probs, logits.sigmoid())
    assert torch.equal(labels, (logits > 0).long())


def test_multilabel_trains_and_scores_against_the_reference() -> None:
    x, digits = _images(640)
    y = _label_targets(x, digits)
    model = _cnn(4)
    names = ["binary_accuracy", "f1", "iou"]
    history = fit(model, (x[:512], y[:512]), epochs=3, val_data=(x[512:], y[512:]),
                  task="multilabel", metrics=names, lr=1e-2, progress=False, device="cpu",
                  seed=0)  # fmt: skip
    assert history.task == "multilabel" and history["loss"][-1] < history["loss"][0]
    logits = predict(model, x[512:], device="cpu")
    expected = {"loss": _bce(logits.numpy(), y[512:].numpy())}
    expected |= {k: v for k, v in label_reference(logits, y[512:]).items() if k in names}
    assert {k: history[f"val_{k}"][-1] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert evaluate(model, (x[512:], y[512:]), history=history, device="cpu") == pytest.approx(
        expected, abs=1e-6
    )


def _segmenter() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def test_segmentation_trains_and_scores_against_the_reference() -> None:
    x, digits = _images(384)
    masks = _masks(x, digits)
    model = _segmenter()
    history = fit(model, (x[:256], masks[:256]), epochs=3, val_data=(x[256:], masks[256:]),
                  batch_size=128, lr=2e-2, progress=False, device="cpu", seed=0)  # fmt: skip
    assert history.task == "multiclass" and history.metrics == ["accuracy", "iou"]
    assert history["loss"][-1] < history["loss"][0]
    logits = predict(model, x[256:], device="cpu")  # (128, 3, 28, 28): one validation batch
    reference = multiclass_reference(logits, masks[256:])
    flat = np.moveaxis(logits.double().numpy(), 1, -1).reshape(-1, 3)
    target = masks[256:].numpy().reshape(-1)
    keep = target != -100
    log_probs = flat - np.log(np.exp(flat).sum(1, keepdims=True))
    expected = {"loss": float(-log_probs[keep, target[keep]].mean())}
    expected |= {"accuracy": reference["accuracy"], "iou": reference["iou"]}
    assert expected["accuracy"] > 0.8
    assert {k: history[f"val_{k}"][-1] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert evaluate(model, (x[256:], masks[256:]), history=history, device="cpu",
                    batch_size=128) == pytest.approx(expected, abs=1e-6)  # fmt: skip


def test_multiclass_metrics_and_predict_outputs() -> None:
    x, y = _images(640)
    model = _cnn(10)
    names = ["accuracy", "top3_accuracy", "f1", "precision", "recall"]
    history = fit(model, (x[:512], y[:512]), epochs=2, val_data=(x[512:], y[512:]),
                  metrics=names, progress=False, device="cpu", seed=0)  # fmt: skip
    logits = predict(model, x[512:], device="cpu")
    reference = multiclass_reference(logits, y[512:])
    assert {k: history[f"val_{k}"][-1] for k in names} == pytest.approx(
        {k: reference[k] for k in names}, abs=1e-6
    )
    probs = predict(model, x[512:], output="probs", history=history, device="cpu")
    assert torch.allclose(probs, logits.softmax(1))
    labels = predict(model, x[512:], output="labels", task="multiclass", device="cpu")
    assert torch.equal(labels, logits.argmax(1))
    one = predict(model, x[512], device="cpu")  # one sample, no batch dimension
    assert one.shape == (10,) and torch.allclose(one, logits[0], atol=1e-6)
    assert predict(model, x[512], output="labels", history=history, device="cpu") == labels[0]


def test_history_from_a_file_evaluates_the_same() -> None:
    x, _ = _images(640)
    y = _regression_targets(x)
    model = _cnn(2)
    history = fit(model, (x[:512], y[:512]), epochs=1, metrics=["mae", "mse"], progress=False,
                  device="cpu", seed=0)  # fmt: skip
    loaded = History.from_dict(history.to_dict())
    assert (loaded.task, loaded.loss, loaded.metrics) == ("regression", "MSELoss()", ["mae", "mse"])
    val = (x[512:], y[512:])
    assert evaluate(model, val, history=loaded, device="cpu") == evaluate(
        model, val, history=history, device="cpu"
    )
    custom = fit(_cnn(2), (x[:512], y[:512]), epochs=1, loss=nn.L1Loss(), progress=False,
                 device="cpu", seed=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"`history`.*loaded from a file.*L1Loss\(\).*loss="):
        evaluate(model, val, history=History.from_dict(custom.to_dict()), device="cpu")


class _Described(nn.Module):
    """A model with BatchNorm and dropout, so that a forward pass in train mode would show."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16),
                                  nn.Dropout(0.5), nn.Linear(16, outputs))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _contradictions() -> list[tuple[int, Any, dict[str, Any], str]]:
    x, digits = _images(64)
    return [
        (1, (x, (digits >= 5).long()), {}, r"Ambiguous task.*one output unit.*task='binary'"),
        (1, (x, (digits >= 5).float()[:, None]), {}, r"Ambiguous task.*0/1 targets"),
        (1, (x, digits % 2), {"loss": nn.CrossEntropyLoss()}, r"one output unit"),
        (10, (x, digits.float()), {"loss": nn.CrossEntropyLoss()},
         r"float targets of shape \(64,\).*targets.long\(\)"),
        (10, (x, digits), {"task": "regression"}, r"integers.*targets.float\(\)"),
        (2, (x, _regression_targets(x)), {"loss": nn.CrossEntropyLoss(), "task": "regression"},
         r"CrossEntropyLoss contradicts task='regression'"),
        (2, (x, _regression_targets(x)), {"metrics": "accuracy"},
         r"'accuracy' doesn't fit task 'regression'.*'mae'"),
        (4, (x, _label_targets(x, digits)), {"task": "multilabel", "metrics": ["accuracy"]},
         r"'accuracy' doesn't fit task 'multilabel'.*'binary_accuracy'"),
        (4, (x, _label_targets(x, digits).long()), {}, r"Ambiguous task: integer targets"),
        (10, (x, digits), {"metrics": {"hits": lambda o, t: o.argmax(1) == t}},
         r"'hits' returned shape \(64,\)"),
        (1, (x, (digits >= 5).float()), {"task": "binary"}, r"unsqueeze\(1\)"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(11))
def test_contradictions_raise_before_the_first_step(case: int) -> None:
    outputs, data, kwargs, match = _contradictions()[case]
    model = _Described(outputs)
    before, rng = _state(model), torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        fit(model, data, epochs=1, batch_size=64, progress=False, device="cpu", **kwargs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm statistics
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output": "classes"}, ValueError, r"`output`.*'logits', 'probs', 'labels'"),
        ({"output": "labels"}, ValueError, r"`output`.*needs the task.*history=.*task="),
        ({"output": "probs", "task": "regression"}, ValueError, r"regression.*output='logits'"),
        ({"task": "segmentation"}, ValueError, r"`task`"),
        ({"history": {"task": "binary"}}, TypeError, r"`history`"),
    ],
)
def test_bad_predict_arguments(kwargs, error, match) -> None:
    x, _ = _images(8)
    with pytest.raises(error, match=match):
        predict(_cnn(10), x, device="cpu", **kwargs)


def test_evaluate_refuses_a_metric_that_doesnt_fit() -> None:
    x, _ = _images(64)
    with pytest.raises(ValueError, match=r"'accuracy' doesn't fit task 'regression'"):
        evaluate(_cnn(2), (x, _regression_targets(x)), metrics=["accuracy"], device="cpu")


def test_task_metrics_read_the_host_once_per_epoch(monkeypatch) -> None:
    from test_runtime import _count_host_reads

    x, digits = _images(300)
    y = _label_targets(x, digits)
    reads = {}
    for batch_size in (10, 100):
        calls = _count_host_reads(monkeypatch)
        fit(_cnn(4), (x, y), epochs=2, batch_size=batch_size, task="multilabel",
            metrics=["binary_accuracy", "f1", "iou"], progress=False, device="cpu", seed=0,
            nan_guard=False)  # fmt: skip
        reads[batch_size] = len(calls)
        monkeypatch.undo()
    # once per run: inputs and targets finite, targets in [0, 1]; then once per epoch
    assert reads[10] == reads[100] <= 3 + 2


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_torchmetrics_metric_in_fit() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    x, y = _images(640)
    macro = torchmetrics.F1Score(task="multiclass", num_classes=10, average="macro")
    history = fit(_cnn(10), (x[:512], y[:512]), epochs=2, val_data=(x[512:], y[512:]),
                  metrics={"f1": "f1", "tm_f1": macro}, progress=False, device="cpu",
                  seed=0)  # fmt: skip
    assert history["val_tm_f1"] == pytest.approx(history["val_f1"], abs=1e-6)
    assert history["tm_f1"] == pytest.approx(history["f1"], abs=1e-6)


def _launch(out: Path, task: str, nproc: int) -> dict[str, list[float]]:
    here = Path(__file__).resolve().parent
    path = str(here.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    worker = [str(here / "ddp_tasks_worker.py"), str(out), task]
    cmd = [sys.executable, *worker] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        *worker]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text())["history"] for p in sorted(out.glob("rank*.json"))]
    assert len(runs) == nproc and all(run == runs[0] for run in runs)  # every rank agrees
    return runs[0]


@pytest.mark.slow  # torchrun: two processes, then one
@pytest.mark.parametrize("task", ["regression", "multilabel", "multiclass"])
def test_two_gloo_processes_report_the_metrics_of_one(tmp_path: Path, task: str) -> None:
    """The training metrics too: a sample the sampler repeats to pad a shard is trained on
    but counted once (issue 23.8: 'multiclass' trains on an odd number of samples)."""
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    ddp = _launch(tmp_path / "ddp", task, nproc=2)
    one = _launch(tmp_path / "one", task, nproc=1)
    assert ddp.keys() == one.keys() and len(ddp) >= 2 + 2 * {"multilabel": 5}.get(task, 3)
    if "tm_f1" in ddp:  # torchmetrics installed: its own sync agrees with convkit's counts
        assert ddp["val_tm_f1"] == pytest.approx(ddp["val_f1"], abs=1e-6)
    # counts and error sums all-reduced: equal up to float32 rounding of the batch means
    for key in one:
        assert ddp[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key


def test_fit_logs_what_it_inferred_once(caplog) -> None:
    x, _ = _images(256)
    with caplog.at_level("INFO", logger="convkit"):
        fit(_cnn(2), (x, _regression_targets(x)), epochs=2, progress=False, device="cpu", seed=0)
    said = [r.getMessage() for r in caplog.records if "inferred" in r.getMessage()]
    assert len(said) == 1
    assert "task regression (inferred from the first batch), loss MSELoss(), metrics mae" in said[0]


def test_probability_outputs_keep_their_threshold_through_a_saved_history() -> None:
    x, digits = _images(256)
    y = (digits >= 5).float().unsqueeze(1)
    model = nn.Sequential(_cnn(1), nn.Sigmoid())  # outputs probabilities: BCELoss
    history = fit(model, (x, y), epochs=1, loss=nn.BCELoss(), progress=False, device="cpu", seed=0)
    probs = predict(model, x, device="cpu")
    assert 0 < (probs > 0.5).float().mean() < 1
    for h in (history, History.from_dict(history.to_dict())):
        assert torch.equal(predict(model, x, output="probs", history=h, device="cpu"), probs)
        labels = predict(model, x, output="labels", history=h, device="cpu")
        assert torch.equal(labels, (probs > 0.5).long())


# ------------------------------------------------------------------ the task owns the loss
# Issue 23.4 and 23.7: the loss's reduction and ignored value are read once, in the task
# definition; the reported loss is the exact mean over what the loss counts.


#: fit's arguments that train without moving the weights: each epoch scores one model.
FROZEN: dict[str, Any] = {
    "optimizer": lambda p: torch.optim.SGD(p, lr=0.0),
    "device": "cpu",
    "progress": False,
}


def test_a_batch_whose_targets_are_all_ignored_counts_for_nothing() -> None:
    """Issue 23.4: NaN x 0 made the epoch loss NaN and tripped fit's NaN guard."""
    x, y = _images(48)
    model = _segmenter()
    masks = _masks(x, y)
    masks[:16] = -100  # the first batch of 16 ignores every pixel
    with torch.no_grad():
        expected = F.cross_entropy(model(x), masks).item()
    scores = evaluate(model, (x, masks), batch_size=16, metrics=["iou"], device="cpu")
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)
    # in order, so that the ignored batch is trained on first (its gradients are zero)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, masks), batch_size=16)
    history = fit(model, loader, epochs=1, metrics=["iou"], **FROZEN)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-6)
    assert history["iou"][0] == pytest.approx(scores["iou"], abs=1e-9)


def test_a_summed_loss_reports_the_exact_mean() -> None:
    """Issue 23.7: CrossEntropyLoss(reduction='sum') trains on the batch sum and reports the
    exact mean over the epoch, like the default reduction."""
    x, y = _images(300)
    model = _cnn(10)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    loss = nn.CrossEntropyLoss(reduction="sum")
    scores = evaluate(model, (x, y), loss=loss, batch_size=128, device="cpu")
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)
    history = fit(model, (x, y), epochs=1, batch_size=128, loss=loss, **FROZEN)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-6)
    weighted = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 10), reduction="sum")
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, weight=weighted.weight).item()
    scores = evaluate(model, (x, y), loss=weighted, batch_size=128, device="cpu")
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)  # divided by the weights' sum


def test_the_function_and_the_module_of_a_loss_score_alike() -> None:
    """Issue 23.7: F.cross_entropy ignores -100 as nn.CrossEntropyLoss() does."""
    x, y = _images(64)
    model, masks = _segmenter(), _masks(x, y)
    module = evaluate(model, (x, masks), loss=nn.CrossEntropyLoss(), metrics=["iou"],
                      batch_size=16, device="cpu")  # fmt: skip
    function = evaluate(model, (x, masks), loss=F.cross_entropy, metrics=["iou"], batch_size=16,
                        device="cpu")  # fmt: skip
    assert function == pytest.approx(module, rel=1e-9)
    with torch.no_grad():
        assert module["loss"] == pytest.approx(F.cross_entropy(model(x), masks).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (nn.CrossEntropyLoss(reduction="none"), r"`loss`: CrossEntropyLoss has reduction='none'"),
        (nn.KLDivLoss(reduction="sum"), r"reduction='sum'.*doesn't know what KLDivLoss sums"),
    ],
)
def test_a_reduction_the_exact_mean_cannot_come_from_is_refused(
    loss: nn.Module, match: str
) -> None:
    x, y = _images(32)
    model = _cnn(10)
    before = _state(model)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        fit(model, (x, y), epochs=1, loss=loss, device="cpu", progress=False, seed=1)
    with pytest.raises(ValueError, match=match):
        evaluate(model, (x, y), loss=loss, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


# ------------------------------------------------------------------ targets in the task's range
# Issue 24.7: targets a task can't mean are refused before any work.


def _binary(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return build_cnn((1, 28, 28), outputs, channels=(4,), hidden=(), norm=None)


@pytest.mark.parametrize(
    ("task", "outputs", "values", "match"),
    [
        ("binary", 1, (0.0, 2.0), r"target 2 is outside \[0, 1\] for task 'binary'"),
        ("binary", 1, (0.0, -1.0), r"target -1 is outside \[0, 1\] for task 'binary'"),
        ("multilabel", 3, (0.0, 3.0), r"target 3 is outside \[0, 1\] for task 'multilabel'"),
    ],
)
def test_label_targets_outside_zero_and_one_are_refused(
    task: str, outputs: int, values: tuple[float, float], match: str
) -> None:
    x, y = _images(64)
    targets = torch.where(y[:, None] % 2 == 0, values[0], values[1]).expand(64, outputs)
    model = _binary(outputs)
    before = _state(model)
    for data in ({"train_data": (x, targets)}, {"val_data": (x, targets)}):
        train = data.get("train_data", (x, (targets > 0.5).float().clamp(0, 1)))
        with pytest.raises(ValueError, match=match):
            fit(model, train, val_data=data.get("val_data"), task=task, device="cpu",
                progress=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(fit(model, (x, (targets != 0).float()), task=task, epochs=1, device="cpu",
                   progress=False)) == 1  # fmt: skip


@pytest.mark.parametrize("where", ["train_data", "val_data"])
@pytest.mark.parametrize("kind", ["regression", "soft"])
def test_nan_targets_are_refused_before_any_work(where: str, kind: str) -> None:
    x, y = _images(64)
    if kind == "regression":
        targets, model = _regression_targets(x), _cnn(2)
    else:
        targets, model = F.one_hot(y, 10).float() * 0.9 + 0.01, _cnn(10)
    bad = targets.clone()
    bad[37, 1] = float("nan")
    data = {"train_data": (x, bad if where == "train_data" else targets)}
    data["val_data"] = (x, bad if where == "val_data" else targets)
    before = _state(model)
    with pytest.raises(ValueError, match=rf"`{where}`: the targets of 1 sample\(s\) hold NaN.*37"):
        fit(model, data["train_data"], val_data=data["val_data"], loss=nn.CrossEntropyLoss()
            if kind == "soft" else None, task="auto", device="cpu", progress=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
