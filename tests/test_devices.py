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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_moves_model_and_batches() -> None:  # pragma: no cover - GPU only
    from convkit import mnist_sample

    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
    history = fit(model, mnist_sample(), epochs=1, device="cuda", progress=False)
    assert history.device.startswith("cuda")
    assert next(model.parameters()).is_cuda
    assert predict(model, mnist_sample(False), device="cuda").device.type == "cpu"
