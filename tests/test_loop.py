"""The training loop under faults and unusual arguments: every case here once went wrong
silently (a skipped callback, a crash after an epoch, a NaN that reached the weights)."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import convkit.train.distributed
import convkit.train.run
from convkit import (
    Callback,
    NonFiniteLossError,
    build_cnn,
    evaluate,
    fit,
    predict,
)

CPU = {"device": "cpu", "progress": False}


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # BatchNorm2d after the conv and BatchNorm1d in the head (which a single sample breaks)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,), head_norm="batch")


def plain_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), norm=None, hidden=())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder(Callback):
    def __init__(self) -> None:
        self.ends: list[int] = []
        self.lrs: list[float] = []

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.lrs.append(state.optimizer.param_groups[0]["lr"])

    def on_train_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.ends.append(state.epoch)


# ---------------------------------------------------------------- callbacks and the end


def test_on_train_end_runs_when_fit_is_called_in_an_except_block(small_data) -> None:
    recorder = Recorder()
    try:
        raise RuntimeError("the caller's own, handled error")
    except RuntimeError:
        fit(plain_cnn(), small_data, epochs=2, callbacks=[recorder], **CPU)
    assert recorder.ends == [2]


def test_on_train_end_is_skipped_when_training_fails(small_data) -> None:
    recorder = Recorder()

    class Boom(Callback):
        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(plain_cnn(), small_data, epochs=2, callbacks=[recorder, Boom()], **CPU)
    assert recorder.ends == []


# ------------------------------------------------------------------------- progress


def test_no_progress_bar_means_no_host_reads_however_often_it_would_refresh(
    small_data, monkeypatch
) -> None:
    """A hidden bar must not read the running loss (one host sync each time)."""
    monkeypatch.setattr(convkit.train.run, "POSTFIX_INTERVAL_S", 0.0)
    reads = []
    original = torch.Tensor.item

    def counting(self):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "item", counting)
    fit(plain_cnn(), small_data, epochs=1, batch_size=10, nan_guard=False, **CPU)
    assert len(reads) <= 2  # the shuffle seed; never once per batch (30 batches)


# --------------------------------------------------------------------- batch of one


def test_batchnorm_model_survives_a_last_batch_of_one(sample_train) -> None:
    inputs, targets = sample_train[0][:201], sample_train[1][:201]
    model = bn_cnn()
    history = fit(model, (inputs, targets), epochs=2, batch_size=50, **CPU)
    assert len(history) == 2
    assert all(np.isfinite(history["loss"]))


def test_drop_last_true_drops_every_incomplete_batch(sample_train) -> None:
    inputs, targets = sample_train[0][:230], sample_train[1][:230]
    seen = []

    class Sizes(Callback):
        def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            seen.append(state.batch)

    fit(plain_cnn(), (inputs, targets), epochs=1, batch_size=50, drop_last=True,
        callbacks=[Sizes()], **CPU)  # fmt: skip
    assert seen == [0, 1, 2, 3]  # 4 full batches; the 30 left over are dropped


def test_drop_last_false_with_batchnorm_and_a_batch_of_one_is_refused_up_front(
    sample_train,
) -> None:
    model = bn_cnn()
    before = _state(model)
    data = (sample_train[0][:201], sample_train[1][:201])
    with pytest.raises(ValueError, match=r"`drop_last`.*batch of 1 sample.*201 samples"):
        fit(model, data, epochs=1, batch_size=50, drop_last=False, **CPU)
    assert _same(before, model.state_dict())


# ------------------------------------------------------------------ loss and scheduler


def test_loss_class_is_built_with_its_defaults(small_data) -> None:
    history = fit(plain_cnn(), small_data, epochs=1, loss=nn.CrossEntropyLoss, **CPU)
    reference = fit(plain_cnn(), small_data, epochs=1, loss=nn.CrossEntropyLoss(), **CPU)
    assert history["loss"] == reference["loss"] or np.isclose(
        history["loss"][0], reference["loss"][0]
    )


def test_scheduler_class_that_needs_arguments_is_refused_before_any_work(small_data) -> None:
    model = plain_cnn()
    before = _state(model)
    rng = torch.get_rng_state()
    with pytest.raises(TypeError, match=r"`scheduler`.*StepLR needs step_size.*lambda opt"):
        fit(model, small_data, epochs=1, scheduler=torch.optim.lr_scheduler.StepLR, seed=3, **CPU)
    assert _same(before, model.state_dict())
    assert torch.equal(rng, torch.get_rng_state())  # seed=3 was not applied


class SeesScheduler(Callback):
    def __init__(self) -> None:
        self.schedulers: list[object] = []

    def on_train_begin(self, state) -> None:  # type: ignore[no-untyped-def]
        self.schedulers.append(state.scheduler)


def test_scheduler_class_with_only_the_optimizer_required_is_built(small_data) -> None:
    """A class is built on fit's optimizer with its defaults, and steps it."""
    history = fit(plain_cnn(), small_data, epochs=3, optimizer="sgd", lr=0.3,
                  scheduler=torch.optim.lr_scheduler.LinearLR, **CPU)  # fmt: skip
    # LinearLR's defaults: a third of the lr, rising by (1 - 1/3) / 5 every epoch
    assert history.learning_rates == pytest.approx([0.1, 0.14, 0.18])
    seen = SeesScheduler()
    history = fit(plain_cnn(), small_data, epochs=2, callbacks=[seen],
                  scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau, **CPU)  # fmt: skip
    (plateau,) = seen.schedulers
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.best == min(history["loss"])  # stepped with the loss (no val_data)


def test_reduce_on_plateau_stepped_per_batch_is_refused_up_front(small_data) -> None:
    """Issue 23.9: scheduler_interval="step" crashed after the first step (no metric)."""
    model = plain_cnn()
    before = _state(model)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for scheduler, opt in [
        (plateau, "adam"),
        (plateau(optimizer), optimizer),
        (lambda o: plateau(o, patience=0), "adam"),
    ]:
        with pytest.raises(ValueError, match=r"`scheduler_interval`: ReduceLROnPlateau steps on"
                           r".*once per epoch.*scheduler_interval='epoch'"):  # fmt: skip
            fit(model, small_data, epochs=1, optimizer=opt, scheduler=scheduler,
                scheduler_interval="step", **CPU)  # fmt: skip
        assert _same(before, model.state_dict())


def test_scheduler_on_another_optimizer_is_refused(small_data) -> None:
    model = plain_cnn()
    mine = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(other, step_size=1)
    with pytest.raises(ValueError, match=r"`scheduler`.*another optimizer"):
        fit(model, small_data, optimizer=mine, scheduler=sched, **CPU)
    with pytest.raises(ValueError, match=r"`scheduler`.*fit builds its own"):
        fit(model, small_data, optimizer="adam", scheduler=sched, **CPU)
    with pytest.raises(ValueError, match=r"`scheduler`.*another optimizer"):
        fit(model, small_data, scheduler=lambda opt: sched, **CPU)


def test_scheduler_result_without_step_is_refused(small_data) -> None:
    with pytest.raises(TypeError, match=r"`scheduler`.*returned int.*no step\(\)"):
        fit(plain_cnn(), small_data, scheduler=lambda opt: 3, **CPU)


@pytest.mark.parametrize(
    ("interval", "per_batch"), [(None, False), ("epoch", False), ("step", True)]
)
def test_scheduler_interval(small_data, interval, per_batch) -> None:
    """A LambdaLR warm-up steps per batch with scheduler_interval="step"."""
    recorder = Recorder()
    fit(plain_cnn(), small_data, epochs=2, batch_size=100, optimizer="sgd", lr=1.0,
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 / (i + 1)),
        scheduler_interval=interval, callbacks=[recorder], **CPU)  # fmt: skip
    # the lr seen after each of the 6 batches (3 per epoch)
    expected = [1 / (i + 2) for i in range(6)] if per_batch else [1.0] * 3 + [0.5] * 3
    assert recorder.lrs == pytest.approx(expected)


def test_one_cycle_steps_per_batch_by_default(small_data) -> None:
    recorder = Recorder()
    fit(plain_cnn(), small_data, epochs=2, batch_size=100, optimizer="sgd",
        scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=6),
        callbacks=[recorder], **CPU)  # fmt: skip
    assert len(set(recorder.lrs)) == 6  # a new learning rate after every batch


def test_bad_scheduler_interval(small_data) -> None:
    with pytest.raises(ValueError, match=r"`scheduler_interval`.*'epoch', 'step'.*'batch'"):
        fit(plain_cnn(), small_data, scheduler_interval="batch", **CPU)


# ----------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"seed": "1"}, TypeError, r"`seed`.*int in \[0, 2\*\*32\).*'1'"),
        ({"seed": 2**32}, ValueError, r"`seed`.*\[0, 2\*\*32\).*4294967296"),
        ({"seed": -1}, ValueError, r"`seed`.*-1"),
        ({"precision": 3.5}, TypeError, r"`precision`.*'32'.*3\.5 of type float"),
        ({"epochs": 2.0}, TypeError, r"`epochs`.*Expected an int.*2\.0"),
        ({"lr": float("inf")}, ValueError, r"`lr`.*finite.*inf"),
        ({"weight_decay": float("inf")}, ValueError, r"`weight_decay`.*finite"),
        ({"grad_clip": float("inf")}, ValueError, r"`grad_clip`.*finite"),
        ({"lr": float("nan")}, ValueError, r"`lr`.*nan"),
        ({"drop_last": "yes"}, TypeError, r"`drop_last`.*None.*True or False"),
        ({"data_on_device": 1}, TypeError, r"`data_on_device`"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(small_data, kwargs, error, pattern) -> None:
    model = bn_cnn()
    before = _state(model)
    rng = torch.get_rng_state()
    with pytest.raises(error, match=pattern):
        fit(model, small_data, **{"epochs": 1, **CPU, **kwargs})
    assert _same(before, model.state_dict())
    assert torch.equal(rng, torch.get_rng_state())


def test_obvious_spellings_are_accepted(small_data) -> None:
    history = fit(plain_cnn(), small_data, epochs=np.int64(2), batch_size=np.int32(100),
                  precision=32, seed=np.uint32(1), **CPU)  # fmt: skip
    assert len(history) == 2
    assert history.seed == 1 and type(history.seed) is int


def test_bad_argument_leaves_no_process_group_behind(small_data, monkeypatch) -> None:
    """WORLD_SIZE > 1: every argument is checked before the process group is joined."""
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: joined.append(a))
    with pytest.raises(ValueError, match="`grad_clip`"):
        fit(plain_cnn(), small_data, grad_clip=-1.0, **CPU)
    assert joined == []


def test_bad_data_tears_down_the_process_group_fit_created(small_data, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")

    def init_alone(backend: str, timeout: float) -> None:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)

    monkeypatch.setattr(convkit.train.distributed, "_join", init_alone)
    inputs, targets = small_data
    try:
        with pytest.raises(ValueError, match=r"target 12 is outside \[0, 10\)"):
            fit(plain_cnn(), (inputs, torch.full_like(targets, 12)), **CPU)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------- NaN guard


def test_non_finite_inputs_are_refused_before_any_work(small_data) -> None:
    inputs, targets = small_data
    inputs = inputs.clone()
    inputs[150, 0, 3, 3] = float("nan")
    inputs[160, 0, 3, 3] = float("inf")
    model = bn_cnn()
    before = _state(model)
    with pytest.raises(ValueError, match=r"`train_data`: 2 sample\(s\) hold NaN or inf.*index 150"):
        fit(model, (inputs, targets), epochs=1, **CPU)
    assert _same(before, model.state_dict())


class NanLossAt:
    """Cross-entropy, except NaN on one call (the batch the NaN guard must catch)."""

    def __init__(self, call: int) -> None:
        self.call, self.calls = call, 0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss * float("nan") if self.calls == self.call else loss


def test_non_finite_loss_error_is_typed(small_data) -> None:
    model = plain_cnn()
    # the set-up scores the first batch once (the loss check), then epochs of 3 batches:
    # the 5th call is epoch 2, batch 1
    loss = NanLossAt(call=5)
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, small_data, epochs=2, batch_size=100, loss=loss, task="multiclass", **CPU)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.batch) == (2, 1)
    assert len(err.history) == 1
    assert "batch 1" in str(err) and "at the end of epoch 1" in str(err)


def test_overflowing_forward_leaves_batchnorm_statistics_intact(small_data) -> None:
    """Finite inputs whose convolution overflows: BatchNorm's running statistics, updated
    by the forward pass before the loss is known, are put back when the guard trips."""
    inputs, targets = small_data
    model = bn_cnn()
    fit(model, (inputs, targets), epochs=1, batch_size=100, **CPU, seed=0)
    before = _state(model)
    bad = inputs.clone()
    bad[:, :, 4:24, 4:24] = 3e38  # finite, but the sums in the convolution overflow
    with pytest.raises(NonFiniteLossError, match=r"parameters and buffers.*before training"):
        fit(model, (bad, targets), epochs=1, batch_size=100, **CPU)
    after = model.state_dict()
    assert _same(before, after)  # running_mean/var and num_batches_tracked restored too
    scores = evaluate(model, small_data, device="cpu")
    assert np.isfinite(scores["loss"])


def test_finite_loss_with_a_nan_gradient_is_caught(small_data) -> None:
    def loss_with_nan_grad(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        zero = (outputs * 0).sum()
        # value: cross-entropy + 0; gradient of sqrt at 0 is inf, times 0 is NaN
        return nn.functional.cross_entropy(outputs, targets) + 0 * torch.sqrt(zero)

    model = plain_cnn()
    before = _state(model)
    with pytest.raises(
        NonFiniteLossError, match=r"A gradient is not finite at epoch 1, batch 1"
    ) as err:
        fit(model, small_data, epochs=1, loss=loss_with_nan_grad, **CPU)
    assert _same(before, model.state_dict())
    # before any step the learning rate can't be the cause: the advice says so
    assert "learning rate is not the cause" in str(err.value)
    assert "Lower the learning rate" not in str(err.value)
    assert len(fit(model, small_data, epochs=1, loss=nn.CrossEntropyLoss(), **CPU)) == 1


def test_nan_in_validation_data_is_refused_before_training(small_data, sample_test) -> None:
    inputs, targets = sample_test
    bad = inputs[:100].clone()
    bad[3] = float("nan")
    model = plain_cnn()
    before = _state(model)
    with pytest.raises(ValueError, match=r"`val_data`: 1 sample\(s\) hold NaN.*index 3"):
        fit(model, small_data, epochs=1, val_data=(bad, targets[:100]), **CPU)
    assert _same(before, model.state_dict())


def test_nan_validation_loss_is_reported(small_data, sample_test) -> None:
    """Finite validation inputs that give a NaN loss (here: a NaN-valued loss) warn."""
    inputs, targets = sample_test

    class NanOnEval(nn.Module):
        def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = nn.functional.cross_entropy(outputs, targets)
            return loss if torch.is_grad_enabled() else loss * float("nan")

    with pytest.warns(RuntimeWarning, match=r"val_loss is nan at epoch 1.*val_data"):
        history = fit(plain_cnn(), small_data, epochs=1, val_data=(inputs[:100], targets[:100]),
                      loss=NanOnEval(), task="multiclass", **CPU)  # fmt: skip
    assert np.isnan(history["val_loss"][0])


# ------------------------------------------------------------------------ inference


def test_evaluate_and_predict_keep_the_models_memory_format(small_data) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4, 8), norm=None, hidden=())
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]  # 4 -> 8 channels
    assert conv.weight.is_contiguous()
    evaluate(model, small_data, device="cpu", memory_format="channels_last")
    predict(model, small_data[0][:10], device="cpu", memory_format="channels_last")
    assert conv.weight.is_contiguous()
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)


# -------------------------------------------------------------------------- Ctrl-C


class CtrlC(Callback):
    """Sends a real SIGINT to this process after a given batch."""

    def __init__(self, epoch: int, batch: int, times: int = 1) -> None:
        self.epoch, self.batch, self.times = epoch, batch, times

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        if (state.epoch, state.batch) == (self.epoch, self.batch):
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_on_a_consistent_state(small_data) -> None:
    recorder = Recorder()
    model = plain_cnn()
    holder = {}

    def make(opt):  # type: ignore[no-untyped-def]
        holder["sched"] = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return holder["sched"]

    handler = signal.getsignal(signal.SIGINT)
    history = fit(model, small_data, epochs=4, batch_size=100, scheduler=make,
                  callbacks=[CtrlC(epoch=2, batch=1), recorder], on_interrupt="return",
                  **CPU)  # fmt: skip
    assert history.interrupted
    assert len(history) == 1  # epoch 2 was not completed, so not recorded
    assert recorder.ends == [1]  # on_train_end sees the last completed epoch
    assert holder["sched"].last_epoch == 1  # stepped once, after epoch 1: consistent
    assert len(recorder.lrs) == 3 + 2  # stopped right after the batch the signal came in
    assert signal.getsignal(signal.SIGINT) is handler


def test_ctrl_c_raises_after_the_callbacks_saved_the_state(small_data) -> None:
    """By default Ctrl-C ends fit with a KeyboardInterrupt, as Keras and Lightning do."""
    recorder = Recorder()
    model = plain_cnn()
    with pytest.raises(KeyboardInterrupt, match=r"during epoch 2; 1 epoch\(s\) finished") as err:
        fit(model, small_data, epochs=4, batch_size=100,
            callbacks=[CtrlC(epoch=2, batch=1), recorder], **CPU)  # fmt: skip
    assert type(err.value) is KeyboardInterrupt  # handled as any Ctrl-C
    assert recorder.ends == [1]  # on_train_end ran before the interrupt went on
    assert err.value.history.interrupted and len(err.value.history) == 1


def test_on_interrupt_is_checked_before_any_work(small_data) -> None:
    model = plain_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`on_interrupt`. Expected one of 'raise', 'return'"):
        fit(model, small_data, epochs=1, on_interrupt="ignore", **CPU)
    with pytest.raises(TypeError, match=r"`on_interrupt`"):
        fit(model, small_data, epochs=1, on_interrupt=True, **CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_second_ctrl_c_raises_keyboard_interrupt(small_data) -> None:
    handler = signal.getsignal(signal.SIGINT)
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        fit(plain_cnn(), small_data, epochs=2, batch_size=100,
            callbacks=[CtrlC(epoch=1, batch=0, times=2), recorder], **CPU)  # fmt: skip
    assert recorder.ends == []
    assert signal.getsignal(signal.SIGINT) is handler


def test_fit_works_off_the_main_thread(small_data) -> None:
    result = {}

    def work() -> None:
        result["history"] = fit(plain_cnn(), small_data, epochs=1, **CPU)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert len(result["history"]) == 1


def test_loss_with_ignore_index_is_the_exact_mean_over_counted_targets(sample_train) -> None:
    """Segmentation-style: batches that ignore different numbers of pixels are weighted by
    the pixels they count, so the epoch loss is cross-entropy over all counted pixels."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, 3, padding=1)  # per-pixel logits for 3 classes
    inputs = sample_train[0][:64]
    targets = (inputs[:, 0] * 2.99).long()  # 0 background, 1 and 2 for ink levels
    targets[:16, :, :20] = -100  # the first batch ignores many more pixels than the others
    loss = nn.CrossEntropyLoss()
    scores = evaluate(model, (inputs, targets), loss=loss, task="multiclass", batch_size=16,
                      device="cpu")  # fmt: skip
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(inputs), targets).item()
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)
