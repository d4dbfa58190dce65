"""convkit.checkpoints.restore: what a resume restores, refuses and says.

Scheduler states are checked whole (the schedulers a SequentialLR or ChainedScheduler
holds too) before anything changes; an optimizer or scheduler of another class is
refused; the saved settings are restored and the ones they replace are named;
a caller's own shuffling DataLoader resumes exactly; files without a digest are
said to be unverified, or refused on request.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, TensorDataset

from convkit import (
    Callback,
    ModelCheckpoint,
    build_cnn,
    checkpoints,
    fit,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

LOGGER = "convkit.checkpoints.restore"


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,), dropout=0.2)


def snapshot(*objects: Any) -> list[Any]:
    """Everything the objects hold, to compare before and after a refusal."""
    out: list[Any] = []
    for obj in objects:
        state = obj.state_dict()
        out.append(
            [t.clone() for t in state.values()] if isinstance(obj, nn.Module) else repr(state)
        )
    return out


def same(a: list[Any], b: list[Any]) -> bool:
    return all(
        all(map(torch.equal, x, y)) if isinstance(x, list) else x == y
        for x, y in zip(a, b, strict=True)
    )


def rewrite(path: Path, **changes: Any) -> None:
    """Edit a saved file's entries (``None`` deletes one) and store a matching digest,
    as a file written by an earlier convkit would be."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    if "digest" in payload:
        payload["digest"] = checkpoints.digest(payload)
    torch.save(payload, path)


# ---- schedulers that chain others are checked whole, before anything changes


def _sequential(opt: torch.optim.Optimizer, count: int) -> S.SequentialLR:
    parts = [S.LinearLR(opt), S.StepLR(opt, 1), S.ExponentialLR(opt, 0.9)][:count]
    return S.SequentialLR(opt, parts, milestones=[1, 2][: count - 1])


def _chained(opt: torch.optim.Optimizer, count: int) -> S.ChainedScheduler:
    parts = [S.ConstantLR(opt), S.StepLR(opt, 1), S.ExponentialLR(opt, 0.9)][:count]
    return S.ChainedScheduler(parts)


@pytest.mark.parametrize("kind", [_sequential, _chained], ids=["SequentialLR", "ChainedScheduler"])
@pytest.mark.parametrize("older_file", [False, True], ids=["with classes", "without classes"])
def test_a_chain_of_other_length_is_refused_before_the_model_changes(
    tmp_path: Path, kind: Callable[[torch.optim.Optimizer, int], Any], older_file: bool
) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = kind(opt, 3)
    opt.step()
    scheduler.step()
    path = save_checkpoint(tmp_path / "c.pt", model, opt, scheduler)
    if older_file:  # convkit 0.2.0 stored no classes: the states alone must tell
        rewrite(path, optimizer_class=None, scheduler_class=None)
    torch.manual_seed(1)
    other = nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    other_scheduler = kind(other_opt, 2)
    before = snapshot(other, other_opt, other_scheduler)
    name = type(scheduler).__name__
    message = (
        rf"{name} holds 3 schedulers in the file but 2 here"
        if older_file
        else rf"saved with scheduler {name}\(\w+, StepLR, ExponentialLR\), and the scheduler "
        rf"here is {name}\(\w+, StepLR\).*Nothing was loaded"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, other, other_opt, other_scheduler)
    assert same(before, snapshot(other, other_opt, other_scheduler))


def test_a_chained_scheduler_of_another_kind_inside_is_refused(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sequential = S.SequentialLR(opt, [S.LinearLR(opt), S.StepLR(opt, 1)], milestones=[1])
    path = save_checkpoint(tmp_path / "c.pt", model, opt, sequential)
    other_opt = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    other = S.SequentialLR(
        other_opt, [S.LinearLR(other_opt), S.CosineAnnealingLR(other_opt, 5)], milestones=[1]
    )
    with pytest.raises(
        ValueError,
        match=r"SequentialLR\(LinearLR, StepLR\), and the scheduler "
        r"here is SequentialLR\(LinearLR, CosineAnnealingLR\)",
    ):
        load_checkpoint(path, None, other_opt, other)
    rewrite(path, scheduler_class=None)
    with pytest.raises(ValueError, match=r"SequentialLR's scheduler 2's state lacks \['T_max'"):
        load_checkpoint(path, None, other_opt, other)


def test_a_per_group_list_of_another_length_is_refused(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    plateau = S.ReduceLROnPlateau(opt, min_lr=[0.0, 0.0])
    path = save_checkpoint(tmp_path / "c.pt", model, None, plateau)
    single = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"ReduceLROnPlateau's min_lrs has 2 entries \(one per parameter group\), but the "
        r"optimizer here has 1 groups",
    ):
        load_checkpoint(path, None, None, S.ReduceLROnPlateau(single))


# ---- an optimizer or scheduler of another class is refused, naming both


def _checkpoint(tmp_path: Path, small_data: Any, **kwargs: Any) -> Path:
    fit(
        tiny_cnn(),
        small_data,
        epochs=1,
        batch_size=100,
        seed=0,
        progress=False,
        device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt")],
        **kwargs,
    )
    return tmp_path / "ep1.pt"


def _rngs() -> list[Any]:
    return [random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()]  # noqa: NPY002


def test_adam_is_not_resumed_as_adamw(tmp_path: Path, small_data: Any) -> None:
    path = _checkpoint(tmp_path, small_data)  # fit's default: Adam
    model = tiny_cnn(seed=1)
    before, rngs = snapshot(model), _rngs()
    with pytest.raises(
        ValueError,
        match=r"ep1.pt was saved with optimizer Adam, and the optimizer here is AdamW: .*Nothing "
        r"was loaded. Resume with Adam \(e.g. fit\(optimizer=torch.optim.Adam",
    ):
        fit(
            model,
            small_data,
            epochs=2,
            optimizer="adamw",
            weight_decay=0.5,
            progress=False,
            device="cpu",
            resume_from=path,
        )
    assert same(before, snapshot(model)) and _rngs() == rngs


def test_a_step_lr_is_not_resumed_as_an_exponential_lr(tmp_path: Path, small_data: Any) -> None:
    path = _checkpoint(tmp_path, small_data, scheduler=lambda opt: S.StepLR(opt, 1, gamma=0.1))
    model = tiny_cnn(seed=1)
    before = snapshot(model)
    built: list[Any] = []

    def exponential(opt: torch.optim.Optimizer) -> S.ExponentialLR:
        built.append(S.ExponentialLR(opt, 0.9))
        return built[-1]

    message = r"saved with scheduler StepLR, and the scheduler here is ExponentialLR"
    with pytest.raises(ValueError, match=message):
        fit(
            model,
            small_data,
            epochs=2,
            scheduler=exponential,
            progress=False,
            device="cpu",
            resume_from=path,
        )
    assert same(before, snapshot(model)) and built[0].gamma == 0.9
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, model, None, built[0])
    assert built[0].gamma == 0.9


# ---- the saved settings are restored; the ones they replace are named


class Seen(Callback):
    """Records the optimizer's and scheduler's settings as training begins."""

    def on_train_begin(self, state: Any) -> None:
        self.groups = [dict(g, params=None) for g in state.optimizer.param_groups]
        self.scheduler = state.scheduler.state_dict() if state.scheduler is not None else None


def test_a_resume_restores_the_saved_lr_and_names_what_it_replaced(
    tmp_path: Path, small_data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = _checkpoint(tmp_path, small_data, lr=1e-3, weight_decay=0.0)
    seen = Seen()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fit(
            tiny_cnn(),
            small_data,
            epochs=2,
            lr=0.5,
            weight_decay=0.25,
            callbacks=[seen],
            progress=False,
            device="cpu",
            resume_from=path,
        )
    assert seen.groups[0]["lr"] == 1e-3 and seen.groups[0]["weight_decay"] == 0.0
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"Resumed from {path} after epoch 1: the weights, the Adam state, the History, every "
        "RNG state. The saved run's settings replace these passed for this run: lr 0.5 -> "
        "0.001, weight_decay 0.25 -> 0.0 (a resumed run continues the saved one"
    )


def test_a_scheduler_s_settings_are_restored_and_named(
    tmp_path: Path, small_data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = _checkpoint(tmp_path, small_data, scheduler=lambda opt: S.StepLR(opt, 1, gamma=0.1))
    seen = Seen()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fit(
            tiny_cnn(),
            small_data,
            epochs=2,
            scheduler=lambda opt: S.StepLR(opt, 5, gamma=0.5),
            callbacks=[seen],
            progress=False,
            device="cpu",
            resume_from=path,
        )
    assert seen.scheduler is not None
    assert seen.scheduler["step_size"] == 1 and seen.scheduler["gamma"] == 0.1
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert "the StepLR state" in record.getMessage()
    assert "StepLR.step_size 5 -> 1, StepLR.gamma 0.5 -> 0.1" in record.getMessage()


def test_the_same_arguments_resume_with_one_info_line(
    tmp_path: Path, small_data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule that lowered the lr is progress, not a replaced setting."""
    kwargs: dict[str, Any] = {"lr": 0.01, "scheduler": lambda opt: S.StepLR(opt, 1, gamma=0.1)}
    path = _checkpoint(tmp_path, small_data, **kwargs)
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fit(
            tiny_cnn(),
            small_data,
            epochs=2,
            progress=False,
            device="cpu",
            resume_from=path,
            **kwargs,
        )
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"Resumed from {path} after epoch 1: the weights, the Adam state, the StepLR state, the "
        "History, every RNG state."
    )


# ---- a caller's shuffling DataLoader resumes exactly


def _loader(kind: str, data: tuple[torch.Tensor, torch.Tensor]) -> DataLoader[Any]:
    dataset = TensorDataset(*data)
    if kind == "shuffle=True, generator=g":
        return DataLoader(dataset, 32, shuffle=True, generator=torch.Generator().manual_seed(1))
    if kind == "RandomSampler(generator=g)":
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(1))
        return DataLoader(dataset, 32, sampler=sampler)
    return DataLoader(dataset, 32, shuffle=True)  # torch's global generator


@pytest.mark.parametrize(
    "kind", ["shuffle=True, generator=g", "RandomSampler(generator=g)", "shuffle=True"]
)
def test_two_plus_two_epochs_equal_four_with_a_shuffling_dataloader(
    tmp_path: Path, small_data: Any, kind: str
) -> None:
    data = small_data[0][:128], small_data[1][:128]
    kwargs: dict[str, Any] = {"progress": False, "device": "cpu", "val_data": data}
    whole = tiny_cnn()
    full = fit(whole, _loader(kind, data), epochs=4, seed=0, **kwargs)
    first = tiny_cnn()
    fit(
        first,
        _loader(kind, data),
        epochs=2,
        seed=0,
        callbacks=[ModelCheckpoint(tmp_path / "c.pt")],
        **kwargs,
    )
    resumed = tiny_cnn(seed=5)
    history = fit(resumed, _loader(kind, data), epochs=4, resume_from=tmp_path / "c.pt", **kwargs)
    assert history.history == full.history
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_the_set_up_peek_draws_from_none_of_the_loader_s_generators(small_data: Any) -> None:
    """fit looks at the first batch before training; a generator inside a batch sampler
    must come out of that as untouched as the loader's own and its sampler's."""
    dataset = TensorDataset(small_data[0][:64], small_data[1][:64])
    generator = torch.Generator().manual_seed(3)
    batches = BatchSampler(RandomSampler(dataset, generator=generator), 32, drop_last=False)
    fit(
        tiny_cnn(),
        DataLoader(dataset, batch_sampler=batches),
        epochs=1,
        progress=False,
        device="cpu",
    )
    reference = torch.Generator().manual_seed(3)
    list(BatchSampler(RandomSampler(dataset, generator=reference), 32, drop_last=False))
    assert torch.equal(generator.get_state(), reference.get_state())  # one epoch's draws


class EveryOther(Sampler[int]):
    """A sampler with an order of its own that a checkpoint can't hold."""

    def __init__(self, n: int) -> None:
        self.n, self.flip = n, False

    def __iter__(self) -> Iterator[int]:
        self.flip = not self.flip
        return iter(range(self.n) if self.flip else reversed(range(self.n)))

    def __len__(self) -> int:
        return self.n


def test_resuming_with_a_loader_it_cannot_restore_warns(tmp_path: Path, small_data: Any) -> None:
    data = small_data[0][:64], small_data[1][:64]
    path = _checkpoint(tmp_path, data)
    loader = DataLoader(TensorDataset(*data), 32, sampler=EveryOther(64))
    with pytest.warns(
        UserWarning,
        match=r"Resuming with this train_data DataLoader may not be "
        r"exact: its sampler EveryOther may keep state",
    ):
        fit(tiny_cnn(), loader, epochs=2, progress=False, device="cpu", resume_from=path)
    fit(tiny_cnn(), loader, epochs=1, progress=False, device="cpu")  # not resuming: no warning


# ---- files without a digest


def _version_1(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    for key in ("stopped", "clean_checkpoint", "digest", "optimizer_class", "scheduler_class"):
        payload.pop(key, None)
    torch.save({**payload, "version": 1, "callbacks": []}, path)


def test_a_version_1_file_loads_with_a_warning_once(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model, epoch=3)
    _version_1(path)
    edited = torch.load(path, weights_only=True)
    edited["model"]["weight"].fill_(9.0)  # an edit nothing can detect in such a file
    torch.save(edited, path)
    other = nn.Linear(2, 2)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-place filter out of the way
        assert load_checkpoint(path, other)["epoch"] == 3
        load_checkpoint(path)
        load_checkpoint(tmp_path / "." / "c.pt")  # the same file
        load_checkpoint(copy)  # another file: said again
    expected = (
        "{} is a format-version-1 checkpoint (convkit 0.1): it has no digest, so damage or "
        "edits to it can't be detected, and it is loaded unverified. Save it again with "
        "save_checkpoint to add one, or pass require_digest=True to refuse such files."
    )
    assert [str(w.message) for w in caught] == [expected.format(path), expected.format(copy)]
    assert caught[0].category is UserWarning and caught[0].filename == __file__
    assert torch.all(other.weight == 9.0)


def test_require_digest_refuses_a_version_1_file(tmp_path: Path, small_data: Any) -> None:
    path = _checkpoint(tmp_path, small_data)
    _version_1(path)
    model = tiny_cnn(seed=1)
    before = snapshot(model)
    message = r"ep1.pt has no digest \(format version 1.*require_digest=True.*Nothing was loaded"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, model, require_digest=True)
    with pytest.raises(ValueError, match=message):
        load_model(path, require_digest=True)
    with pytest.raises(ValueError, match=message):
        fit(
            model,
            small_data,
            epochs=2,
            progress=False,
            device="cpu",
            resume_from=path,
            require_digest=True,
        )
    assert same(before, snapshot(model))
    with pytest.raises(
        TypeError, match=r"`require_digest`. Expected True or False. Received require_digest='yes'"
    ):
        load_checkpoint(path, model, require_digest="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`require_digest`"):
        fit(model, small_data, resume_from=path, require_digest=1)  # type: ignore[arg-type]
    # a version-2 file has a digest: required or not, it loads
    fresh = save_checkpoint(tmp_path / "v2.pt", model)
    load_checkpoint(fresh, model, require_digest=True)
