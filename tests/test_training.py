from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from convkit import Callback, History, build_cnn, evaluate, fit, mnist_sample, predict
from helpers import NOTEBOOK


def tiny_cnn(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    options = {"channels": (4,), "hidden": (16,), "dropout": 0.1, **kwargs}
    return build_cnn((1, 28, 28), 10, **options)


def deterministic_cnn(seed: int = 0) -> nn.Module:
    """No dropout and no BatchNorm: the train-mode forward is a pure function."""
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), norm=None, hidden=())


class PlainDataset(Dataset):
    """A map-style dataset that is not a TensorDataset: goes through a DataLoader."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        return self.inputs[i], self.targets[i]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_notebook_cnn_reaches_95_percent_on_the_bundled_sample() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    test = mnist_sample(train=False)
    history = fit(
        model, mnist_sample(), epochs=3, val_data=test, device="cpu", progress=False, seed=0
    )
    scores = evaluate(model, test, device="cpu")
    assert scores["accuracy"] >= 0.95
    assert history["val_accuracy"][-1] == pytest.approx(scores["accuracy"])
    assert history["loss"][0] > history["loss"][-1]
    assert len(history) == 3 and history.keys() == ["loss", "accuracy", "val_loss", "val_accuracy"]


def test_epoch_loss_is_the_exact_sample_mean(small_data) -> None:
    inputs, targets = small_data  # 300 samples, batch 128 -> 128 + 128 + 44
    model = deterministic_cnn()
    fit(model, (inputs, targets), epochs=2, progress=False, device="cpu")  # batches now differ
    with torch.no_grad():
        logits = model(inputs)
        expected_loss = F.cross_entropy(logits, targets, reduction="sum").item() / 300
        expected_acc = (logits.argmax(1) == targets).sum().item() / 300
    history = fit(
        model,
        (inputs, targets),
        epochs=1,
        batch_size=128,
        progress=False,
        device="cpu",
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),  # weights stay put
    )
    assert history["loss"][0] == pytest.approx(expected_loss, rel=1e-6)
    assert history["accuracy"][0] == pytest.approx(expected_acc, abs=1e-12)


def test_evaluate_exact_means_and_nothing_changes(small_data) -> None:
    inputs, targets = small_data
    model = tiny_cnn()
    before = state(model)
    scores = evaluate(model, (inputs, targets), batch_size=7, device="cpu")
    with torch.no_grad():
        model.eval()
        logits = model(inputs)
        model.train()
    assert scores["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert scores["accuracy"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert same_state(before, state(model))


def test_modes_are_restored_per_submodule(small_data) -> None:
    model = tiny_cnn()
    model.head.eval()  # a frozen head, say
    modes = {name: m.training for name, m in model.named_modules()}
    evaluate(model, small_data, device="cpu")
    assert {name: m.training for name, m in model.named_modules()} == modes
    predict(model, small_data[0], device="cpu")
    assert {name: m.training for name, m in model.named_modules()} == modes
    fit(model, small_data, epochs=1, val_data=small_data, progress=False, device="cpu")
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_validation_runs_in_eval_mode_without_touching_statistics(small_data) -> None:
    model = tiny_cnn()
    history = fit(
        model,
        small_data,
        epochs=1,
        progress=False,
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )
    after_train = state(model)
    fit(
        model,
        small_data,
        epochs=1,
        val_data=small_data,
        progress=False,
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        seed=1,
    )
    # BatchNorm saw the training batches twice but never the validation pass
    bn = model.features.block1.norm
    assert bn.num_batches_tracked.item() == 2 * 3
    assert history["loss"] and not same_state(after_train, state(model))


def test_seeded_runs_repeat_bit_for_bit(small_data) -> None:
    runs = []
    for _ in range(2):
        model = tiny_cnn(seed=3)
        history = fit(
            model, small_data, epochs=2, batch_size=64, progress=False, device="cpu", seed=42
        )
        runs.append((history.to_dict()["history"], state(model)))
    assert runs[0][0] == runs[1][0]
    assert same_state(runs[0][1], runs[1][1])
    model = tiny_cnn(seed=3)
    other = fit(model, small_data, epochs=2, batch_size=64, progress=False, device="cpu", seed=43)
    assert other["loss"] != runs[0][0]["loss"]


def test_tensor_path_and_dataloader_path_train_identically(small_data) -> None:
    inputs, targets = small_data
    results = []
    for data in ((inputs, targets), TensorDataset(inputs, targets), PlainDataset(inputs, targets)):
        model = tiny_cnn(seed=5)
        history = fit(model, data, epochs=2, batch_size=50, progress=False, device="cpu", seed=7)
        results.append((history["loss"], state(model)))
    for losses, weights in results[1:]:
        assert losses == results[0][0]
        assert same_state(weights, results[0][1])


def test_user_dataloader_is_used_as_is(small_data) -> None:
    loader = DataLoader(TensorDataset(*small_data), batch_size=100, shuffle=True)
    history = fit(tiny_cnn(), loader, epochs=1, progress=False, device="cpu")
    assert len(history["loss"]) == 1


@pytest.mark.parametrize(
    "optimizer",
    ["adam", "adamw", "sgd", torch.optim.RMSprop, lambda params: torch.optim.SGD(params, lr=0.05)],
)
def test_optimizer_forms(optimizer, small_data) -> None:
    model = tiny_cnn()
    before = state(model)
    fit(model, small_data, epochs=1, optimizer=optimizer, progress=False, device="cpu")
    assert not same_state(before, state(model))


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)],
)
def test_named_optimizers_are_fused_and_train_like_the_plain_ones(name, cls, small_data) -> None:
    built = []

    class Grab(Callback):
        def on_train_begin(self, state) -> None:
            built.append(state.optimizer)

    fused, plain = tiny_cnn(), tiny_cnn()
    fit(fused, small_data, epochs=2, optimizer=name, lr=0.01, weight_decay=1e-4, seed=0,
        progress=False, device="cpu", callbacks=[Grab()])  # fmt: skip
    assert type(built[0]) is cls and built[0].param_groups[0]["fused"] is True
    extra = {"momentum": 0.9} if name == "sgd" else {}

    def unfused(params):
        return cls(params, lr=0.01, weight_decay=1e-4, foreach=False, **extra)

    fit(plain, small_data, epochs=2, optimizer=unfused, seed=0, progress=False, device="cpu",
        callbacks=[Grab()])  # fmt: skip
    assert not built[1].param_groups[0]["fused"]
    for a, b in zip(fused.state_dict().values(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # same algorithm, fp32 rounding


def test_named_optimizer_is_not_fused_where_torch_has_no_kernel() -> None:
    from convkit.train.run import named_optimizer

    params = [nn.Parameter(torch.zeros(3, dtype=torch.complex64))]
    assert not named_optimizer("adam", params, 1e-3, 0.0).param_groups[0]["fused"]
    params = [nn.Parameter(torch.zeros(3))]
    assert named_optimizer("adam", params, 1e-3, 0.0).param_groups[0]["fused"]


def test_sgd_has_momentum_and_instance_is_used(small_data) -> None:
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    fit(model, small_data, epochs=1, optimizer=opt, progress=False, device="cpu")
    assert opt.state  # the instance itself was stepped
    assert opt.param_groups[0]["lr"] == 0.01


def test_custom_loss_and_metric(small_data) -> None:
    def top2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.topk(2, dim=1).indices == targets[:, None]).any(1).float().mean()

    history = fit(
        tiny_cnn(),
        small_data,
        epochs=1,
        val_data=small_data,
        progress=False,
        device="cpu",
        loss=nn.CrossEntropyLoss(label_smoothing=0.1),
        metrics=("accuracy", top2),
    )
    assert 0 <= history["accuracy"][0] <= history["top2"][0] <= 1
    assert "val_top2" in history


def test_plain_module_without_input_shape(small_data) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    history = fit(model, small_data, epochs=2, lr=0.01, progress=False, device="cpu")
    assert history["loss"][1] < history["loss"][0]
    assert predict(model, small_data[0][:5], device="cpu").shape == (5, 10)


def test_predict_matches_eval_forward_and_accepts_every_form(small_data) -> None:
    inputs, targets = small_data
    model = tiny_cnn()
    with torch.no_grad():
        expected = model.eval()(inputs)
    model.train()
    for data in (
        inputs,
        (inputs, targets),
        TensorDataset(inputs),
        PlainDataset(inputs, targets),
        DataLoader(TensorDataset(inputs, targets), batch_size=64),
    ):
        out = predict(model, data, device="cpu", batch_size=64)
        assert out.device.type == "cpu"
        torch.testing.assert_close(out, expected)


def test_progress_false_prints_nothing(small_data, capfd) -> None:
    fit(tiny_cnn(), small_data, epochs=2, val_data=small_data, progress=False, device="cpu")
    evaluate(tiny_cnn(), small_data, device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_true_prints_one_summary_line_per_epoch(small_data, capfd) -> None:
    fit(tiny_cnn(), small_data, epochs=2, val_data=small_data, device="cpu")
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(lines) == 2 and "val_accuracy" in lines[1] and "loss:" in lines[0]
    assert "batch" in err  # the tqdm bar


def test_history_record_and_serialisation(small_data) -> None:
    history = fit(tiny_cnn(), small_data, epochs=2, progress=False, device="cpu", seed=11)
    assert history.seed == 11 and history.device == "cpu"
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    assert set(history.epochs[0]) == {"epoch", "metrics", "seconds", "lr"}
    data = json.loads(json.dumps(history.to_dict()))
    assert data["history"]["loss"] == history["loss"]
    with pytest.raises(KeyError, match=r"val_loss.*recorded: loss, accuracy"):
        history["val_loss"]


def test_history_plot(small_data, tmp_path) -> None:
    history = fit(
        tiny_cnn(), small_data, epochs=2, val_data=small_data, progress=False, device="cpu"
    )
    fig = history.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    assert len(fig.axes[0].lines) == 2  # train and validation
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_history_plot_without_matplotlib(monkeypatch) -> None:
    import sys

    history = History()
    history.append(1, {"loss": 1.0}, 0.1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "torch-convkit\[plot\]"'):
        history.plot()


# ---------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, r"`epochs`.*epochs=0"),
        ({"batch_size": -1}, ValueError, r"`batch_size`"),
        ({"lr": 0.0}, ValueError, r"`lr`.*strictly positive"),
        ({"weight_decay": -1e-4}, ValueError, r"`weight_decay`"),
        ({"optimizer": "adagrad"}, ValueError, r"`optimizer`.*'adagrad'.*'adam', 'adamw', 'sgd'"),
        ({"optimizer": 3}, TypeError, r"`optimizer`"),
        ({"metrics": ("auc",)}, ValueError, r"`metrics`.*'auc'.*'accuracy'"),
        ({"loss": "mse"}, TypeError, r"`loss`"),
        (
            {"device": "cuda:7"},
            ValueError,
            r"`device`.*'cuda:7' is not available.*Available: .*cpu",
        ),
        ({"device": "tpu"}, ValueError, r"`device`.*'tpu' is not a device"),
        ({"seed": -1}, ValueError, r"`seed`"),
        ({"progress": "yes"}, TypeError, r"`progress`"),
    ],
)
def test_bad_arguments_fail_before_any_work(kwargs, error, match, small_data) -> None:
    model = tiny_cnn()
    before = state(model)
    with pytest.raises(error, match=match):
        fit(model, small_data, **{"progress": False, **kwargs})
    assert same_state(before, state(model))


def test_optimizer_on_other_parameters_is_refused(small_data) -> None:
    model = tiny_cnn()
    foreign = torch.optim.SGD(tiny_cnn().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"`optimizer`.*don't belong to `model`"):
        fit(model, small_data, optimizer=foreign, progress=False)


def test_optimizer_factory_must_return_an_optimizer(small_data) -> None:
    with pytest.raises(TypeError, match=r"`optimizer`.*returned list"):
        fit(tiny_cnn(), small_data, optimizer=lambda p: list(p), progress=False, device="cpu")


@pytest.mark.parametrize("wrap", ["pair", "dataset", "loader"])
def test_inputs_not_matching_input_shape(wrap, small_data) -> None:
    inputs, targets = small_data
    bad = inputs[:, :, :24, :24]
    data = {
        "pair": (bad, targets),
        "dataset": PlainDataset(bad, targets),
        "loader": DataLoader(TensorDataset(bad, targets), batch_size=32),
    }[wrap]
    model = tiny_cnn()
    before = state(model)
    with pytest.raises(
        ValueError, match=r"`train_data`.*\(\d+, 1, 24, 24\).*input_shape \(1, 28, 28\)"
    ):
        fit(model, data, progress=False, device="cpu")
    assert same_state(before, state(model))


@pytest.mark.parametrize("wrap", ["pair", "loader"])
@pytest.mark.parametrize("bad_label", [10, -1])
def test_targets_outside_num_classes(wrap, bad_label, small_data) -> None:
    inputs, targets = small_data
    targets = targets.clone()
    targets[0] = bad_label
    data = (
        (inputs, targets)
        if wrap == "pair"
        else DataLoader(TensorDataset(inputs, targets), batch_size=300)
    )
    model = tiny_cnn()
    before = state(model)
    with pytest.raises(ValueError, match=rf"target {bad_label} is outside \[0, 10\)"):
        fit(model, data, progress=False, device="cpu")
    assert same_state(before, state(model))


def test_targets_checked_for_models_without_num_classes(small_data) -> None:
    inputs, targets = small_data
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))
    with pytest.raises(ValueError, match=r"target \d is outside \[0, 5\)"):
        evaluate(model, (inputs, targets), device="cpu")


def test_empty_data(small_data) -> None:
    inputs, targets = small_data
    with pytest.raises(ValueError, match=r"`train_data`.*empty"):
        fit(tiny_cnn(), (inputs[:0], targets[:0]), progress=False)
    with pytest.raises(ValueError, match=r"`val_data`.*empty"):
        fit(tiny_cnn(), small_data, val_data=PlainDataset(inputs[:0], targets[:0]), progress=False)


def test_non_tensor_batches(small_data) -> None:
    samples = [([0.0] * 784, 1)] * 4
    loader = DataLoader(samples, batch_size=2, collate_fn=lambda b: b)
    with pytest.raises(TypeError, match=r"`train_data`: batch 0 is \(tuple, tuple\)"):
        fit(tiny_cnn(), loader, progress=False, device="cpu")


def test_integer_images_are_refused_with_a_fix(small_data) -> None:
    inputs, targets = small_data  # uint8 images are scaled instead: see test_data.py
    with pytest.raises(TypeError, match=r"dtype torch.int32.*uint8 images are scaled.*float\(\)"):
        fit(tiny_cnn(), ((inputs * 255).to(torch.int32), targets), progress=False)


def test_targets_missing(small_data) -> None:
    with pytest.raises(ValueError, match=r"`data`.*no targets"):
        evaluate(tiny_cnn(), small_data[0])


def test_bad_data_type() -> None:
    with pytest.raises(TypeError, match=r"`train_data`.*DataLoader.*Received int"):
        fit(tiny_cnn(), 5, progress=False)


def test_model_type_checked(small_data) -> None:
    with pytest.raises(TypeError, match=r"`model`.*nn.Module"):
        fit(lambda x: x, small_data)  # type: ignore[arg-type]
