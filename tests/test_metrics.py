"""Epoch metrics against independent NumPy references (and torchmetrics where installed).

The predictions are real: nearest-template classifiers and linear read-outs computed
from the bundled MNIST images, with targets derived from the same images (digit class,
per-pixel masks, ink mass, multi-label digit properties). Metrics are accumulated batch by
batch over uneven batches, as an epoch does, and must equal the reference computed on
all samples at once.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from convkit import mnist_sample
from convkit.train.tasks import (
    TaskSpec,
    bind_metrics,
    default_metrics,
    infer_task,
    metric_direction,
    parse_metrics,
)

BATCH = 128  # 1,000 test images -> 7 full batches and one of 104


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test images (1000, 784), digits (1000,), and class-mean templates (10, 784)."""
    train_x, train_y = mnist_sample().tensors
    x, y = mnist_sample(train=False).tensors
    flat = train_x.flatten(1)
    templates = torch.stack([flat[train_y == d].mean(0) for d in range(10)])
    return x.flatten(1), y, templates


def multiclass_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, templates = _mnist()
    return -torch.cdist(x, templates), y  # nearest template scores highest (~80% right)


def binary_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Is it a 1? One logit: distance to the other templates minus distance to the 1."""
    scores, y = multiclass_data()
    others = torch.cat([scores[:, :1], scores[:, 2:]], 1).max(1).values
    return (scores[:, 1] - others).unsqueeze(1), (y == 1).float().unsqueeze(1)


def multilabel_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Four digit properties: even, >= 5, has a closed loop, more ink than the median."""
    x, y, _ = _mnist()
    scores, _ = multiclass_data()
    probs = torch.softmax(scores / 0.5, 1)
    groups = [[0, 2, 4, 6, 8], [5, 6, 7, 8, 9], [0, 6, 8, 9]]
    ink = x.mean(1)
    logits = [torch.logit(probs[:, g].sum(1).clamp(1e-6, 1 - 1e-6)) for g in groups]
    logits.append((ink - ink.median()) * 50)
    targets = [torch.isin(y, torch.tensor(g)).float() for g in groups]
    targets.append((ink > ink.median()).float())
    return torch.stack(logits, 1), torch.stack(targets, 1)


def regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Ink mass and vertical centre of mass, predicted from a 7x7 downsampled image."""
    x, _, _ = _mnist()
    images = x.view(-1, 28, 28)
    ink = images.mean((1, 2))
    rows = torch.arange(28.0)
    centre = (images.sum(2) * rows).sum(1) / images.sum((1, 2)) / 28
    small = torch.nn.functional.avg_pool2d(images.unsqueeze(1), 4).flatten(1)  # (N, 49)
    estimate = torch.stack(
        [small.mean(1), 0.5 + 0.1 * (small[:, 28:].mean(1) - small[:, :21].mean(1))], 1
    )
    return estimate, torch.stack([ink, centre], 1)


def segmentation_data(ignore: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel classes: 0 background, 1 + digit on ink; faint edge pixels ignored."""
    x, y, _ = _mnist()
    x, y = x[:200], y[:200]
    scores, _ = multiclass_data()
    images = x.view(-1, 1, 28, 28)
    background = (0.5 - images) * 8
    digits = images * scores[:200].softmax(1)[:, :, None, None] * 8  # (N, 10, 28, 28)
    logits = torch.cat([background, digits], 1)
    masks = torch.where(images[:, 0] > 0.5, y[:, None, None] + 1, 0)
    masks[(images[:, 0] > 0.2) & (images[:, 0] <= 0.5)] = ignore
    return logits, masks


# ------------------------------------------------------------------ NumPy references


def _counts(pred: np.ndarray, true: np.ndarray, classes: int) -> tuple[np.ndarray, ...]:
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    return tp, confusion.sum(0) - tp, confusion.sum(1) - tp  # tp, fp, fn


def _macro_ref(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    occurs = tp + fp + fn > 0  # classes neither present nor predicted are left out
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = {
            "precision": np.nan_to_num(tp / (tp + fp)),
            "recall": np.nan_to_num(tp / (tp + fn)),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "iou": tp / (tp + fp + fn),
        }
    return {name: float(v[occurs].mean()) for name, v in per_class.items()}


def multiclass_reference(
    scores: torch.Tensor, targets: torch.Tensor, ignore: int = -100
) -> dict[str, float]:
    s = scores.numpy()
    if s.ndim > 2:
        s = np.moveaxis(s, 1, -1).reshape(-1, s.shape[1])
    t = targets.numpy().reshape(-1)
    keep = t != ignore
    s, t = s[keep], t[keep]
    pred = s.argmax(1)
    ref = {"accuracy": float((pred == t).mean())}
    order = np.argsort(-s, axis=1, kind="stable")
    for k in (1, 3, 5):
        ref[f"top{k}_accuracy"] = float((order[:, :k] == t[:, None]).any(1).mean())
    return ref | _macro_ref(*_counts(pred, t, s.shape[1]))


def label_reference(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    pred, true = logits.numpy() > 0, targets.numpy() > 0.5
    tp = (pred & true).sum(0).astype(np.float64)
    fp, fn = (pred & ~true).sum(0), (~pred & true).sum(0)
    return {"binary_accuracy": float((pred == true).mean())} | _macro_ref(tp, fp, fn)


def regression_reference(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    err = outputs.numpy().astype(np.float64) - targets.numpy().astype(np.float64)
    mse = float((err**2).mean())
    return {"mae": float(np.abs(err).mean()), "mse": mse, "rmse": math.sqrt(mse)}


def epoch_values(
    names: list[str] | dict, outputs: torch.Tensor, targets: torch.Tensor, spec: TaskSpec
) -> dict[str, float]:
    """Accumulate over uneven batches exactly as the loop does, then compute."""
    metric_set = bind_metrics(parse_metrics(names), spec, outputs[:BATCH], targets[:BATCH])
    metric_set.reset(outputs.device)
    state = torch.zeros(metric_set.size, dtype=torch.float64)
    for start in range(0, len(outputs), BATCH):
        state += metric_set.batch_totals(
            outputs[start : start + BATCH], targets[start : start + BATCH], torch.float64
        )
    return metric_set.compute(state.tolist())


# ------------------------------------------------------------------ tests

CLASS_METRICS = ["accuracy", "top1_accuracy", "top3_accuracy", "top5_accuracy", "f1",
                 "precision", "recall", "iou"]  # fmt: skip
LABEL_METRICS = ["binary_accuracy", "f1", "precision", "recall", "iou"]


def test_multiclass_metrics_equal_the_numpy_reference() -> None:
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)
    values = epoch_values(CLASS_METRICS, scores, targets, spec)
    reference = multiclass_reference(scores, targets)
    assert 0.7 < values["accuracy"] < 0.95  # a real, imperfect classifier
    assert values == pytest.approx({k: reference[k] for k in CLASS_METRICS}, abs=1e-6)
    # an epoch's F1 is not the mean of its batches' F1s
    batch_f1 = [
        epoch_values(["f1"], scores[i : i + BATCH], targets[i : i + BATCH], spec)["f1"]
        for i in range(0, 1000, BATCH)
    ]
    assert abs(np.mean(batch_f1) - values["f1"]) > 1e-4


def test_multiclass_with_a_class_never_seen_nor_predicted() -> None:
    scores, targets = multiclass_data()
    scores = torch.cat([scores, torch.full((1000, 1), -1e9)], 1)  # an 11th class, never used
    spec = infer_task("auto", scores, targets, None)
    values = epoch_values(["f1", "iou", "precision"], scores, targets, spec)
    reference = multiclass_reference(scores, targets)
    assert values == pytest.approx({k: reference[k] for k in values}, abs=1e-6)
    # the unused class doesn't drag the means down: the same values as with 10 classes
    ten = epoch_values(
        ["f1", "iou", "precision"], scores[:, :10], targets, TaskSpec("multiclass", 10)
    )
    assert values == pytest.approx(ten, abs=1e-12)


def test_soft_targets_score_their_argmax_class() -> None:
    scores, targets = multiclass_data()
    one_hot = torch.nn.functional.one_hot(targets, 10).float() * 0.9 + 0.01
    spec = infer_task("auto", scores, one_hot, torch.nn.CrossEntropyLoss())
    assert spec.soft_targets
    values = epoch_values(["accuracy", "f1"], scores, one_hot, spec)
    reference = multiclass_reference(scores, targets)
    assert values == pytest.approx({k: reference[k] for k in values}, abs=1e-6)


@pytest.mark.parametrize("ignore", [-100, 0])  # 0: the background class itself is ignored
def test_segmentation_metrics_honour_ignore_index(ignore) -> None:
    logits, masks = segmentation_data(ignore)
    loss = torch.nn.CrossEntropyLoss(ignore_index=ignore)
    spec = infer_task("auto", logits, masks, loss)
    assert spec == TaskSpec("multiclass", 11, dense=True, ignore_index=ignore)
    values = epoch_values(["accuracy", "iou", "f1", "top3_accuracy"], logits, masks, spec)
    reference = multiclass_reference(logits, masks, ignore)
    assert values == pytest.approx({k: reference[k] for k in values}, abs=1e-6)
    # ignored pixels really are left out: counting them (as background) changes the numbers
    counted = multiclass_reference(logits, masks.clamp(min=0), ignore=-1)
    assert abs(values["accuracy"] - counted["accuracy"]) > 1e-3


def test_binary_metrics_equal_the_numpy_reference() -> None:
    logits, targets = binary_data()
    spec = infer_task("auto", logits, targets, torch.nn.BCEWithLogitsLoss())
    values = epoch_values(LABEL_METRICS, logits, targets, spec)
    reference = label_reference(logits, targets)
    assert 0.5 < values["f1"] < 1.0
    assert values == pytest.approx(reference, abs=1e-6)


def test_binary_probabilities_threshold_at_one_half() -> None:
    logits, targets = binary_data()
    probs = torch.sigmoid(logits / 10)
    spec = infer_task("auto", probs, targets, torch.nn.BCELoss())
    values = epoch_values(LABEL_METRICS, probs, targets, spec)
    assert values == pytest.approx(label_reference(logits, targets), abs=1e-6)


def test_multilabel_metrics_equal_the_numpy_reference() -> None:
    logits, targets = multilabel_data()
    spec = infer_task("multilabel", logits, targets, None)
    values = epoch_values(LABEL_METRICS, logits, targets, spec)
    reference = label_reference(logits, targets)
    assert 0.6 < values["binary_accuracy"] < 1.0
    assert values == pytest.approx(reference, abs=1e-6)


def test_regression_metrics_equal_the_numpy_reference() -> None:
    outputs, targets = regression_data()
    spec = infer_task("auto", outputs, targets, None)
    assert spec.task == "regression"
    values = epoch_values(["mae", "mse", "rmse"], outputs, targets, spec)
    reference = regression_reference(outputs, targets)
    assert values["mae"] > 0.001
    assert values == pytest.approx(reference, rel=1e-6, abs=1e-9)
    # the epoch RMSE is sqrt of the epoch MSE, not a mean of batch RMSEs
    assert values["rmse"] == pytest.approx(math.sqrt(values["mse"]), rel=1e-12)


def test_callables_are_batch_means_weighted_by_batch_size() -> None:
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)

    def hit_rate(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(1) == targets).float().mean()

    values = epoch_values(
        {"acc": "accuracy", "mine": hit_rate, "mean_score": lambda o, t: o.mean()},
        scores,
        targets,
        spec,
    )
    assert values["mine"] == pytest.approx(values["acc"], abs=1e-6)
    assert values["mean_score"] == pytest.approx(scores.double().mean().item(), rel=1e-6)
    assert list(values) == ["acc", "mine", "mean_score"]


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_torchmetrics_objects_keep_their_own_state() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)
    macro = torchmetrics.F1Score(task="multiclass", num_classes=10, average="macro")
    values = epoch_values({"f1": "f1", "tm_f1": macro}, scores, targets, spec)
    assert values["tm_f1"] == pytest.approx(values["f1"], abs=1e-6)
    assert parse_metrics([macro])[0].name == "MulticlassF1Score"


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_against_torchmetrics_functional() -> None:
    tmf = pytest.importorskip("torchmetrics.functional")
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)
    values = epoch_values(CLASS_METRICS, scores, targets, spec)
    kw = {"task": "multiclass", "num_classes": 10}
    expected = {
        "accuracy": tmf.accuracy(scores, targets, average="micro", **kw),
        "top3_accuracy": tmf.accuracy(scores, targets, average="micro", top_k=3, **kw),
        "f1": tmf.f1_score(scores, targets, average="macro", **kw),
        "precision": tmf.precision(scores, targets, average="macro", **kw),
        "recall": tmf.recall(scores, targets, average="macro", **kw),
        "iou": tmf.jaccard_index(scores, targets, average="macro", **kw),
    }
    for name, value in expected.items():
        assert values[name] == pytest.approx(value.item(), abs=1e-6), name
    logits, masks = segmentation_data()
    spec = infer_task("auto", logits, masks, None)
    seg = epoch_values(["iou"], logits, masks, spec)["iou"]
    expected_iou = tmf.jaccard_index(
        logits, masks, task="multiclass", num_classes=11, average="macro", ignore_index=-100
    )
    assert seg == pytest.approx(expected_iou.item(), abs=1e-6)
    logits, targets = multilabel_data()  # every label occurs, so the macro conventions agree
    spec = infer_task("multilabel", logits, targets, None)
    ml = epoch_values(["f1", "binary_accuracy"], logits, targets, spec)
    kw = {"task": "multilabel", "num_labels": 4}
    assert ml["f1"] == pytest.approx(
        tmf.f1_score(logits, targets.long(), average="macro", **kw).item(), abs=1e-6
    )
    assert ml["binary_accuracy"] == pytest.approx(
        tmf.accuracy(logits, targets.long(), average="micro", **kw).item(), abs=1e-6
    )
    outputs, targets = regression_data()
    reg = epoch_values(
        ["mae", "mse"], outputs, targets, infer_task("regression", outputs, targets, None)
    )
    assert reg["mae"] == pytest.approx(tmf.mean_absolute_error(outputs, targets).item(), rel=1e-5)
    assert reg["mse"] == pytest.approx(tmf.mean_squared_error(outputs, targets).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (TaskSpec("multiclass", 10), ("accuracy",)),
        (TaskSpec("multiclass", 11, dense=True), ("accuracy", "iou")),
        (TaskSpec("binary", 1), ("binary_accuracy",)),
        (TaskSpec("multilabel", 4), ("binary_accuracy",)),
        (TaskSpec("regression"), ("mae",)),
    ],
)
def test_default_metrics_fit_the_task(spec, expected) -> None:
    assert default_metrics(spec) == expected


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("metrics", "data", "match"),
    [
        ("accuracy", multilabel_data,
         r"'accuracy' doesn't fit task 'multilabel' \(it is for multiclass models\).*"
         r"'binary_accuracy'"),
        ("accuracy", regression_data, r"'accuracy' doesn't fit task 'regression'.*'mae'"),
        ("mae", multiclass_data, r"'mae' doesn't fit task 'multiclass'.*'top\{k\}_accuracy'"),
        ("binary_accuracy", multiclass_data, r"'binary_accuracy' doesn't fit task 'multiclass'"),
        ("top3_accuracy", binary_data, r"'top3_accuracy' doesn't fit task 'binary'"),
        ("top11_accuracy", multiclass_data, r"needs 1 <= k <= the number of classes \(10\)"),
        ("top0_accuracy", multiclass_data, r"Received k=0"),
    ],
)  # fmt: skip
def test_metric_that_doesnt_fit_the_task(metrics, data, match) -> None:
    outputs, targets = data()
    task = "multilabel" if data is multilabel_data else "auto"
    loss = torch.nn.BCEWithLogitsLoss() if data is binary_data else None
    spec = infer_task(task, outputs, targets, loss)
    with pytest.raises(ValueError, match=match):
        bind_metrics(parse_metrics(metrics), spec, outputs[:8], targets[:8])


def test_callable_must_return_one_number() -> None:
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)
    per_sample = parse_metrics({"hits": lambda o, t: (o.argmax(1) == t).float()})
    with pytest.raises(ValueError, match=r"'hits' returned shape \(8,\).*one number.*\.mean\(\)"):
        bind_metrics(per_sample, spec, scores[:8], targets[:8])


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_torchmetrics_must_return_one_number() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    scores, targets = multiclass_data()
    spec = infer_task("auto", scores, targets, None)
    per_class = torchmetrics.F1Score(task="multiclass", num_classes=10, average="none")
    with pytest.raises(ValueError, match=r"'MulticlassF1Score' returned shape \(10,\)"):
        bind_metrics(parse_metrics([per_class]), spec, scores[:8], targets[:8])


@pytest.mark.parametrize(
    ("metrics", "error", "match"),
    [
        ("auc", ValueError, r"unknown metric 'auc'.*'accuracy'.*'top\{k\}_accuracy'.*dict"),
        (["accuracy", "accuracy"], ValueError, r"distinct and not 'loss'.*dict"),
        ({"loss": "mae"}, ValueError, r"distinct and not 'loss'"),
        (3, TypeError, r"`metrics`.*Received metrics=3"),
        ([3], TypeError, r"3 is neither a metric name"),
        ({1: "mae"}, TypeError, r"dict keys must be names"),
    ],
)
def test_bad_metrics_argument(metrics, error, match) -> None:
    with pytest.raises(error, match=match):
        parse_metrics(metrics)


def test_names() -> None:
    def mine(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return o.mean()

    requests = parse_metrics(["f1", lambda o, t: o.mean(), functools.partial(mine)])
    assert [r.name for r in requests] == ["f1", "metric_2", "mine"]
    assert parse_metrics(None) is None
    assert [r.name for r in parse_metrics("mae")] == ["mae"]


# ---------------------------------------------------------------- direction


@pytest.mark.parametrize("prefix", ["", "val_"])
@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("loss", "min"),
        ("accuracy", "max"),
        ("binary_accuracy", "max"),
        ("top3_accuracy", "max"),
        ("f1", "max"),
        ("precision", "max"),
        ("recall", "max"),
        ("iou", "max"),
        ("mae", "min"),
        ("mse", "min"),
        ("rmse", "min"),
        ("dice", None),
        ("metric_2", None),
        ("val", None),
    ],
)
def test_metric_direction(prefix: str, name: str, direction: str | None) -> None:
    assert metric_direction(prefix + name) == direction


@pytest.mark.parametrize("name", ["accuracy", "f1", "precision", "recall", "iou", "mae", "rmse"])
def test_each_direction_agrees_with_torchmetrics(name: str) -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = {
        "accuracy": lambda: torchmetrics.Accuracy(task="multiclass", num_classes=3),
        "f1": lambda: torchmetrics.F1Score(task="multiclass", num_classes=3),
        "precision": lambda: torchmetrics.Precision(task="multiclass", num_classes=3),
        "recall": lambda: torchmetrics.Recall(task="multiclass", num_classes=3),
        "iou": lambda: torchmetrics.JaccardIndex(task="multiclass", num_classes=3),
        "mae": torchmetrics.MeanAbsoluteError,
        "rmse": lambda: torchmetrics.MeanSquaredError(squared=False),
    }[name]()
    assert metric_direction(name) == ("max" if metric.higher_is_better else "min")
