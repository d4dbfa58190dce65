"""Batching: the in-memory tensor path gives exactly the DataLoader path's batches, and
costs no second copy of the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from convkit._data import Batching, LoaderBatches, TensorBatches, make_batches
from convkit._runtime import Runtime


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
    runtime = Runtime(torch.device("cpu"), torch.channels_last, None)
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
