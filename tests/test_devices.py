from __future__ import annotations

import pytest
import torch

from convkit import available_devices, build_cnn, evaluate, fit, predict, resolve_device


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_explicit_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert "cpu" in available_devices()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_missing_cuda_is_an_error_not_a_fallback(device) -> None:
    with pytest.raises(
        ValueError, match=r"`device`.*is not available on this machine.*Available: cpu"
    ):
        resolve_device(device)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message without MPS")
def test_missing_mps_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'mps' is not available"):
        resolve_device("mps")


@pytest.mark.parametrize(
    ("device", "error"), [("gpu0", ValueError), (0.5, TypeError), (None, TypeError)]
)
def test_bad_device_values(device, error) -> None:
    with pytest.raises(error, match=r"`device`"):
        resolve_device(device)


@pytest.mark.parametrize("function", [evaluate, predict])
def test_every_entry_point_checks_the_device(function) -> None:
    model = build_cnn((1, 8, 8), 2, channels=(2,), hidden=())
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    data = x if function is predict else (x, y)
    with pytest.raises(ValueError, match=r"'cuda:9' is not available"):
        function(model, data, device="cuda:9")
    with pytest.raises(ValueError, match=r"'cuda:9' is not available"):
        fit(model, (x, y), device="cuda:9")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
def test_cuda_training_reaches_95_percent(precision: str) -> None:  # pragma: no cover - GPU only
    from convkit import mnist_sample

    torch.manual_seed(0)
    model = build_cnn(
        (1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid",
        order="conv-pool-act-norm-dropout", dropout=0.25, hidden=(200,), head_norm="batch",
        head_dropout=0.25,
    )  # fmt: skip
    test = mnist_sample(False)
    history = fit(model, mnist_sample(), epochs=3, device="cuda", progress=False, seed=0,
                  precision=precision)  # fmt: skip
    assert history.device.startswith("cuda")
    assert next(model.parameters()).is_cuda
    assert evaluate(model, test, device="cuda", precision=precision)["accuracy"] >= 0.95
    logits = predict(model, test, device="cuda", precision=precision)
    assert logits.device.type == "cpu" and logits.dtype == torch.float32


@cuda
@pytest.mark.parametrize("on_device", [True, False])
def test_cuda_tensor_and_loader_paths_agree(on_device: bool) -> None:  # pragma: no cover
    from torch.utils.data import Dataset

    from convkit import mnist_sample

    x, y = mnist_sample().tensors
    x, y = x[:512], y[:512]

    class Plain(Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return x[i], y[i]

    results = []
    for data in ((x, y), Plain()):
        torch.manual_seed(0)
        model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=(), norm=None)
        history = fit(model, data, epochs=2, batch_size=64, device="cuda", progress=False,
                      seed=1, data_on_device=on_device)  # fmt: skip
        results.append(history["loss"])
    assert results[0] == pytest.approx(results[1], rel=1e-4)


@cuda
def test_cuda_sync_batchnorm_option_trains() -> None:  # pragma: no cover - GPU only
    from convkit import mnist_sample

    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8, 16), hidden=(32,), head_norm="batch")
    history = fit(model, mnist_sample(), epochs=2, device="cuda", progress=False,
                  sync_batchnorm=True)  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert history["accuracy"][-1] > 0.8


@cuda
def test_cuda_loop_does_not_sync_per_batch() -> None:  # pragma: no cover - GPU only
    import warnings

    from convkit import mnist_sample

    x, y = mnist_sample().tensors
    counts = {}
    for batch_size in (16, 256):
        torch.manual_seed(0)
        model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        fit(model, (x[:1024], y[:1024]), epochs=1, device="cuda", progress=False)  # warm-up
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")  # warns that it is a prototype, too
            try:
                fit(model, (x[:1024], y[:1024]), epochs=2, batch_size=batch_size,
                    device="cuda", progress=False, nan_guard=False)  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts[batch_size] = sum(
            "synchroniz" in str(w.message) and "prototype" not in str(w.message) for w in caught
        )
    assert counts[16] == counts[256], counts  # 64 batches vs 4 batches per epoch
