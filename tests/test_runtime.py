"""Precision, memory format, compile and the sync-free loop."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from convkit import build_cnn, evaluate, fit, mnist_sample, predict
from helpers import NOTEBOOK


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4, 8), hidden=(16,))


def test_auto_memory_format_is_channels_last_for_conv_nets(small_data) -> None:
    model = tiny_cnn()
    fit(model, small_data, epochs=1, progress=False, device="cpu")
    weight = model.features.block2.conv.weight  # 4 -> 8 channels
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()  # with C_in > 1 the two layouts differ
    fit(model, small_data, epochs=1, progress=False, device="cpu", memory_format="contiguous")
    assert model.features.block2.conv.weight.is_contiguous()


def test_channels_last_and_contiguous_train_the_same(small_data) -> None:
    """Each format reaches the layers as asked (model and batches), with the same losses."""
    losses, seen = {}, {}
    for fmt in ("channels_last", "contiguous"):
        model = tiny_cnn(seed=1)
        layouts: list[bool] = []
        # block 2 takes 4 channels, where the two layouts differ (with 1 channel they agree)
        model.features.block2.register_forward_pre_hook(
            lambda m, args, seen=layouts: seen.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        history = fit(
            model, small_data, epochs=2, progress=False, device="cpu", seed=0, memory_format=fmt
        )
        losses[fmt], seen[fmt] = history["loss"], set(layouts)
        weight = model.features.block2.conv.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    assert seen == {"channels_last": {True}, "contiguous": {False}}
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=1e-4)


@pytest.mark.slow
def test_bf16_training_reaches_95_percent() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    test = mnist_sample(train=False)
    fit(model, mnist_sample(), epochs=3, progress=False, device="cpu", seed=0, precision="bf16")
    scores = evaluate(model, test, device="cpu", precision="bf16")
    assert scores["accuracy"] >= 0.95
    fp32 = evaluate(model, test, device="cpu")
    assert abs(fp32["accuracy"] - scores["accuracy"]) < 0.02
    logits = predict(model, test.tensors[0][:8], device="cpu", precision="bf16")
    assert logits.dtype == torch.float32


def test_bf16_actually_autocasts(small_data) -> None:
    seen = []
    model = tiny_cnn()
    model.head.output.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    predict(model, small_data[0][:4], device="cpu", precision="bf16")
    predict(model, small_data[0][:4], device="cpu")
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"precision": "16-mixed"},
            ValueError,
            r"`precision`.*'16-mixed' needs a CUDA device.*'bf16'",
        ),
        ({"precision": "fp8"}, ValueError, r"`precision`.*'32'.*'bf16'.*'16-mixed'.*'fp8'"),
        ({"memory_format": "nhwc"}, ValueError, r"`memory_format`.*'channels_last'.*'nhwc'"),
        ({"compile": "yes"}, TypeError, r"`compile`"),
        ({"data_on_device": "auto"}, TypeError, r"`data_on_device`"),
    ],
)
def test_bad_runtime_arguments(kwargs, error, match, small_data) -> None:
    with pytest.raises(error, match=match):
        fit(tiny_cnn(), small_data, progress=False, device="cpu", **kwargs)


def _count_host_reads(monkeypatch) -> list[str]:
    """Count reads of tensor values made by convkit's own code.

    (torch's Adam reads its CPU-resident ``step`` counter with ``.item()``; that is
    not a device sync and not convkit's doing, so only convkit's frames count.)
    """
    calls: list[str] = []
    reads = ("item", "tolist", "numpy", "cpu", "__array__", "__bool__", "__int__", "__float__")
    for name in (*reads, "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}convkit{os.sep}" in caller:
                calls.append(f"{_name} in {os.path.basename(caller)}")
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def test_no_host_sync_per_batch(small_data, monkeypatch) -> None:
    reads = {}
    for batch_size in (10, 100):  # 30 batches vs 3 batches per epoch
        model = tiny_cnn()
        calls = _count_host_reads(monkeypatch)
        fit(
            model,
            small_data,
            epochs=2,
            batch_size=batch_size,
            progress=False,
            device="cpu",
            seed=0,
            nan_guard=False,  # the guard reads one flag per batch, by design
        )
        reads[batch_size] = len(calls)
        monkeypatch.undo()
    assert reads[10] == reads[100]
    assert reads[10] <= 5  # a few per run (the epoch totals, the target check), not per batch


@pytest.mark.slow
def test_compile_trains_the_same_parameters(small_data) -> None:
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, small_data, epochs=1, progress=False, device="cpu", compile=True)
    assert history["loss"][0] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_guard_reads_exactly_one_flag_per_batch(small_data, monkeypatch) -> None:
    reads = {}
    for guard in (False, True):
        calls = _count_host_reads(monkeypatch)
        fit(tiny_cnn(), small_data, epochs=1, batch_size=10, progress=False, device="cpu",
            nan_guard=guard)  # fmt: skip
        reads[guard] = len(calls)
        monkeypatch.undo()
    assert reads[True] - reads[False] == 30  # 300 samples / 10 per batch


def test_sync_batchnorm_in_a_distributed_run_off_cuda_is_refused_up_front(
    small_data, monkeypatch
) -> None:
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: joined.append(a))
    with pytest.raises(ValueError, match=r"`sync_batchnorm`.*CUDA only.*cpu"):
        fit(tiny_cnn(), small_data, progress=False, device="cpu", sync_batchnorm=True)
    assert joined == []  # refused before joining the process group


def test_sync_batchnorm_conversion_replaces_every_batchnorm(small_data) -> None:
    """fit converts the model's BatchNorm layers; in one process SyncBatchNorm normalises
    as BatchNorm does, so the run is the same as without the conversion."""
    runs = {}
    for sync in (False, True):
        torch.manual_seed(0)
        model = build_cnn((1, 28, 28), 10, channels=(4, 8), hidden=(16,), head_norm="batch")
        history = fit(model, small_data, epochs=1, progress=False, device="cpu", seed=0,
                      sync_batchnorm=sync)  # fmt: skip
        kinds = [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        runs[sync] = (kinds, history.history, model.state_dict())
    assert runs[True][0] == [nn.SyncBatchNorm] * 3
    assert runs[False][0] == [nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d]
    assert runs[True][1] == runs[False][1]
    plain, synced = runs[False][2], runs[True][2]
    assert plain.keys() == synced.keys()
    assert all(torch.equal(plain[k], synced[k]) for k in plain)  # statistics carried over
