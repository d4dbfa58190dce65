from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from convkit import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    ModelCheckpoint,
    NonFiniteLossError,
    TrainState,
    build_cnn,
    fit,
    load_checkpoint,
)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,))


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_train_begin(self, state) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("train_begin", state.epoch))

    def on_epoch_begin(self, state) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("epoch_begin", state.epoch))

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        assert isinstance(state.logs["loss"], torch.Tensor)
        self.calls.append(("batch_end", state.batch))

    def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        assert set(state.logs) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        self.calls.append(("epoch_end", state.epoch))

    def on_train_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("train_end", state.epoch))


def test_hooks_are_called_in_order(small_data) -> None:
    recorder = Recorder()
    fit(tiny_cnn(), small_data, epochs=2, batch_size=150, val_data=small_data, progress=False,
        device="cpu", callbacks=[recorder])  # fmt: skip
    assert recorder.calls == [
        ("train_begin", 0),
        ("epoch_begin", 1), ("batch_end", 0), ("batch_end", 1), ("epoch_end", 1),
        ("epoch_begin", 2), ("batch_end", 0), ("batch_end", 1), ("epoch_end", 2),
        ("train_end", 2),
    ]  # fmt: skip


def test_a_callback_can_stop_training(small_data) -> None:
    class StopAfterOne(Callback):
        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            state.stop_training = True

    history = fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu",
                  callbacks=[StopAfterOne()])  # fmt: skip
    assert len(history) == 1


def test_early_stopping_stops_and_restores_the_best_weights(small_data) -> None:
    class Worsening(Callback):
        """Fakes a val_loss that is best at epoch 2, then gets worse."""

        def __init__(self) -> None:
            self.weights: dict[int, dict] = {}

        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            state.logs["val_loss"] = [3.0, 1.0, 2.0, 2.5, 2.7, 2.9][state.epoch - 1]
            self.weights[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    faker = Worsening()
    stopper = EarlyStopping(patience=2, restore_best=True)
    model = tiny_cnn()
    history = fit(model, small_data, epochs=6, val_data=small_data, progress=False,
                  device="cpu", callbacks=[faker, stopper])  # fmt: skip
    assert len(history) == 4 and stopper.stopped_epoch == 4 and stopper.best_epoch == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, faker.weights[2][key])


def test_early_stopping_mode_and_monitor_checks(small_data) -> None:
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="loss").mode == "min"
    with pytest.raises(ValueError, match=r"`monitor`.*'val_loss' is not logged \(pass val_data"):
        fit(tiny_cnn(), small_data, epochs=1, progress=False, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match=r"`mode`.*'up'"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match=r"`patience`"):
        EarlyStopping(patience=-1)


def test_model_checkpoint_every_epoch_and_best_only(small_data, tmp_path) -> None:
    every = ModelCheckpoint(tmp_path / "e{epoch:02d}.pt", every_n_epochs=2)
    best = ModelCheckpoint(tmp_path / "best.pt", monitor="val_accuracy", save_best_only=True)
    model = tiny_cnn()
    history = fit(model, small_data, epochs=4, val_data=small_data, progress=False,
                  device="cpu", callbacks=[every, best])  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("e*.pt")) == ["e02.pt", "e04.pt"]
    payload = load_checkpoint(tmp_path / "best.pt")
    best_epoch = max(range(4), key=lambda i: history["val_accuracy"][i]) + 1
    assert payload["epoch"] == best_epoch
    last = load_checkpoint(tmp_path / "e04.pt", tiny_cnn(seed=9))
    assert last["history"]["history"]["loss"] == history["loss"]


def test_csv_logger(small_data, tmp_path) -> None:
    path = tmp_path / "log.csv"
    history = fit(tiny_cnn(), small_data, epochs=3, val_data=small_data, progress=False,
                  device="cpu", callbacks=[CSVLogger(path)])  # fmt: skip
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history["val_loss"])


def test_callbacks_type_checked(small_data) -> None:
    with pytest.raises(TypeError, match=r"`callbacks`"):
        fit(tiny_cnn(), small_data, progress=False, callbacks=[lambda s: None])


class LRRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_one_cycle_is_stepped_after_every_batch(small_data) -> None:
    recorder = LRRecorder()
    sched = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=6)  # noqa: E731
    fit(tiny_cnn(), small_data, epochs=2, batch_size=100, progress=False, device="cpu",
        scheduler=sched, callbacks=[recorder])  # fmt: skip
    reference_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=0.01, total_steps=6)
    expected = []
    for _ in range(6):  # 3 batches x 2 epochs
        reference_opt.step()
        reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert len(set(recorder.lrs)) == 6  # a new learning rate after every batch


def test_step_lr_is_stepped_after_every_epoch(small_data) -> None:
    model = tiny_cnn()
    recorder = LRRecorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    fit(model, small_data, epochs=3, batch_size=150, optimizer=opt, progress=False, device="cpu",
        scheduler=sched, callbacks=[recorder])  # fmt: skip
    assert recorder.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_reduce_on_plateau_gets_the_monitored_value(small_data) -> None:
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    original = plateau.step
    plateau.step = lambda metrics: (seen.append(metrics), original(metrics))[1]  # type: ignore[method-assign]
    history = fit(model, small_data, epochs=2, val_data=small_data, optimizer=opt, progress=False,
                  device="cpu", scheduler=plateau)  # fmt: skip
    assert seen == history["val_loss"]


def test_grad_clip_limits_the_update(small_data) -> None:
    steps = {}
    for clip in (None, 1e-3):
        model = tiny_cnn()
        before = [p.detach().clone() for p in model.parameters()]
        sgd = lambda p: torch.optim.SGD(p, lr=1.0)  # noqa: E731
        fit(model, small_data, epochs=1, batch_size=300, optimizer=sgd, progress=False,
            device="cpu", grad_clip=clip)  # fmt: skip
        steps[clip] = torch.sqrt(
            sum(
                ((p.detach() - b) ** 2).sum()
                for p, b in zip(model.parameters(), before, strict=True)
            )
        ).item()
    assert steps[1e-3] == pytest.approx(
        1e-3, rel=1e-3
    )  # one SGD step of lr 1 on a clipped gradient
    assert steps[None] > 10 * steps[1e-3]


def test_nan_loss_stops_before_the_step(small_data) -> None:
    model = tiny_cnn()
    data = _NanOnSecondEpoch(*small_data)
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at epoch 2, batch 1.*before the optimizer"
    ) as info:
        fit(model, data, epochs=3, batch_size=100, progress=False, device="cpu",
            callbacks=[_Poison(data)])  # fmt: skip
    assert isinstance(info.value, FloatingPointError)
    assert (info.value.epoch, info.value.batch) == (2, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(info.value.history) == 1  # epoch 1 was kept
    assert torch.isfinite(torch.tensor(info.value.history["loss"])).all()


class _NanOnSecondEpoch(torch.utils.data.Dataset):
    """Clean data in epoch 1, NaN images from epoch 2 on (``_Poison`` says which epoch)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets, self.poisoned = inputs, targets, False

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        x = self.inputs[i].clone()
        if self.poisoned:
            x.fill_(float("nan"))
        return x, self.targets[i]


# ---- ModelCheckpoint's path template


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("e{epoh:02d}.pt", r"'e\{epoh:02d\}.pt' has the unknown field \{epoh\} \(did you mean "
         r"\{epoch\}\?\). Valid fields: 'epoch' and the names of the metrics fit logs, e.g. "
         r"'loss', 'val_accuracy'"),
        ("m-{val_los:.3f}.pt", r"unknown field \{val_los\} \(did you mean \{val_loss\}\?\)"),
        ("m-{}.pt", r"has the field \{\}: only named fields such as \{epoch:03d\}"),
        ("m-{0}.pt", r"has the field \{0\}"),
        ("m-{epoch.real}.pt", r"has the field \{epoch.real\}"),
        ("m-{epoch!r}.pt", r"has the field \{epoch\}"),
        ("m-{val_loss:03d}.pt", r"formats 'val_loss' with '03d', which a float can't take"),
        ("m-{epoch.pt", r"is not a valid template \(.*\); write a literal brace as '\{\{'"),
    ],
)  # fmt: skip
def test_model_checkpoint_template_is_checked_when_made(path: str, message: str) -> None:
    prefix = r"Invalid value for argument `path` of ModelCheckpoint: .*"
    with pytest.raises(ValueError, match=prefix + message):
        ModelCheckpoint(path)


def test_template_fields_are_checked_against_the_logs_before_training(
    small_data, tmp_path: Path
) -> None:
    ModelCheckpoint(tmp_path / "{f1:.2f}-{epoch:03d}.pt")  # may be a metric of the user's
    model = tiny_cnn()
    before = [t.clone() for t in model.state_dict().values()]
    message = r"field \{f1\}, which fit doesn't log. Valid fields: 'epoch', 'loss', 'accuracy'\."
    with pytest.raises(ValueError, match=message):
        fit(model, small_data, epochs=1, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "{f1:.2f}-{epoch:03d}.pt")])  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    assert list(tmp_path.iterdir()) == []


def _unwritable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    if kind == "file as directory":
        (tmp_path / "runs").write_text("not a directory")
        return tmp_path / "runs" / "m.pt", r"runs is a file, where a directory is needed"
    if kind == "existing directory":
        (tmp_path / "m.pt").mkdir()
        return tmp_path / "m.pt", r"it is an existing directory"
    if kind == "read-only directory":
        (tmp_path / "ro").mkdir(mode=0o500)
        return tmp_path / "ro" / "m.pt", r"it can't be created \(Permission denied\)"
    return Path("/proc/convkit-test/m.pt"), r"it can't be created"  # even root can't write


@pytest.mark.parametrize(
    "kind",
    [
        "file as directory",
        "existing directory",
        pytest.param("read-only directory", marks=pytest.mark.skipif(
            os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")),
        pytest.param("proc file system", marks=pytest.mark.skipif(
            not sys.platform.startswith("linux"), reason="Linux's /proc")),
    ],
)  # fmt: skip
def test_unwritable_checkpoint_path_fails_before_the_first_epoch(
    small_data, tmp_path: Path, kind: str
) -> None:
    path, reason = _unwritable(tmp_path, kind)
    recorder = Recorder()
    message = rf"`path` of ModelCheckpoint: '{path}' can't be written: .*{reason}"
    with pytest.raises(ValueError, match=message):
        fit(tiny_cnn(), small_data, epochs=1, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(path), recorder])  # fmt: skip
    assert ("epoch_begin", 1) not in recorder.calls


# ---- Ctrl-C


class CtrlC(Callback):
    """Presses Ctrl-C (a real SIGINT) after the first batch of ``epoch``; records each
    epoch's final weights."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        if state.epoch == self.epoch and self.epoch not in self.weights:
            self.weights[self.epoch] = {}
            signal.raise_signal(signal.SIGINT)

    def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.weights[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}


def test_ctrl_c_keeps_the_clean_checkpoint_and_writes_a_separate_file(
    small_data, tmp_path: Path
) -> None:
    ctrl_c = CtrlC(epoch=3)
    every_epoch = ModelCheckpoint(tmp_path / "ep{epoch}.pt")
    history = fit(tiny_cnn(), small_data, epochs=5, batch_size=100, progress=False,
                  device="cpu", callbacks=[every_epoch, ctrl_c], on_interrupt="return")  # fmt: skip
    assert history.interrupted and len(history) == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ep1.pt", "ep2.interrupted.pt", "ep2.pt"]
    clean = load_checkpoint(tmp_path / "ep2.pt")
    assert clean["epoch"] == 2 and clean["interrupted"] is False
    for key, value in ctrl_c.weights[2].items():  # still the end of epoch 2, bit for bit
        assert torch.equal(clean["model"][key], value), key
    cut = load_checkpoint(tmp_path / "ep2.interrupted.pt")
    assert cut["interrupted"] is True and cut["epoch"] == 2
    assert cut["clean_checkpoint"] == str(tmp_path / "ep2.pt")
    assert (
        cut["model"]["features.block1.norm.num_batches_tracked"]
        == clean["model"]["features.block1.norm.num_batches_tracked"] + 1
    )  # one batch of epoch 3 was trained


# ---- resuming: callback state by identity, a stop that stays, the CSV log


def test_swapped_checkpoints_keep_their_own_best_values(small_data, tmp_path: Path) -> None:
    def callbacks() -> list[ModelCheckpoint]:
        return [
            ModelCheckpoint(tmp_path / "best_loss.pt", monitor="loss", save_best_only=True),
            ModelCheckpoint(tmp_path / "best_acc.pt", monitor="accuracy", save_best_only=True),
            ModelCheckpoint(tmp_path / "last.pt"),
        ]

    first = callbacks()
    fit(tiny_cnn(), small_data, epochs=2, progress=False, device="cpu", callbacks=first)
    assert first[0].best != first[1].best
    swapped = callbacks()[::-1]
    fit(tiny_cnn(seed=1), small_data, epochs=2, progress=False, device="cpu",
        callbacks=swapped, resume_from=tmp_path / "last.pt")  # fmt: skip
    assert (swapped[2].best, swapped[1].best) == (first[0].best, first[1].best)


def test_resuming_with_other_callbacks_is_refused_before_loading(small_data, tmp_path) -> None:
    fit(tiny_cnn(), small_data, epochs=1, progress=False, device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "last.pt"), EarlyStopping("loss")])  # fmt: skip
    model = tiny_cnn(seed=1)
    before = [t.clone() for t in model.state_dict().values()]
    message = r"`callbacks`: .*last.pt holds no state for \[\"EarlyStopping\('accuracy'\)\"\]"
    with pytest.raises(ValueError, match=message + r"; it holds the state of \["):
        fit(model, small_data, epochs=2, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "last.pt"), EarlyStopping("accuracy")],
            resume_from=tmp_path / "last.pt")  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))


@pytest.mark.parametrize("checkpoint_first", [True, False])
def test_a_resumed_run_that_early_stopping_ended_trains_no_further(
    small_data, tmp_path: Path, checkpoint_first: bool
) -> None:
    def callbacks() -> list[Callback]:
        saver = ModelCheckpoint(tmp_path / "last.pt")
        stopper = EarlyStopping("loss", patience=0, min_delta=100.0)  # stops after epoch 2
        return [saver, stopper] if checkpoint_first else [stopper, saver]

    history = fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu",
                  callbacks=callbacks())  # fmt: skip
    assert len(history) == 2 and load_checkpoint(tmp_path / "last.pt")["stopped"] is True
    recorder = Recorder()
    resumed = fit(tiny_cnn(seed=1), small_data, epochs=5, progress=False, device="cpu",
                  callbacks=[*callbacks(), recorder], resume_from=tmp_path / "last.pt")  # fmt: skip
    assert len(resumed) == 2 and ("epoch_begin", 3) not in recorder.calls


def test_csv_logger_drops_rows_past_the_resumed_checkpoint(small_data, tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    fit(tiny_cnn(), small_data, epochs=3, progress=False, device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt"), CSVLogger(log)])  # fmt: skip
    fit(tiny_cnn(), small_data, epochs=4, progress=False, device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt"), CSVLogger(log)],
        resume_from=tmp_path / "ep2.pt")  # fmt: skip
    with log.open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]


class _Poison(Callback):
    """Turns the dataset's images to NaN from epoch 2 on (fit reads a first batch before)."""

    def __init__(self, data: _NanOnSecondEpoch) -> None:
        self.data = data

    def on_epoch_begin(self, state: TrainState) -> None:
        self.data.poisoned = state.epoch >= 2


def test_ctrl_c_in_the_first_epoch_names_missing_metrics_nan(small_data, tmp_path: Path) -> None:
    saver = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.pt")
    history = fit(tiny_cnn(), small_data, epochs=3, batch_size=100, val_data=small_data,
                  progress=False, device="cpu", callbacks=[saver, CtrlC(epoch=1)],
                  on_interrupt="return")  # fmt: skip
    assert history.interrupted and len(history) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m-00-nan.interrupted.pt"]
    assert (
        saver.last_path is None and saver.interrupted_path == tmp_path / "m-00-nan.interrupted.pt"
    )
    assert load_checkpoint(saver.interrupted_path)["clean_checkpoint"] is None


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"patience": "3"}, TypeError, r"`patience`.*Expected an int.*'3'"),
        ({"patience": -1}, ValueError, r"`patience`.*non-negative.*-1"),
        ({"min_delta": float("nan")}, ValueError, r"`min_delta`.*nan"),
        ({"min_delta": "0.1"}, TypeError, r"`min_delta`.*number"),
        ({"restore_best": "no"}, TypeError, r"`restore_best`.*True or False.*'no'"),
    ],
)
def test_early_stopping_refuses_bad_arguments(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        EarlyStopping(**kwargs)


# ---- one base for monitoring callbacks: a fresh run starts afresh, mode from the metric


def _val_split(sample_train: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    inputs, targets = sample_train
    return inputs[300:600].clone(), targets[300:600].clone()


def test_a_reused_early_stopping_forgets_the_first_run(small_data, sample_train) -> None:
    val = _val_split(sample_train)
    stopper = EarlyStopping("val_loss", patience=1, restore_best=True)
    first = tiny_cnn(seed=0)
    fit(first, small_data, epochs=4, val_data=val, lr=3e-3, progress=False, device="cpu",
        seed=0, callbacks=[stopper])  # fmt: skip
    first_weights = {k: v.clone() for k, v in first.state_dict().items()}
    assert stopper.best < 2.1  # the first run's best: lower than anything the second reaches

    second = tiny_cnn(seed=1)
    history = fit(second, small_data, epochs=3, val_data=val, progress=False, device="cpu",
                  seed=0, callbacks=[stopper])  # fmt: skip
    assert history["val_loss"] == sorted(history["val_loss"], reverse=True)  # each improves
    assert len(history) == 3 and stopper.stopped_epoch == 0
    assert (stopper.best, stopper.best_epoch) == (history["val_loss"][2], 3)
    weight = "features.block1.conv.weight"
    assert not torch.equal(second.state_dict()[weight], first_weights[weight])


def test_a_resumed_early_stopping_counts_on_from_its_checkpoint(small_data, tmp_path: Path) -> None:
    def callbacks() -> list[Callback]:  # only epoch 1 improves (on inf): a stop after epoch 3
        stopper = EarlyStopping("loss", patience=2, min_delta=100.0)
        return [ModelCheckpoint(tmp_path / "ep{epoch}.pt"), stopper]

    whole = fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu", seed=0,
                callbacks=callbacks())  # fmt: skip
    assert whole.stopped_epoch == 3
    resumed = fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu",
                  callbacks=callbacks(), resume_from=tmp_path / "ep2.pt")  # fmt: skip
    assert len(resumed) == 3 and resumed.stopped_epoch == 3 and resumed.best_epoch == 1


def test_resuming_a_stopped_run_says_only_that_it_stopped(
    small_data, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stopper = EarlyStopping("loss", patience=1, min_delta=100.0)  # stops after epoch 2
    callbacks: list[Callback] = [ModelCheckpoint(tmp_path / "ep{epoch}.pt"), stopper]
    fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu", callbacks=callbacks)
    with caplog.at_level(logging.INFO, logger="convkit"):
        resumed = fit(
            tiny_cnn(),
            small_data,
            epochs=5,
            progress=False,
            device="cpu",
            resume_from=tmp_path / "ep2.pt",
        )
    assert len(resumed) == 2 and resumed.stopped_epoch == 2
    said = [r.getMessage() for r in caplog.records if r.name.startswith("convkit.train")]
    assert any("was stopped by a callback; no epoch to train" in line for line in said), said
    assert not any(line.startswith("fit: epochs") for line in said), said  # not "epochs 3-5"


def test_a_reused_model_checkpoint_forgets_the_first_runs_best(
    small_data, sample_train, tmp_path: Path
) -> None:
    val = _val_split(sample_train)
    best = ModelCheckpoint(tmp_path / "best.pt", monitor="val_loss", save_best_only=True)
    fit(tiny_cnn(seed=0), small_data, epochs=3, val_data=val, lr=3e-3, progress=False,
        device="cpu", seed=0, callbacks=[best])  # fmt: skip
    (tmp_path / "best.pt").unlink()
    history = fit(tiny_cnn(seed=1), small_data, epochs=1, val_data=val, progress=False,
                  device="cpu", seed=0, callbacks=[best])  # fmt: skip
    assert (tmp_path / "best.pt").is_file()  # the second run's first epoch is its best
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["history"]["history"]["val_loss"] == history["val_loss"]
    assert best.last_path == tmp_path / "best.pt" and best.best_epoch == 1


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [
        ("val_f1", "max"),
        ("f1", "max"),
        ("val_iou", "max"),
        ("val_precision", "max"),
        ("recall", "max"),
        ("val_accuracy", "max"),
        ("top3_accuracy", "max"),
        ("val_binary_accuracy", "max"),
        ("val_loss", "min"),
        ("loss", "min"),
        ("val_mae", "min"),
        ("rmse", "min"),
    ],
)
def test_mode_auto_reads_the_metrics_direction(monitor: str, mode: str, tmp_path) -> None:
    assert EarlyStopping(monitor).mode == mode
    assert ModelCheckpoint(tmp_path / "m.pt", monitor=monitor, save_best_only=True).mode == mode


def test_early_stopping_on_f1_keeps_training_while_f1_rises(small_data, sample_train) -> None:
    stopper = EarlyStopping("val_f1", patience=0)
    history = fit(tiny_cnn(seed=2), small_data, epochs=3, val_data=_val_split(sample_train),
                  metrics=["accuracy", "f1"], progress=False, device="cpu", seed=0,
                  callbacks=[stopper])  # fmt: skip
    assert history["val_f1"] == sorted(history["val_f1"])  # rises every epoch
    assert len(history) == 3 and stopper.stopped_epoch == 0 and stopper.best_epoch == 3


def test_model_checkpoint_keeps_the_epoch_of_the_highest_f1(
    small_data, sample_train, tmp_path: Path
) -> None:
    saver = ModelCheckpoint(tmp_path / "best.pt", monitor="val_f1", save_best_only=True)
    history = fit(tiny_cnn(seed=2), small_data, epochs=3, val_data=_val_split(sample_train),
                  metrics=["accuracy", "f1"], progress=False, device="cpu", seed=0,
                  callbacks=[saver])  # fmt: skip
    highest = max(range(3), key=lambda i: history["val_f1"][i]) + 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == highest
    assert saver.best_epoch == highest


def test_mode_is_an_argument_of_model_checkpoint(small_data, tmp_path: Path) -> None:
    lowest = ModelCheckpoint(tmp_path / "low.pt", monitor="accuracy", save_best_only=True,
                             mode="min")  # fmt: skip
    history = fit(tiny_cnn(), small_data, epochs=3, progress=False, device="cpu", seed=0,
                  callbacks=[lowest])  # fmt: skip
    epoch = min(range(3), key=lambda i: history["accuracy"][i]) + 1
    assert load_checkpoint(tmp_path / "low.pt")["epoch"] == epoch


def test_a_metric_of_unknown_direction_needs_a_mode(small_data, tmp_path: Path) -> None:
    fix = r"pass mode='min' or mode='max'\."
    with pytest.raises(
        ValueError, match=r"`mode` of EarlyStopping: .*'val_dice' is unknown.*" + fix
    ):
        EarlyStopping("val_dice")
    with pytest.raises(ValueError, match=r"`mode` of ModelCheckpoint: .*'dice' is unknown"):
        ModelCheckpoint(tmp_path / "m.pt", monitor="dice", save_best_only=True)
    assert ModelCheckpoint(tmp_path / "m.pt", monitor="dice").mode == "auto"  # unused monitor

    def dice(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hit = outputs.argmax(1) == targets
        return 2 * hit.float().mean() / (1 + hit.float().mean())

    stopper = EarlyStopping("dice", mode="max", patience=0)  # the fix works
    history = fit(tiny_cnn(), small_data, epochs=3, metrics={"dice": dice}, progress=False,
                  device="cpu", seed=0, callbacks=[stopper])  # fmt: skip
    assert stopper.best == max(history["dice"][: stopper.best_epoch])


# ---- arguments refused with a message that names them


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: ModelCheckpoint(None), TypeError,
         r"type for argument `path` of ModelCheckpoint\. Expected a file or folder name "
         r"\(a str or pathlib\.Path\), e\.g\. 'checkpoints/ep\{epoch:03d\}\.pt'\. "
         r"Received path=None\."),
        (lambda: ModelCheckpoint(3), TypeError, r"`path` of ModelCheckpoint.*Received path=3\."),
        (lambda: ModelCheckpoint(""), ValueError, r"`path` of ModelCheckpoint: the name is empty"),
        (lambda: ModelCheckpoint("m.pt", monitor=3), TypeError,
         r"`monitor` of ModelCheckpoint\. Expected the name of a logged metric \(a str\), "
         r"e\.g\. 'val_loss' or 'val_accuracy'\. Received monitor=3\."),
        (lambda: EarlyStopping(monitor=5), TypeError,
         r"`monitor` of EarlyStopping\. Expected the name of a logged metric.*monitor=5\."),
        (lambda: EarlyStopping(monitor=""), ValueError, r"`monitor` of EarlyStopping: .*empty"),
        (lambda: ModelCheckpoint("m.pt", save_best_only="no"), TypeError,
         r"`save_best_only`\. Expected True or False\. Received save_best_only='no'\."),
        (lambda: ModelCheckpoint("m.pt", every_n_epochs="2"), TypeError,
         r"`every_n_epochs`\. Expected an int\. Received every_n_epochs='2'"),
        (lambda: ModelCheckpoint("m.pt", every_n_epochs=0), ValueError,
         r"`every_n_epochs`\. Expected a strictly positive int\. Received every_n_epochs=0"),
        (lambda: ModelCheckpoint("m.pt", mode="up"), ValueError,
         r"`mode`\. Expected one of 'auto', 'min', 'max'\. Received mode='up'\."),
        (lambda: EarlyStopping(mode=1), TypeError, r"`mode`\. Expected one of .*mode=1\."),
        (lambda: EarlyStopping(restore_best_weights="yes"), TypeError,
         r"`restore_best_weights`\. Expected True or False\. Received restore_best_weights='yes'"),
        (lambda: EarlyStopping(restore_best_weights=False, restore_best=True), ValueError,
         r"`restore_best`: restore_best=True contradicts restore_best_weights=False"),
        (lambda: CSVLogger(None), TypeError, r"`path` of CSVLogger.*Received path=None\."),
    ],
)  # fmt: skip
def test_callback_arguments_are_checked(make, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        make()


# ---- restore_best_weights, Keras' name


@pytest.mark.parametrize(
    ("kwargs", "restored"),
    [
        ({}, True),
        ({"restore_best_weights": True}, True),
        ({"restore_best_weights": False}, False),
        ({"restore_best": False}, False),
        ({"restore_best": True}, True),
    ],
)
def test_restore_best_weights_is_one_switch_with_two_names(small_data, kwargs, restored) -> None:
    class Weights(Callback):
        def __init__(self) -> None:
            self.seen: dict[int, dict[str, torch.Tensor]] = {}

        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            self.seen[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    weights, stopper = Weights(), EarlyStopping("loss", patience=0, min_delta=100.0, **kwargs)
    model = tiny_cnn()
    fit(model, small_data, epochs=5, progress=False, device="cpu", callbacks=[weights, stopper])
    assert stopper.restore_best_weights is stopper.restore_best is restored
    kept = weights.seen[1 if restored else 2]  # best epoch 1; the run stops after epoch 2
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())


# ---- a stop that says why, recorded in the History and in checkpoints

STOP_LINE = (
    r"EarlyStopping stopped training after epoch 2/5: loss did not improve by more than 100 "
    r"for 1 epoch \(best loss (\d\.\d+) at epoch 1; restoring the weights of epoch 1\)\."
)


def test_a_stop_is_said_once_and_recorded(small_data, tmp_path: Path, caplog, capsys) -> None:
    stopper = EarlyStopping("loss", patience=0, min_delta=100.0)
    with caplog.at_level(logging.INFO, logger="convkit.training"):
        history = fit(tiny_cnn(), small_data, epochs=5, device="cpu", seed=0,
                      callbacks=[stopper, ModelCheckpoint(tmp_path / "last.pt")])  # fmt: skip
    logged = [r.getMessage() for r in caplog.records if "EarlyStopping" in r.getMessage()]
    assert len(logged) == 1 and re.fullmatch(STOP_LINE, logged[0])
    assert float(re.fullmatch(STOP_LINE, logged[0]).group(1)) == pytest.approx(
        history["loss"][0], rel=1e-3
    )
    printed = capsys.readouterr().out.splitlines()  # progress=True: under the epoch lines
    assert [line for line in printed if "EarlyStopping" in line] == logged
    assert printed.index(logged[0]) == len(printed) - 1
    assert (history.stopped_epoch, history.stopped_by) == (2, "EarlyStopping")
    assert (history.monitor, history.best, history.best_epoch) == ("loss", history["loss"][0], 1)
    assert repr(history).endswith(
        f"; best loss={history['loss'][0]:.4g} at epoch 1; stopped after epoch 2 by EarlyStopping)"
    )
    assert "Stopped after epoch 2 by EarlyStopping." in history._repr_html_()
    saved = load_checkpoint(tmp_path / "last.pt")["history"]
    restored = History.from_dict(json.loads(json.dumps(saved)))
    for name in ("stopped_epoch", "stopped_by", "monitor", "best", "best_epoch"):
        assert getattr(restored, name) == getattr(history, name), name


class StopMidEpoch(Callback):
    """Stops training from on_batch_end, in the middle of epoch 2."""

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        state.stop_training = state.epoch == 2 and state.batch == 0


@pytest.mark.parametrize("hook", ["epoch", "batch"])
def test_any_callback_that_stops_training_is_named_and_recorded(
    hook: str, small_data, tmp_path: Path, caplog
) -> None:
    class StopAtTwo(Callback):
        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            state.stop_training = state.epoch == 2

    stopper = StopAtTwo() if hook == "epoch" else StopMidEpoch()
    name = type(stopper).__name__
    with caplog.at_level(logging.INFO, logger="convkit.training"):
        callbacks = [stopper, ModelCheckpoint(tmp_path / "last.pt")]
        history = fit(
            tiny_cnn(), small_data, epochs=5, progress=False, device="cpu", callbacks=callbacks
        )
    assert len(history) == 2
    said = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert said == [f"{name} stopped training after epoch 2/5 (it set state.stop_training)."]
    assert (history.stopped_epoch, history.stopped_by) == (2, name)
    saved = History.from_dict(load_checkpoint(tmp_path / "last.pt")["history"])
    assert (saved.stopped_epoch, saved.stopped_by) == (2, name)  # in the checkpoint too


def test_a_keras_style_monitor_name_gets_the_name_fit_logs(small_data) -> None:
    with pytest.raises(
        ValueError, match=r"`monitor` of EarlyStopping: 'val_acc' .*did you mean 'val_accuracy'\?"
    ):
        EarlyStopping("val_acc")  # Keras 1's name; the advice was mode='min'/'max'
    data = small_data[0][:64], small_data[1][:64]
    kwargs = {"epochs": 3, "val_data": data, "progress": False, "device": "cpu"}
    callbacks = [EarlyStopping("val_acc", mode="max")]
    with pytest.raises(
        ValueError, match=r"'val_acc' is not logged \(did you mean 'val_accuracy'\?\)\. Logged"
    ) as err:
        fit(tiny_cnn(), data, callbacks=callbacks, **kwargs)
    assert "pass val_data" not in str(err.value)  # it was passed
    stopper = EarlyStopping("val_accuracy", patience=0, min_delta=1.0)  # the advice works
    history = fit(tiny_cnn(), data, callbacks=[stopper], **kwargs)
    assert history.monitor == "val_accuracy" and history.stopped_epoch == 2


def test_a_resumed_run_keeps_the_best_epoch_in_its_history(small_data, tmp_path: Path) -> None:
    def callbacks() -> list[Callback]:
        return [ModelCheckpoint(tmp_path / "ep{epoch}.pt"), EarlyStopping("loss", patience=3)]

    whole = fit(tiny_cnn(), small_data, epochs=4, progress=False, device="cpu", seed=0,
                callbacks=callbacks())  # fmt: skip
    resumed = fit(tiny_cnn(), small_data, epochs=4, progress=False, device="cpu",
                  callbacks=callbacks(), resume_from=tmp_path / "ep2.pt")  # fmt: skip
    assert resumed.stopped_epoch is None and whole.stopped_epoch is None
    assert (resumed.monitor, resumed.best, resumed.best_epoch) == ("loss", whole.best, 4)


def test_restoring_without_a_stop_is_said_too(small_data, caplog) -> None:
    class Worsening(Callback):
        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            state.logs["val_loss"] = [1.0, 2.0, 3.0][state.epoch - 1]

    with caplog.at_level(logging.INFO, logger="convkit.training"):
        history = fit(tiny_cnn(), small_data, epochs=3, val_data=small_data, progress=False,
                      device="cpu", callbacks=[Worsening(), EarlyStopping(patience=5)])  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "EarlyStopping" in r.getMessage()]
    assert said == [
        "EarlyStopping restored the weights of epoch 1 (best val_loss 1 at epoch 1); "
        "the last epoch trained was 3."
    ]
    assert history.stopped_epoch is None and history.best_epoch == 1


# ---- a full disk or a taken file name, found when training begins


class EpochsBegun(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_begin(self, state) -> None:  # type: ignore[no-untyped-def]
        self.epochs.append(state.epoch)


def _bigger_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(512,))  # 400,000 parameters


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam(p),
        lambda p: torch.optim.AdamW(p, amsgrad=True),
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.01),
        lambda p: torch.optim.RMSprop(p, centered=True),
    ],
    ids=["adam", "adamw-amsgrad", "sgd-momentum", "sgd", "rmsprop-centered"],
)
def test_the_size_estimate_matches_the_file_written(small_data, tmp_path: Path, make) -> None:
    from convkit.train.callbacks.model_checkpoint import estimate_checkpoint_bytes

    model = _bigger_cnn()
    optimizer = make(model.parameters())
    estimate = estimate_checkpoint_bytes(model, optimizer)  # before the first step
    fit(model, small_data, epochs=1, optimizer=optimizer, progress=False, device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "m.pt")])  # fmt: skip
    written = (tmp_path / "m.pt").stat().st_size
    assert 0.97 * written < estimate <= written  # the tensors; the file adds a few kB
    after = estimate_checkpoint_bytes(model, optimizer)  # the real state, with step counters
    assert after == pytest.approx(estimate, rel=1e-4)


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_training(
    small_data, tmp_path: Path, monkeypatch
) -> None:
    real = shutil.disk_usage
    free = 3_000_000  # bytes; the weights (1.6 MB) and Adam's two moments take 4.9 MB
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    model, begun = _bigger_cnn(), EpochsBegun()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = (
        r"`path` of ModelCheckpoint: '.*m\.pt' can't be written: the file system holding it "
        r"has 3\.0 MB free, and one checkpoint takes about 4\.9 MB \(weights, buffers and "
        r"optimizer state\)\. Free some space, or save to another disk\."
    )
    with pytest.raises(ValueError, match=message):
        fit(model, small_data, epochs=2, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "m.pt"), begun])  # fmt: skip
    assert begun.epochs == [] and list(tmp_path.iterdir()) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_disk_short_of_the_planned_files_is_warned_about(
    small_data, tmp_path: Path, monkeypatch, caplog
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000_000))
    with caplog.at_level(logging.WARNING, logger="convkit.training"):
        fit(_bigger_cnn(), small_data, epochs=1, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt")])  # fmt: skip
        assert not caplog.records  # one file of 4.9 MB and its temporary copy fit in 10 MB
        fit(_bigger_cnn(), small_data, epochs=3, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt")])  # fmt: skip
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "the 3 file(s) this run plans to write take about 4.9 MB each" in caplog.text


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def test_a_real_small_file_system_is_refused_before_training(small_data, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("needs root and mount to make a 2 MB tmpfs")
    try:
        begun = EpochsBegun()
        with pytest.raises(ValueError, match=r"can't be written: the file system holding it"):
            fit(_bigger_cnn(), small_data, epochs=2, progress=False, device="cpu",
                callbacks=[ModelCheckpoint(disk / "m.pt"), begun])  # fmt: skip
        assert begun.epochs == [] and list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_later_epochs_file_taken_by_a_directory_is_found_before_training(
    small_data, tmp_path: Path
) -> None:
    (tmp_path / "ep2.pt").mkdir()
    begun = EpochsBegun()
    message = (
        r"`path` of ModelCheckpoint: '.*ep\{epoch\}\.pt' can't be written at epoch 2: "
        r".*ep2\.pt is an existing directory\. Remove or rename it, or choose another file name\."
    )
    with pytest.raises(ValueError, match=message):
        fit(tiny_cnn(), small_data, epochs=3, progress=False, device="cpu",
            callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt"), begun])  # fmt: skip
    assert begun.epochs == []
    # a run that ends before epoch 2 never writes there, and is not refused
    fit(tiny_cnn(), small_data, epochs=1, progress=False, device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt")])  # fmt: skip
    assert (tmp_path / "ep1.pt").is_file()
