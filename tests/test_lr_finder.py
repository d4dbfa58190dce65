"""lr_find: the range test's sweep, its suggestions, and a model put back bit for bit."""

from __future__ import annotations

import copy
import math
import random
import signal
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convkit import (
    LRFinderResult,
    NonFiniteLossError,
    build_cnn,
    evaluate,
    fit,
    lr_find,
    mnist_sample,
)
from convkit.train.lr_finder import steepest_index, suggestions, valley_index
from helpers import NOTEBOOK

# ------------------------------------------------------------------------------ helpers


def _tiny_cnn(**kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(), **kwargs)


def _state(model: nn.Module) -> dict[str, Any]:
    """Everything of the model a sweep could change, copied."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "ids": [id(t) for t in (*model.parameters(), *model.buffers())],
        "strides": [t.stride() for t in (*model.parameters(), *model.buffers())],
        "devices": [t.device for t in (*model.parameters(), *model.buffers())],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def _rngs() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global RNG lr_find restores
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _assert_same_state(before: dict[str, Any], model: nn.Module) -> None:
    after = _state(model)
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][name]), name
        assert tensor.dtype == after["tensors"][name].dtype, name
    assert before["ids"] == after["ids"]  # the same Parameter and buffer objects
    assert before["strides"] == after["strides"]  # the memory layout too
    assert before["devices"] == after["devices"]
    assert len(before["grads"]) == len(after["grads"])
    for old, new in zip(before["grads"], after["grads"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    assert before["modes"] == after["modes"]


def _assert_same_rngs(before: dict[str, Any]) -> None:
    after = _rngs()
    assert before["python"] == after["python"]
    old, new = before["numpy"], after["numpy"]
    assert old[0] == new[0] and np.array_equal(old[1], new[1]) and old[2:] == new[2:]
    assert torch.equal(before["torch"], after["torch"])
    assert len(before["cuda"]) == len(after["cuda"])
    assert all(torch.equal(a, b) for a, b in zip(before["cuda"], after["cuda"], strict=True))


class RecordingSGD(torch.optim.SGD):
    """SGD that notes the learning rate of every step it takes."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.seen: list[float] = []

    def step(self, closure: Any = None) -> Any:
        self.seen.append(self.param_groups[0]["lr"])
        return super().step(closure)


# ------------------------------------------------------------------ the sweep itself


def test_sweep_steps_at_exponential_rates_and_smooths_with_bias_correction(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    recorders: list[RecordingSGD] = []

    def make(params: Any) -> RecordingSGD:
        recorders.append(RecordingSGD(params, lr=0.5))
        return recorders[-1]

    result = lr_find(
        _tiny_cnn(),
        small_data,
        start_lr=1e-5,
        end_lr=1.0,
        num_iter=12,
        batch_size=64,  # 5 batches per epoch: the sweep cycles through the data
        optimizer=make,
        early_stop_threshold=None,
        device="cpu",
        seed=0,
    )
    expected = [1e-5 * (1.0 / 1e-5) ** (i / 11) for i in range(12)]
    assert result.lrs == pytest.approx(expected, rel=1e-12)
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1.0)
    assert recorders[0].seen == result.lrs  # the rate each batch really stepped with
    average, smoothed = 0.0, []
    for i, loss in enumerate(result.raw_losses):
        average = 0.98 * average + 0.02 * loss
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
    assert result.losses == pytest.approx(smoothed, rel=1e-12)
    assert result.losses[0] == pytest.approx(result.raw_losses[0])  # bias-corrected at once
    assert result.stop == "num_iter"


def test_an_optimizer_with_its_own_scheduler_sweeps_from_start_lr(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # a scheduler made on the optimizer left `initial_lr` in its groups, where LambdaLR
    # would take its base rate from instead of the group's `lr`
    model = _tiny_cnn()
    optimizer = RecordingSGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    groups = copy.deepcopy(optimizer.state_dict()["param_groups"])
    inputs, targets = small_data
    result = lr_find(
        model,
        (inputs[:64], targets[:64]),
        optimizer=optimizer,
        start_lr=1e-6,
        end_lr=1e-2,
        num_iter=10,
        early_stop_threshold=None,
        batch_size=16,
        device="cpu",
    )
    assert optimizer.seen == pytest.approx(result.lrs, rel=1e-12)  # the rates it recorded
    assert optimizer.seen[0] == pytest.approx(1e-6) and optimizer.seen[-1] == pytest.approx(1e-2)
    assert optimizer.state_dict()["param_groups"] == groups  # `initial_lr` 0.1 put back


def test_a_diverging_loss_stops_the_sweep(small_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    kwargs: dict[str, Any] = {"num_iter": 60, "batch_size": 32, "device": "cpu", "seed": 0}
    sgd = {"optimizer": "sgd", "start_lr": 1e-4, "end_lr": 1e4}
    result = lr_find(_tiny_cnn(), small_data, beta=0.0, **sgd, **kwargs)
    assert result.stop == "diverged"
    assert len(result.lrs) < 60
    # beta=0: no smoothing, so the last loss is the first one above 4x the best before it
    assert result.losses == result.raw_losses
    assert result.losses[-1] > 4 * min(result.losses[:-1])
    assert all(loss <= 4 * min(result.losses[: i + 1]) for i, loss in enumerate(result.losses[:-1]))


def test_a_loss_below_zero_is_not_taken_for_divergence() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    data = (x, x.sum(1, keepdim=True))

    def shifted(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, targets) - 10.0  # negative from the start

    result = lr_find(
        nn.Linear(8, 1),
        data,
        loss=shifted,
        task="regression",
        optimizer="sgd",
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=30,
        beta=0.0,  # no smoothing: each loss is compared as it is
        batch_size=32,
        device="cpu",
        seed=0,
    )
    losses = result.losses
    assert losses[0] < 0 and len(losses) > 20  # before: "diverged" at the second batch

    def limit(i: int) -> float:  # 4 x the best so far, measured by its magnitude
        best = min(losses[: i + 1])
        return best + 3 * abs(best)

    assert all(loss <= limit(i) for i, loss in enumerate(losses[:-1]))
    assert result.stop == "num_iter" or losses[-1] > limit(len(losses) - 2)


def test_a_non_finite_loss_ends_the_sweep_before_it_is_recorded(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    # a linear regression under SGD at ever larger rates: the weights overflow to inf
    inputs, digits = small_data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1))
    result = lr_find(
        model,
        (inputs, digits[:, None].float()),
        optimizer="sgd",
        start_lr=1e-2,
        end_lr=1e30,
        num_iter=60,
        early_stop_threshold=None,
        batch_size=32,
        device="cpu",
        seed=0,
    )
    assert result.stop == "non-finite"
    assert 0 < len(result.lrs) < 60
    assert all(math.isfinite(loss) for loss in result.raw_losses)
    assert result.raw_losses[-1] > 1e20  # it was on its way


class NaNInput(nn.Module):
    """A model whose forward turns every output NaN: broken whatever the learning rate."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * math.nan


def test_a_loss_that_is_nan_at_the_first_batch_is_an_error_not_a_curve(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.manual_seed(0)
    model = NaNInput()
    before, rngs = _state(model), _rngs()
    with pytest.raises(
        NonFiniteLossError,
        match=r"nan at the sweep.s first batch, before any step, so no learning rate",
    ):
        lr_find(model, small_data, num_iter=10, batch_size=64, device="cpu")
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)


def test_suggestions_follow_fastai() -> None:
    # the longest descent is 0..6 (7 values): start = -1, a third of the span 7/3
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 2.0, 9.0]
    assert valley_index(losses) == -1 + 2 + 1
    # a bump doesn't end the valley: the longest decreasing subsequence (3, 2.5, 2, 1 or
    # 3, 2.6, 2, 1) jumps over it and ends at index 4; start = 4 - 4, a third of 4 is 1.33
    assert valley_index([3.0, 2.5, 2.6, 2.0, 1.0, 8.0]) == 0 + 1 + 0
    assert valley_index([1.0, 2.0, 3.0]) == 0  # no descent at all: the first point
    lrs = [10.0**e for e in range(-6, 0)]
    assert steepest_index(lrs, [2.0, 2.0, 1.9, 1.0, 0.9, 5.0]) == 2
    # the first num_iter // 10 and the last 5 points are left out
    lrs = [10 ** (e / 10) for e in range(-60, 0)]
    curve = [2.0] * 60
    curve[3] = 0.1  # inside the skipped start: must not be picked
    curve[20:40] = [1.95 - 0.05 * i - (0.3 if i >= 10 else 0.0) for i in range(20)]
    valley, steepest = suggestions(lrs, curve, num_iter=60)
    # the descent runs over 19..39 (21 points); fastai starts one before it: 18 + 7 + 3
    assert valley == lrs[18 + 7 + 3]
    assert steepest == lrs[29]  # the step from 29 to 30 falls 0.35, the others 0.05
    assert suggestions(lrs[:9], curve[:9], num_iter=60) == (None, None)


# --------------------------------------------------------- everything is put back


def test_model_optimizer_rngs_and_loader_are_restored_bit_for_bit(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4, 8), hidden=(16,), dropout=0.2)
    model.features.block2.eval()  # a submodule in eval mode while the model trains
    groups = [
        {"params": list(model.features.parameters()), "lr": 1e-3},
        {"params": list(model.head.parameters()), "lr": 1e-2},
    ]
    optimizer = torch.optim.Adam(groups)
    inputs, targets = small_data
    nn.functional.cross_entropy(model(inputs[:8]), targets[:8]).backward()
    optimizer.step()  # the optimizer holds state, the parameters hold gradients
    nn.functional.cross_entropy(model(inputs[8:16]), targets[8:16]).backward()
    loader = DataLoader(
        TensorDataset(inputs, targets),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002 - lr_find must put the legacy global RNG back
    torch.manual_seed(1)
    before, rngs = _state(model), _rngs()
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    optimizer_attributes = dict(vars(optimizer))
    loader_state = loader.generator.get_state()

    result = lr_find(model, loader, optimizer=optimizer, num_iter=20, device="cpu", seed=3)

    assert len(result.lrs) == 20  # the sweep trained (so there was something to undo)
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)
    assert torch.equal(loader.generator.get_state(), loader_state)
    after = optimizer.state_dict()
    assert after["param_groups"] == optimizer_state["param_groups"]
    assert after["state"].keys() == optimizer_state["state"].keys()
    for key, values in optimizer_state["state"].items():
        for name, value in values.items():
            assert torch.equal(after["state"][key][name], value), (key, name)
    assert vars(optimizer).keys() == optimizer_attributes.keys()  # no scheduler wrapper left
    assert optimizer.step.__func__ is torch.optim.Adam.step


def test_the_sweep_changes_what_is_restored(small_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The restore test above is not vacuous: the sweep does train the model it restores."""
    model = _tiny_cnn()
    before = _state(model)
    seen: dict[str, torch.Tensor] = {}

    class Spy(torch.optim.Adam):
        def step(self, closure: Any = None) -> Any:
            out = super().step(closure)
            seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            return out

    lr_find(model, small_data, optimizer=Spy, num_iter=10, device="cpu", seed=0)
    changed = [k for k, v in before["tensors"].items() if not torch.equal(v, seen[k])]
    assert (
        "features.block1.conv.weight" in changed and "features.block1.norm.running_mean" in changed
    )
    _assert_same_state(before, model)


def test_model_is_restored_when_the_sweep_fails(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = _tiny_cnn()

    def fail_later(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        fail_later.calls += 1  # type: ignore[attr-defined]
        if fail_later.calls > 4:  # type: ignore[attr-defined]
            raise RuntimeError("a loss that breaks mid-sweep")
        return nn.functional.cross_entropy(outputs, targets)

    fail_later.calls = 0  # type: ignore[attr-defined]
    before, rngs = _state(model), _rngs()
    with pytest.raises(RuntimeError, match="breaks mid-sweep"):
        lr_find(model, small_data, loss=fail_later, task="multiclass", num_iter=10, device="cpu")
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)


def test_ctrl_c_ends_the_sweep_with_everything_put_back(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = _tiny_cnn()
    calls = []

    def press_ctrl_c(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:  # a real SIGINT during the fourth batch
            signal.raise_signal(signal.SIGINT)
        return nn.functional.cross_entropy(outputs, targets)

    before, rngs = _state(model), _rngs()
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"^lr_find was interrupted") as err:
        lr_find(model, small_data, loss=press_ctrl_c, num_iter=20, device="cpu", seed=0)
    # the message is the sweep's: it doesn't claim the model kept what it learned, nor
    # offer fit's on_interrupt=, which lr_find doesn't take
    assert "after 3 of 20 batches" in str(err.value) and "as they were" in str(err.value)
    assert "on_interrupt" not in str(err.value) and "keeps what it learned" not in str(err.value)
    assert len(calls) == 4  # the sweep stopped after the batch Ctrl-C came in
    assert signal.getsignal(signal.SIGINT) is handler
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)


# ------------------------------------------------------------------ every task of fit


def _task_data(task: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A small model without BatchNorm or dropout and 64 real images with targets."""
    inputs, digits = mnist_sample().tensors
    inputs, digits = inputs[:64], digits[:64]
    torch.manual_seed(0)
    if task == "segmentation":  # ink or background, per pixel: dense multiclass
        model: nn.Module = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)
        )
        return model, (inputs, (inputs[:, 0] > 0.5).long())
    outputs = {"multiclass": 10, "binary": 1, "multilabel": 2, "regression": 1}[task]
    model = build_cnn((1, 28, 28), outputs, channels=(4,), norm=None, hidden=())
    targets = {
        "multiclass": digits,
        "binary": (digits == 0).float()[:, None],
        "multilabel": torch.stack([digits % 2 == 0, digits > 4], dim=1).float(),
        "regression": inputs.mean(dim=(1, 2, 3))[:, None] * 10,
    }[task]
    return model, (inputs, targets)


@pytest.mark.parametrize(
    "task", ["multiclass", "binary", "multilabel", "regression", "segmentation"]
)
def test_every_task_fit_supports(task: str) -> None:
    model, data = _task_data(task)
    named = task if task in ("binary", "multilabel") else "auto"  # 0/1 floats: name it
    before = _state(model)
    # one batch holds all 64 samples: the first loss is the task's loss on the data
    result = lr_find(model, data, task=named, batch_size=64, num_iter=12, device="cpu", seed=0)
    _assert_same_state(before, model)
    first = evaluate(model, data, task=named, batch_size=64, device="cpu")["loss"]
    assert result.raw_losses[0] == pytest.approx(first, rel=1e-5)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) >= 2
    assert all(math.isfinite(loss) for loss in result.raw_losses)


def test_bf16_on_the_cpu(small_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = _tiny_cnn()
    before = _state(model)
    result = lr_find(model, small_data, precision="bf16", num_iter=15, device="cpu", seed=0)
    assert len(result.lrs) == 15 and all(math.isfinite(loss) for loss in result.raw_losses)
    # bf16 autocast: the losses differ from float32's, the parameters stay float32
    full = lr_find(model, small_data, num_iter=15, device="cpu", seed=0)
    assert result.raw_losses != full.raw_losses
    assert result.raw_losses[0] == pytest.approx(full.raw_losses[0], rel=2e-2)
    _assert_same_state(before, model)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start_lr": 0}, ValueError, r"`start_lr`.*strictly positive.*start_lr=0"),
        ({"start_lr": "1e-7"}, TypeError, r"`start_lr`.*Received start_lr='1e-7'"),
        ({"end_lr": float("inf")}, ValueError, r"`end_lr`.*finite"),
        ({"start_lr": 1.0, "end_lr": 0.1}, ValueError, r"`end_lr`.*start_lr=1.0, end_lr=0.1"),
        ({"num_iter": 5}, ValueError, r"`num_iter`.*at least 10.*num_iter=5"),
        ({"num_iter": 20.0}, TypeError, r"`num_iter`.*Expected an int"),
        ({"beta": 1.0}, ValueError, r"`beta`.*\[0, 1\).*beta=1.0"),
        ({"early_stop_threshold": 1}, ValueError, r"`early_stop_threshold`.*above 1"),
        ({"optimizer": "adamx"}, ValueError, r"`optimizer`.*unknown name 'adamx'"),
        ({"task": "classify"}, ValueError, r"`task`.*task='classify'"),
        ({"batch_size": 0}, ValueError, r"`batch_size`"),
        ({"precision": "16-mixed"}, ValueError, r"`precision`.*CUDA"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    small_data: tuple[torch.Tensor, torch.Tensor],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    model = _tiny_cnn()
    before, rngs = _state(model), _rngs()
    with pytest.raises(error, match=match):
        lr_find(model, small_data, device="cpu", **kwargs)
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)


def test_bad_data_and_models_are_refused_with_the_model_untouched(
    small_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    with pytest.raises(TypeError, match=r"`model`.*torch.nn.Module"):
        lr_find("model", small_data)  # type: ignore[arg-type]
    model = _tiny_cnn()
    before, rngs = _state(model), _rngs()
    with pytest.raises(TypeError, match=r"`train_data`"):
        lr_find(model, "images", device="cpu")
    inputs, targets = small_data
    # found after fit has placed the model (channels_last): still put back
    with pytest.raises(ValueError, match=r"target 12 is outside \[0, 10\)"):
        lr_find(model, (inputs, targets.clamp(max=9).index_fill(0, torch.tensor([5]), 12)))
    _assert_same_state(before, model)
    _assert_same_rngs(rngs)


# -------------------------------------------------------------- the result object


def test_plot_marks_the_suggestions(small_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    pytest.importorskip("matplotlib")
    result = lr_find(_tiny_cnn(), small_data, num_iter=20, batch_size=32, device="cpu", seed=0)
    assert result.suggestion is not None and result.steepest is not None
    fig = result.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curve, valley, steep = ax.lines
    assert list(curve.get_xdata()) == result.lrs and list(curve.get_ydata()) == result.losses
    assert list(valley.get_xdata()) == [result.suggestion]
    assert list(steep.get_xdata()) == [result.steepest]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "smoothed loss",
        f"valley: {result.suggestion:.1e}",
        f"steepest: {result.steepest:.1e}",
    ]


def test_repr_reads_as_a_summary() -> None:
    result = LRFinderResult(
        [1e-4, 1e-3, 1e-2], [2.0, 1.5, 9.0], [2.0, 1.0, 20.0], 1e-3, 1e-4, "diverged"
    )
    assert repr(result) == (
        "LRFinderResult(suggestion=1.00e-03 (valley), steepest=1.00e-04, 3 batches, "
        "lr 1e-04 to 1e-02, stopped: diverged)"
    )
    short = LRFinderResult([1e-4], [2.0], [2.0], None, None, "non-finite")
    assert "no suggestion" in repr(short) and "lower start_lr" in repr(short)


# ---------------------------------------------------------------- on real data


@pytest.mark.slow
def test_suggestion_trains_the_readme_network_well() -> None:
    train, test = mnist_sample(train=True), mnist_sample(train=False)
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    result = lr_find(model, train, batch_size=64, device="cpu", seed=0)
    assert result.suggestion is not None and 1e-4 <= result.suggestion <= 1e-1
    fit(
        model,
        train,
        epochs=1,
        lr=result.suggestion,
        batch_size=64,
        device="cpu",
        seed=0,
        progress=False,
    )
    assert evaluate(model, test, device="cpu")["accuracy"] >= 0.93
