"""Batching: the in-memory tensor path gives exactly the DataLoader path's batches, and
costs no second copy of the data."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from convkit import Callback, build_cnn, evaluate, fit, predict
from convkit.train.data import Batching, LoaderBatches, TensorBatches, make_batches
from convkit.train.devices import Runtime


@pytest.mark.parametrize("batch_size", [32, 50, 300, 512])
@pytest.mark.parametrize("shuffle", [True, False])
def test_tensor_batches_equal_dataloader_batches(
    small_data, batch_size: int, shuffle: bool
) -> None:
    inputs, targets = small_data
    tensor_gen, loader_gen = torch.Generator().manual_seed(123), torch.Generator().manual_seed(123)
    ours = make_batches(
        (inputs, targets), Batching(name="data", batch_size=batch_size, shuffle=shuffle,
        generator=tensor_gen, device=torch.device("cpu"), need_targets=True,
    ))  # fmt: skip
    assert isinstance(ours, TensorBatches)
    loader = DataLoader(
        TensorDataset(inputs, targets), batch_size=batch_size, shuffle=shuffle, generator=loader_gen
    )
    for _epoch in range(3):  # the generators must stay in step across epochs
        theirs = list(loader)
        mine = list(ours)
        assert len(mine) == len(theirs) == len(ours)
        for batch, (x, y) in zip(mine, theirs, strict=True):
            assert torch.equal(batch.inputs, x)
            assert torch.equal(batch.targets, y)


def test_tensor_path_does_no_per_sample_getitem(small_data) -> None:
    class Counting(TensorDataset):
        calls = 0

        def __getitem__(self, index):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().__getitem__(index)

    batches = make_batches(
        Counting(*small_data), Batching(name="data", batch_size=64, shuffle=True,
        generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), need_targets=True,
    ))  # fmt: skip
    assert sum(b.inputs.shape[0] for b in batches) == 300
    assert Counting.calls == 0


def test_other_datasets_go_through_a_dataloader(small_data) -> None:
    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return small_data[0][i], small_data[1][i]

    batches = make_batches(
        Plain(), Batching(name="data", batch_size=4, shuffle=False,
        generator=torch.Generator(), device=torch.device("cpu"), need_targets=True,
    ))  # fmt: skip
    assert isinstance(batches, LoaderBatches)
    assert [b.inputs.shape[0] for b in batches] == [4, 4, 2]


def test_cpu_data_is_not_copied_to_channels_last() -> None:
    # 3 channels: the layouts differ (with 1 channel both are the same strides)
    inputs, targets = torch.rand(64, 3, 8, 8), torch.randint(0, 10, (64,))
    batches = make_batches(
        (inputs, targets), Batching(name="data", batch_size=16, shuffle=True,
        generator=torch.Generator(), device=torch.device("cpu"), need_targets=True,
        memory_format=torch.channels_last),
    )  # fmt: skip
    assert isinstance(batches, TensorBatches)
    assert batches.inputs.data_ptr() == inputs.data_ptr()  # the caller's tensor, no copy
    assert batches.inputs.stride() == inputs.stride()
    runtime = Runtime(torch.nn.Conv2d(3, 3, 1), "cpu", "32", "channels_last")
    batch = next(iter(batches))
    formatted = runtime.format(batch.inputs)  # what the loops feed the model
    assert formatted.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(formatted, batch.inputs)


@pytest.mark.slow
@pytest.mark.parametrize("call", ["fit", "evaluate", "predict"])
def test_peak_memory_above_the_data_stays_under_a_tenth(call: str) -> None:
    """A fresh process per call: 30,000 3x32x32 images (352 MiB) in channels_last."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    cmd = [sys.executable, str(bench), "--one", call, "auto", "--n", "30000"]
    env = {**os.environ, "PYTHONPATH": str(bench.parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=300)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["share"] < 0.10, row


# ------------------------------------------------------- inputs users actually have

CPU = {"device": "cpu", "progress": False, "seed": 0, "epochs": 2, "batch_size": 100}


def _tiny(channels: int = 1, size: int = 28) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_cnn((channels, size, size), 10, channels=(4,), hidden=())


@pytest.fixture
def reference(small_data) -> tuple[list[float], torch.Tensor]:
    inputs, targets = small_data
    model = _tiny()
    history = fit(model, (inputs, targets), **CPU)
    return history["loss"], predict(model, inputs[:50], device="cpu")


def test_numpy_arrays_train_like_tensors(small_data, reference) -> None:
    inputs, targets = small_data
    model = _tiny()
    history = fit(model, (inputs.numpy(), targets.numpy()), **CPU)
    assert history["loss"] == reference[0]
    assert torch.equal(predict(model, inputs[:50].numpy(), device="cpu"), reference[1])


def test_float64_inputs_are_cast_to_the_models_dtype_said_once(
    small_data, reference, caplog: pytest.LogCaptureFixture
) -> None:
    inputs, targets = small_data
    model = _tiny()
    with caplog.at_level(logging.INFO, logger="convkit.train.data"):
        history = fit(model, (inputs.double().numpy(), targets.numpy()), **CPU)
    assert history["loss"] == reference[0]  # float32 -> float64 -> float32 is exact
    said = [r for r in caplog.records if "inputs torch.float64 -> torch.float32" in r.message]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert said[0].message.startswith("train_data: converting each batch")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_integer_labels_of_any_width(small_data, reference, dtype: torch.dtype) -> None:
    inputs, targets = small_data
    assert fit(_tiny(), (inputs, targets.to(dtype)), **CPU)["loss"] == reference[0]


def test_integer_labels_from_a_dataset(small_data, reference) -> None:
    inputs, targets = small_data

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(inputs)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return inputs[i], targets[i].to(torch.int32)

    model = _tiny()
    history = fit(model, Plain(), val_data=Plain(), **CPU)
    assert history["loss"] == pytest.approx(reference[0], rel=1e-5)  # same order and batches


def test_uint8_images_are_scaled_to_unit_range(small_data, reference) -> None:
    inputs, targets = small_data
    images = (inputs * 255).round().to(torch.uint8)  # the sample is exactly uint8 / 255
    model = _tiny()
    history = fit(model, (images, targets), **CPU)
    assert history["loss"] == reference[0]
    assert torch.equal(predict(model, images[:50], device="cpu"), reference[1])


def test_hwc_images_get_a_message_to_permute_the_data() -> None:
    model = _tiny(channels=3, size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.rand(20, 32, 32, 3), torch.randint(0, 10, (20,))
    with pytest.raises(
        ValueError,
        match=r"`train_data`: inputs of shape \(20, 32, 32, 3\) don't match the model's "
        r"input_shape \(3, 32, 32\); expected \(N, 3, 32, 32\)\. They look like channels-last "
        r"images \(N, H, W, C\)\. Permute the data, not the model: inputs\.permute\(0, 3, 1, 2\)",
    ):
        fit(model, (images, labels), **CPU)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    fit(model, (images.permute(0, 3, 1, 2), labels), **CPU)  # the fix works


def test_ignored_labels_pass_the_range_check(small_data) -> None:
    inputs, targets = small_data
    targets = targets.clone()
    targets[::7] = -100  # cross-entropy's default ignore_index
    model = _tiny()
    fit(model, (inputs, targets), **CPU)
    logits = predict(model, inputs, device="cpu")
    expected = torch.nn.functional.cross_entropy(logits, targets)  # ignores -100 itself
    scores = evaluate(model, (inputs, targets), device="cpu", metrics=(), batch_size=300)
    assert scores["loss"] == pytest.approx(expected.item(), rel=1e-5)
    targets[::7] = 255  # a segmentation-style void label, ignored by the given loss
    fit(_tiny(), (inputs, targets), loss=torch.nn.CrossEntropyLoss(ignore_index=255), **CPU)
    with pytest.raises(ValueError, match=r"target 255 is outside \[0, 10\)"):
        fit(_tiny(), (inputs, targets), **CPU)  # the default loss doesn't ignore 255


@pytest.mark.parametrize(
    ("data", "kinds"),
    [
        (lambda x, y: (x, y, y), r"a tuple of \(Tensor, Tensor, Tensor\)"),
        (lambda x, y: [x], r"a list of \(Tensor\)"),
        (lambda x, y: (x, y.tolist()), r"a tuple of \(Tensor, list\)"),
        (lambda x, y: {"x": x, "y": y}, r"a dict with keys \['x', 'y'\]"),
    ],
)  # fmt: skip
def test_containers_that_are_not_pairs_are_refused(small_data, data, kinds: str) -> None:
    with pytest.raises(TypeError, match=rf"argument `train_data`: {kinds}.*\(inputs, targets\)"):
        fit(_tiny(), data(*small_data), **CPU)


def test_predict_does_not_read_a_list_of_inputs_as_targets(small_data) -> None:
    inputs, targets = small_data
    model = _tiny()
    with pytest.raises(TypeError, match=r"`data`: a list of \(Tensor, Tensor\).*torch\.cat"):
        predict(model, [inputs[:10], inputs[10:20]], device="cpu")
    both = predict(model, torch.cat([inputs[:10], inputs[10:20]]), device="cpu")
    assert both.shape == (20, 10)
    assert torch.equal(predict(model, (inputs[:10], targets[:10]), device="cpu"), both[:10])


class _Stream(torch.utils.data.IterableDataset):
    """An iterable dataset without a length, as streaming data comes."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(self.inputs, self.targets, strict=True))


@pytest.mark.parametrize("progress", [True, False])
def test_iterable_datasets_and_loaders_over_them_work(small_data, progress: bool) -> None:
    inputs, targets = small_data
    stream = _Stream(inputs, targets)
    model = _tiny()
    history = fit(model, stream, val_data=DataLoader(stream, batch_size=100),
                  **{**CPU, "progress": progress})  # fmt: skip
    assert len(history) == 2
    reference = evaluate(model, (inputs, targets), device="cpu")
    assert history["val_loss"][-1] == pytest.approx(reference["loss"], rel=1e-5)
    assert predict(model, stream, device="cpu").shape == (300, 10)


def test_val_data_is_checked_before_any_work(small_data) -> None:
    inputs, targets = small_data
    bad = TensorDataset(inputs[:50], torch.full((50,), 12))

    class Plain(torch.utils.data.Dataset):  # goes through a DataLoader
        def __len__(self) -> int:
            return 50

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return bad[i]

    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`val_data`: target 12 is outside \[0, 10\)"):
        fit(model, (inputs, targets), val_data=Plain(), **CPU)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -------------------------------------------------- validation_split and num_workers


class SharesStorage(Callback):
    """Finds the run's batching objects and checks they hold ``inputs`` itself, no copy."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs, self.found = inputs, {}

    def on_train_begin(self, state) -> None:  # type: ignore[no-untyped-def]
        gc.collect()
        for obj in gc.get_objects():
            if type(obj) is TensorBatches and obj.spec.rows is not None:
                storage = obj.inputs.untyped_storage().data_ptr()
                self.found[obj.spec.name] = storage == self.inputs.untyped_storage().data_ptr()


def test_validation_split_is_a_seeded_split_without_copies(small_data) -> None:
    inputs, targets = small_data
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    val_rows, train_rows = order[:75].sort().values, order[75:].sort().values
    model = _tiny()
    shared = SharesStorage(inputs)
    history = fit(model, (inputs, targets), validation_split=0.25, callbacks=[shared], **CPU)
    assert shared.found == {"train_data": True, "val_data": True}  # both read the caller's rows
    reference = _tiny()
    expected = fit(reference, (inputs[train_rows], targets[train_rows]),
                   val_data=(inputs[val_rows], targets[val_rows]), **CPU)  # fmt: skip
    assert history.history == expected.history  # same rows, same batches, same numbers
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"validation_split": 1.0}, ValueError, r"fraction in \(0, 1\).*validation_split=1\.0"),
        ({"validation_split": 0.0}, ValueError, r"`validation_split`.*strictly positive"),
        ({"validation_split": float("nan")}, ValueError, r"`validation_split`"),
        ({"validation_split": "0.1"}, TypeError, r"`validation_split`"),
        ({"validation_split": 0.001}, ValueError, r"0\.001 of 300 samples leaves 0 for validation"),
        ({"validation_split": 0.1, "val_data": "x"}, ValueError, r"either val_data or"),
        ({"num_workers": -1}, ValueError, r"`num_workers`.*non-negative"),
        ({"num_workers": 1.5}, TypeError, r"`num_workers`"),
    ],
)  # fmt: skip
def test_split_and_worker_arguments_are_checked_before_any_work(
    small_data,
    kwargs: dict,
    error: type[Exception],
    match: str,  # type: ignore[type-arg]
) -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        fit(model, small_data, **{**CPU, **kwargs})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_validation_split_needs_in_memory_data(small_data) -> None:
    with pytest.raises(ValueError, match=r"`validation_split`.*`train_data` is a _Stream"):
        fit(_tiny(), _Stream(*small_data), validation_split=0.1, **CPU)


def test_num_workers_loads_a_dataset_in_worker_processes(small_data, tmp_path: Path) -> None:
    inputs, targets = small_data
    log = tmp_path / "pids"

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(inputs)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            with open(log, "a") as f:  # which process loaded this sample
                f.write(f"{os.getpid()}\n")
            return inputs[i], targets[i]

    main = fit(_tiny(), Plain(), **CPU)
    assert set(log.read_text().split()) == {str(os.getpid())}
    log.unlink()
    workers = fit(_tiny(), Plain(), num_workers=1, **CPU)
    assert str(os.getpid()) not in set(log.read_text().split())  # loaded by workers only
    assert workers.history == main.history  # the same batches as without workers
    with pytest.raises(ValueError, match=r"`num_workers`: `train_data` is a DataLoader"):
        fit(_tiny(), DataLoader(Plain(), batch_size=64), num_workers=2, **CPU)
