from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from convkit import (
    ModelCheckpoint,
    build_cnn,
    fit,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,), dropout=0.2, head_dropout=0.2)


def run_python(code: str, **kwargs) -> subprocess.Popen:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )  # fmt: skip


def test_round_trip_of_everything(tmp_path: Path, small_data) -> None:
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    history = fit(model, small_data, epochs=1, optimizer=opt, scheduler=sched, progress=False,
                  device="cpu")  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    path = save_checkpoint(tmp_path / "sub" / "c.pt", model, opt, sched, history, epoch=1,
                           generator=gen)  # fmt: skip
    other = tiny_cnn(seed=1)
    other_opt = torch.optim.Adam(other.parameters())
    other_sched = torch.optim.lr_scheduler.StepLR(other_opt, 1)
    payload = load_checkpoint(path, other, other_opt, other_sched)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert other_sched.last_epoch == sched.last_epoch
    assert payload["epoch"] == 1 and payload["history"]["history"]["loss"] == history["loss"]
    assert set(payload["rng"]) >= {"python", "numpy", "torch", "cuda", "generator"}
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed


def test_load_model_rebuilds_without_user_code(tmp_path: Path, sample_test) -> None:
    model = tiny_cnn().eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    code = f"""
        import torch, convkit
        model = convkit.load_model({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        torch.save(model(x), {str(tmp_path / "y.pt")!r})
        print(type(model).__name__, model.training)
    """
    torch.save(sample_test[0][:8], tmp_path / "x.pt")
    proc = run_python(code)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["CNN", "False"]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(sample_test[0][:8]))
    assert str(load_model(path)) == str(model)


def test_custom_features_are_reported_as_not_rebuildable(tmp_path: Path) -> None:
    model = build_cnn((1, 28, 28), 10, features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    path = save_checkpoint(tmp_path / "c.pt", model)
    with pytest.raises(
        ValueError, match=r"can't be rebuilt.*custom `features`.*load_checkpoint\(path, model\)"
    ):
        load_model(path)
    same = build_cnn((1, 28, 28), 10, features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    load_checkpoint(path, same)  # the weights still load into a model the user builds
    for a, b in zip(model.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {_Exploit.marker}",))

    marker = ""


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "convkit-checkpoint", "model": _Exploit()}, path)
    with pytest.raises(ValueError, match=r"Refused to load .*could run code.*executed nothing"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same payload through plain pickle does run: the test's exploit is real
    with open(path, "wb") as f:
        pickle.dump(_Exploit(), f)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"not a convkit checkpoint.*load_state_dict"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_killed_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    code = f"""
        import torch, sys
        from torch import nn
        from convkit import save_checkpoint
        model = nn.Linear(4096, 4096)  # 64 MiB of weights
        save_checkpoint({str(path)!r}, model, epoch=0)
        print("FIRST", flush=True)
        epoch = 1
        while True:
            with torch.no_grad():
                model.weight.fill_(epoch)
            save_checkpoint({str(path)!r}, model, epoch=epoch)
            epoch += 1
    """
    for _attempt in range(5):
        proc = run_python(code)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "FIRST"
        time.sleep(1.5)  # several 64 MiB writes under way
        proc.kill()
        proc.communicate(timeout=30)  # reap it and close its pipes
        if list(tmp_path.glob(".big.pt.*.tmp")):
            break  # killed in the middle of a write: its partial file is left behind
    assert list(tmp_path.glob(".big.pt.*.tmp")), "never killed mid-write"
    payload = load_checkpoint(path)  # complete and loadable
    epoch = payload["epoch"]
    weight = payload["model"]["weight"]
    assert weight.shape == (4096, 4096)
    if epoch > 0:
        assert torch.all(weight == epoch)  # never a mix of two writes


def _resume_run(tmp_path: Path, small_data, stop_after: int | None) -> tuple[dict, dict]:
    total = 4
    model = tiny_cnn(seed=3)
    ckpt = tmp_path / "ckpt.pt"
    kwargs = {"batch_size": 64, "val_data": small_data, "progress": False, "device": "cpu"}
    if stop_after is None:
        history = fit(model, small_data, epochs=total, seed=0, **kwargs)
    else:
        fit(
            model,
            small_data,
            epochs=stop_after,
            seed=0,
            callbacks=[ModelCheckpoint(ckpt)],
            **kwargs,
        )
        model = tiny_cnn(seed=99)  # a new process would start from other weights
        history = fit(model, small_data, epochs=total, resume_from=ckpt, **kwargs)
    return history.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_is_bit_for_bit(tmp_path: Path, small_data, stop_after: int) -> None:
    full_history, full_weights = _resume_run(tmp_path / "a", small_data, None)
    resumed_history, resumed_weights = _resume_run(tmp_path / "b", small_data, stop_after)
    assert resumed_history["history"] == full_history["history"]
    assert [e["epoch"] for e in resumed_history["epochs"]] == [1, 2, 3, 4]
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key


def test_resume_from_missing_file(small_data) -> None:
    with pytest.raises(FileNotFoundError, match=r"`resume_from`.*no checkpoint"):
        fit(tiny_cnn(), small_data, progress=False, resume_from="nope.pt")


def test_ctrl_c_returns_history_and_writes_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "interrupted.pt"
    code = f"""
        import json, signal, torch
        from convkit import Callback, ModelCheckpoint, build_cnn, fit, mnist_sample, predict

        # a shell's background job starts with SIGINT ignored; a terminal's has Python's handler
        signal.signal(signal.SIGINT, signal.default_int_handler)

        class Announce(Callback):
            def on_epoch_end(self, state):
                print("EPOCH", state.epoch, flush=True)

        class Ended(Callback):
            def on_train_end(self, state):
                print("TRAIN_END", state.interrupted, flush=True)

        torch.manual_seed(0)
        model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        history = fit(model, mnist_sample(), epochs=1000, device="cpu", progress=True,
                      callbacks=[Announce(), ModelCheckpoint({str(ckpt)!r}, every_n_epochs=1000),
                                 Ended()])
        out = predict(model, mnist_sample(False).tensors[0][:4])
        print(json.dumps({{"interrupted": history.interrupted, "epochs": len(history),
                           "finite": bool(torch.isfinite(out).all()), "train": model.training}}))
    """
    proc = run_python(code)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the progress summary lines come first
        seen.append(line)
        if line.startswith("EPOCH 1") or len(seen) > 20:
            break
    assert seen[-1].startswith("EPOCH 1"), seen
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "interrupted": True,
        "epochs": result["epochs"],
        "finite": True,
        "train": True,
    }
    assert result["epochs"] >= 1
    assert "TRAIN_END True" in out
    payload = load_checkpoint(ckpt)
    assert payload["interrupted"] is True and payload["epoch"] == result["epochs"]
    assert "Interrupted during epoch" in out
    assert "Traceback" not in err
