from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from convkit import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    NonFiniteLossError,
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


@pytest.mark.parametrize("per_batch", [False, True])
def test_schedulers(small_data, per_batch: bool) -> None:
    model = tiny_cnn()
    if per_batch:
        sched = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=6)  # noqa: E731
        fit(
            model,
            small_data,
            epochs=2,
            batch_size=100,
            progress=False,
            device="cpu",
            scheduler=sched,
        )
        # 3 batches x 2 epochs = 6 steps: the one-cycle schedule ran to its end
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched_obj = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        fit(model, small_data, epochs=3, optimizer=opt, progress=False, device="cpu",
            scheduler=sched_obj)  # fmt: skip
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
        fit(model, data, epochs=3, batch_size=100, progress=False, device="cpu")
    assert isinstance(info.value, FloatingPointError)
    assert (info.value.epoch, info.value.batch) == (2, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(info.value.history) == 1  # epoch 1 was kept
    assert torch.isfinite(torch.tensor(info.value.history["loss"])).all()


class _NanOnSecondEpoch(torch.utils.data.Dataset):
    """Clean data in epoch 1, NaN images from epoch 2 on."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets, self.reads = inputs, targets, 0

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        x = self.inputs[i].clone()
        if self.reads > len(self.inputs):
            x.fill_(float("nan"))
        return x, self.targets[i]
