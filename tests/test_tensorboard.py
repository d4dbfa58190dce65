"""The TensorBoard callback, read back with TensorBoard's own reader (``EventAccumulator``)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from convkit import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    TensorBoard,
    build_cnn,
    fit,
)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,))


def events(folder: Path, run: str) -> EventAccumulator:
    reader = EventAccumulator(str(folder / run), size_guidance={"scalars": 0, "histograms": 0})
    return reader.Reload()


def scalars(folder: Path, run: str, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events(folder, run).Scalars(tag)]


class StepRecorder(Callback):
    """Each optimizer step of the run: its number, loss and the learning rate after it."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple[float, float]] = {}

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        step = (state.epoch - 1) * state.steps_per_epoch + state.batch + 1
        self.steps[step] = (float(state.logs["loss"]), state.optimizer.param_groups[0]["lr"])


def test_every_epoch_is_logged_for_training_and_validation(small_data, tmp_path: Path) -> None:
    halving = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # noqa: E731
    history = fit(tiny_cnn(), small_data, epochs=3, batch_size=100, val_data=small_data,
                  progress=False, device="cpu", seed=0, callbacks=[TensorBoard(tmp_path)],
                  scheduler=halving)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "validation"]
    for run, prefix in (("train", ""), ("validation", "val_")):
        assert sorted(events(tmp_path, run).Tags()["scalars"]) == sorted(
            ["epoch_loss", "epoch_accuracy"] + (["epoch_learning_rate"] if run == "train" else [])
        )
        for name in ("loss", "accuracy"):
            logged = scalars(tmp_path, run, f"epoch_{name}")
            assert [step for step, _ in logged] == [1, 2, 3]
            assert [v for _, v in logged] == pytest.approx(history[prefix + name], rel=1e-6)
    logged = scalars(tmp_path, "train", "epoch_learning_rate")
    assert [v for _, v in logged] == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-6)
    assert [v for _, v in logged] == pytest.approx(history.learning_rates, rel=1e-6)


def test_steps_are_logged_every_n_steps(small_data, tmp_path: Path) -> None:
    recorder = StepRecorder()
    sched = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=6)  # noqa: E731
    logger = TensorBoard(tmp_path, log_every_n_steps=2)
    fit(tiny_cnn(), small_data, epochs=2, batch_size=100, progress=False, device="cpu",
        scheduler=sched, callbacks=[recorder, logger])  # fmt: skip
    assert sorted(recorder.steps) == [1, 2, 3, 4, 5, 6]  # 3 batches in each of 2 epochs
    losses = scalars(tmp_path, "steps", "batch_loss")
    rates = scalars(tmp_path, "steps", "batch_learning_rate")
    assert [step for step, _ in losses] == [step for step, _ in rates] == [2, 4, 6]
    assert [v for _, v in losses] == pytest.approx([recorder.steps[s][0] for s in (2, 4, 6)])
    assert [v for _, v in rates] == pytest.approx([recorder.steps[s][1] for s in (2, 4, 6)])
    assert rates[0][1] != rates[1][1]  # OneCycleLR: the rate changes with every step


def _callbacks(tmp_path: Path) -> list[Callback]:
    return [
        ModelCheckpoint(tmp_path / "ep{epoch}.pt"),
        TensorBoard(tmp_path / "tb", log_every_n_steps=1),
    ]


def test_a_resumed_run_appends_without_duplicate_steps(small_data, tmp_path: Path) -> None:
    # The first run trains 4 epochs; the second resumes after epoch 2 and ends at 3: the
    # first run's epochs 3 and 4 are hidden, and epoch 3 appears once, the resumed one's.
    fit(tiny_cnn(), small_data, epochs=4, batch_size=100, val_data=small_data, progress=False,
        device="cpu", seed=0, callbacks=_callbacks(tmp_path))  # fmt: skip
    resumed = fit(tiny_cnn(seed=5), small_data, epochs=3, batch_size=100, val_data=small_data,
                  progress=False, device="cpu", callbacks=_callbacks(tmp_path),
                  resume_from=tmp_path / "ep2.pt")  # fmt: skip
    tb = tmp_path / "tb"
    for run, prefix in (("train", ""), ("validation", "val_")):
        assert len(list((tb / run).glob("events.out.tfevents.*"))) == 2  # one file per run
        logged = scalars(tb, run, "epoch_loss")
        assert [step for step, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx(resumed[prefix + "loss"], rel=1e-6)
    assert [step for step, _ in scalars(tb, "steps", "batch_loss")] == list(range(1, 10))


class CtrlC(Callback):
    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        if state.epoch == 3 and state.batch == 1:
            signal.raise_signal(signal.SIGINT)


def test_steps_after_an_interrupt_are_logged_once(small_data, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        fit(tiny_cnn(), small_data, epochs=4, batch_size=100, progress=False, device="cpu",
            seed=0, callbacks=[*_callbacks(tmp_path), CtrlC()])  # fmt: skip
    assert len(info.value.history) == 2  # type: ignore[attr-defined]
    tb = tmp_path / "tb"
    assert [step for step, _ in scalars(tb, "steps", "batch_loss")] == list(range(1, 9))
    recorder = StepRecorder()
    fit(tiny_cnn(seed=5), small_data, epochs=4, batch_size=100, progress=False, device="cpu",
        callbacks=[*_callbacks(tmp_path), recorder], resume_from=tmp_path / "ep2.pt")  # fmt: skip
    logged = scalars(tb, "steps", "batch_loss")
    assert [step for step, _ in logged] == list(range(1, 13))
    assert [v for _, v in logged[6:]] == pytest.approx([recorder.steps[s][0] for s in range(7, 13)])


def test_a_fresh_run_hides_an_earlier_one_even_in_the_same_second(
    small_data, tmp_path: Path
) -> None:
    # TensorBoard reads a folder's files in name order, names start with the second they
    # were made in, and a file of the same second whose host name sorts later (or whose
    # counter has one digit more) would be read last: its old events would win.
    fit(tiny_cnn(seed=1), small_data, epochs=3, progress=False, device="cpu",
        callbacks=[TensorBoard(tmp_path)])  # fmt: skip
    time.sleep(1 - time.time() % 1)  # the start of a second: the next run begins within it
    (old,) = (tmp_path / "train").glob("events.out.tfevents.*")
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time())}.~host.1.0"))
    second = fit(tiny_cnn(seed=2), small_data, epochs=2, progress=False, device="cpu",
                 callbacks=[TensorBoard(tmp_path)])  # fmt: skip
    logged = scalars(tmp_path, "train", "epoch_loss")
    assert [step for step, _ in logged] == [1, 2]
    assert [v for _, v in logged] == pytest.approx(second["loss"], rel=1e-6)


@pytest.mark.slow  # waits for a new second before each new event file
def test_a_fresh_run_hides_the_runs_it_does_not_write(small_data, tmp_path: Path) -> None:
    data = small_data[0][:64], small_data[1][:64]
    first = TensorBoard(tmp_path, log_every_n_steps=1)
    fit(tiny_cnn(), data, epochs=3, val_data=data, progress=False, device="cpu", callbacks=[first])
    assert [step for step, _ in scalars(tmp_path, "validation", "epoch_loss")] == [1, 2, 3]
    # no validation and no steps this time: the first run's curves must not show with it
    callbacks = [TensorBoard(tmp_path)]
    second = fit(tiny_cnn(), data, epochs=2, progress=False, device="cpu", callbacks=callbacks)
    assert [v for _, v in scalars(tmp_path, "train", "epoch_loss")] == pytest.approx(
        second["loss"], rel=1e-6
    )
    assert scalars(tmp_path, "validation", "epoch_loss") == []
    assert scalars(tmp_path, "steps", "batch_loss") == []


def test_histograms_and_graph_change_nothing_in_training(small_data, tmp_path: Path) -> None:
    plain = tiny_cnn()
    fit(plain, small_data, epochs=2, progress=False, device="cpu", seed=0)
    model = tiny_cnn()
    logger = TensorBoard(tmp_path, log_every_n_steps=1, histogram_freq=2, log_graph=True)
    fit(model, small_data, epochs=2, progress=False, device="cpu", seed=0, callbacks=[logger])
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    train = events(tmp_path, "train")
    names = [name for name, _ in model.named_parameters()]
    assert sorted(train.Tags()["histograms"]) == sorted(names)
    assert all([e.step for e in train.Histograms(name)] == [2] for name in names)
    weight = train.Histograms("features.block1.conv.weight")[0].histogram_value
    assert weight.num == model.features.block1.conv.weight.numel()
    assert weight.max == pytest.approx(model.features.block1.conv.weight.max().item())
    graph = train.Graph()
    assert any("Conv2d[conv]" in node.name for node in graph.node)
    assert any("Linear[output]" in node.name for node in graph.node)


def test_a_graph_needs_the_models_input_shape(small_data, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    message = r"`log_graph` of TensorBoard: .*declares none\. Set model\.input_shape = \(C, H, W\)"
    with pytest.raises(ValueError, match=message):
        fit(model, small_data, epochs=1, progress=False, device="cpu",
            callbacks=[TensorBoard(tmp_path, log_graph=True)])  # fmt: skip
    model.input_shape = (1, 28, 28)  # the fix the message names
    fit(model, small_data, epochs=1, progress=False, device="cpu",
        callbacks=[TensorBoard(tmp_path, log_graph=True)])  # fmt: skip
    assert any("Linear" in node.name for node in events(tmp_path, "train").Graph().node)


class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __init__(self, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.data = data

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(*self.data, strict=True))


def test_steps_need_data_with_a_length(small_data, tmp_path: Path) -> None:
    message = r"`log_every_n_steps` of TensorBoard: the training data has no length"
    with pytest.raises(ValueError, match=message):
        fit(tiny_cnn(), Stream(small_data), epochs=1, progress=False, device="cpu",
            callbacks=[TensorBoard(tmp_path, log_every_n_steps=1)])  # fmt: skip
    fit(tiny_cnn(), Stream(small_data), epochs=1, progress=False, device="cpu",
        callbacks=[TensorBoard(tmp_path)])  # per epoch, it needs none  # fmt: skip
    assert [step for step, _ in scalars(tmp_path, "train", "epoch_loss")] == [1]


def test_the_stop_is_in_the_logs_it_ends(small_data, tmp_path: Path) -> None:
    stopper = EarlyStopping("loss", patience=0, min_delta=100.0)
    fit(tiny_cnn(), small_data, epochs=5, progress=False, device="cpu",
        callbacks=[stopper, TensorBoard(tmp_path)])  # fmt: skip
    assert [step for step, _ in scalars(tmp_path, "train", "epoch_loss")] == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"log_dir": None}, TypeError, r"`log_dir` of TensorBoard.*Received log_dir=None\."),
        ({"log_dir": "tb", "log_every_n_steps": 0}, ValueError,
         r"`log_every_n_steps`\. Expected a strictly positive int\. Received log_every_n_steps=0"),
        ({"log_dir": "tb", "log_every_n_steps": 1.5}, TypeError, r"`log_every_n_steps`"),
        ({"log_dir": "tb", "histogram_freq": -1}, ValueError, r"`histogram_freq`.*-1"),
        ({"log_dir": "tb", "log_graph": "yes"}, TypeError, r"`log_graph`.*True or False"),
    ],
)  # fmt: skip
def test_arguments_are_checked(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        TensorBoard(**kwargs)


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
        self.batches += 1


@pytest.mark.parametrize("where", [".", "sub"])
def test_a_log_dir_that_cant_be_a_folder_is_refused_before_the_first_batch(
    where: str, small_data, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    log_dir = tmp_path / "notes.txt" / where
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counter = BatchCounter()
    with pytest.raises(ValueError, match=r"`log_dir` of TensorBoard.*notes\.txt is a file"):
        fit(model, small_data, epochs=1, device="cpu", callbacks=[counter, TensorBoard(log_dir)])
    assert counter.batches == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_without_tensorboard_the_message_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "torch-convkit\[tensorboard\]"'):
        TensorBoard(tmp_path)
    assert not any(tmp_path.iterdir())
