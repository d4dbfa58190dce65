from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import resource
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convkit import (
    ModelCheckpoint,
    build_cnn,
    checkpoints,
    fit,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from convkit.checkpoints.files import temp_path
from helpers import run_python


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_cnn((1, 28, 28), 10, channels=(4,), hidden=(16,), dropout=0.2, head_dropout=0.2)


def test_round_trip_of_everything(tmp_path: Path, small_data) -> None:
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    history = fit(
        model, small_data, epochs=1, optimizer=opt, scheduler=sched, progress=False, device="cpu"
    )
    gen = torch.Generator().manual_seed(5)
    path = save_checkpoint(
        tmp_path / "sub" / "c.pt", model, opt, sched, history, epoch=1, generator=gen
    )
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


@pytest.mark.slow  # a subprocess
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
    with pytest.raises(
        ValueError, match=r"Refused to load .*\(posix\.system\).*could run code.*executed nothing"
    ) as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()
    # the same payload through plain pickle does run: the test's exploit is real
    with open(path, "wb") as f:
        pickle.dump(_Exploit(), f)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"sd.pt is not a convkit checkpoint: .*load_state_dict"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
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

    def temp() -> Path | None:
        return next(iter(tmp_path.glob(".big.pt.*.tmp")), None)

    for _attempt in range(5):
        proc = run_python(code)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "FIRST"
        deadline = time.monotonic() + 60
        # kill it the moment a later save is half written (polling, not a fixed sleep,
        # so a slow machine still catches a write in progress)
        while time.monotonic() < deadline:
            found = temp()
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                if found is not None and found.stat().st_size > 1 << 20:
                    break
            time.sleep(0.001)
        proc.kill()
        proc.communicate(timeout=30)  # reap it and close its pipes
        if temp() is not None:
            break  # killed in the middle of a write: its partial file is left behind
    left = temp()
    assert left is not None, "no kill mid-write"
    assert sorted(p.name for p in tmp_path.iterdir()) == [left.name, "big.pt"]
    payload = load_checkpoint(path)  # complete, loadable, and its digest verified
    epoch = payload["epoch"]
    weight = payload["model"]["weight"]
    assert weight.shape == (4096, 4096)
    if epoch > 0:
        assert torch.all(weight == epoch)  # never a mix of two writes
    save_checkpoint(path, nn.Linear(2, 2))  # the next save removes the dead writer's file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


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


@pytest.mark.slow
@pytest.mark.parametrize("on_interrupt", ["raise", "return"])
def test_ctrl_c_writes_the_checkpoint_then_ends_the_script_or_returns(
    tmp_path: Path, on_interrupt: str
) -> None:
    ckpt = tmp_path / "run.pt"
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
                                 Ended()], on_interrupt={on_interrupt!r})
        print("CARRIED ON", flush=True)
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
    completed = sum(line.startswith("EPOCH") for line in [*seen, *out.splitlines()])
    assert "TRAIN_END True" in out  # the callbacks saved the interrupted state first
    assert not ckpt.exists()  # every_n_epochs=1000: no end-of-epoch file; the clean name stays free
    payload = load_checkpoint(tmp_path / "run.interrupted.pt")
    assert payload["interrupted"] is True and payload["epoch"] == completed
    if on_interrupt == "raise":  # the script ends, as on any Ctrl-C: nothing after fit runs
        # ended by the uncaught KeyboardInterrupt: killed by SIGINT as Python does, or status 1
        # on Python 3.11 when an exit handler imports a module (torch._dynamo's, after a step)
        assert proc.returncode in {-signal.SIGINT, 128 + signal.SIGINT, 1}, err
        assert "CARRIED ON" not in out
        assert "KeyboardInterrupt: Training was interrupted (Ctrl-C)" in err
        assert f"{completed} epoch(s) finished" in err
        return
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"interrupted": True, "epochs": completed, "finite": True, "train": True}
    assert "Interrupted during epoch" in out
    assert "Traceback" not in err


# ---- what is saved: only real wrappers are unwrapped


class UserModel(nn.Module):
    """A user's model whose attribute happens to be called ``module``."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.module(x))


@pytest.mark.parametrize("wrap", [lambda m: m, nn.DataParallel], ids=["plain", "DataParallel"])
def test_a_module_attribute_is_not_a_wrapper(tmp_path: Path, wrap) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = UserModel()
    path = save_checkpoint(tmp_path / "c.pt", wrap(model))
    keys = ["module.weight", "module.bias", "head.weight", "head.bias"]
    assert list(load_checkpoint(path)["model"]) == keys
    torch.manual_seed(1)
    other = UserModel()
    load_checkpoint(path, wrap(other))
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_unwrap_recognises_wrappers_by_type() -> None:
    model = UserModel()
    assert checkpoints.unwrap(model) is model
    assert checkpoints.unwrap(nn.DataParallel(nn.DataParallel(model))) is model


@pytest.mark.slow  # importing torch._dynamo takes seconds
def test_unwrap_recognises_torch_compile() -> None:
    model = UserModel()
    compiled = torch.compile(nn.DataParallel(model))  # wrapped, not compiled until called
    assert checkpoints.unwrap(compiled) is model


# ---- a file that doesn't fit leaves everything untouched


def _snapshot(*modules: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in m.state_dict().values()]


def _unchanged(before: list[torch.Tensor], *modules: nn.Module) -> bool:
    after = _snapshot(*modules)
    return len(before) == len(after) and all(
        torch.equal(a, b) for a, b in zip(before, after, strict=False)
    )


def test_mismatched_weights_leave_the_model_untouched(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", tiny_cnn())
    torch.manual_seed(1)
    other = build_cnn((1, 28, 28), 3, channels=(4,), hidden=(16,))  # 3 classes, not 10
    before = _snapshot(other)
    with pytest.raises(
        ValueError,
        match=r"c.pt doesn't fit the model: 'head.output.weight' is \(10, 16\) float32 in the "
        r"file but \(3, 16\) float32 in the model.*Nothing was loaded",
    ):
        load_checkpoint(path, other)
    assert _unchanged(before, other)  # the matching conv and hidden layers too


def test_missing_keys_and_dtypes_are_checked_first(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)))
    fewer = nn.Sequential(nn.Linear(3, 3))
    before = _snapshot(fewer)
    with pytest.raises(ValueError, match=r"the model has no \['1.weight', '1.bias'\]"):
        load_checkpoint(path, fewer)
    assert _unchanged(before, fewer)
    load_checkpoint(path, fewer, strict=False)  # the keys both have
    half = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)).half()
    before = _snapshot(half)
    with pytest.raises(
        ValueError, match=r"'0.weight' is \(3, 3\) float32 in the file but \(3, 3\) float16"
    ):
        load_checkpoint(path, half)
    assert _unchanged(before, half)
    with pytest.raises(TypeError, match=r"`strict`.*strict='yes'"):
        load_checkpoint(path, fewer, strict="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("older_file", [False, True], ids=["with classes", "without classes"])
def test_an_optimizer_or_scheduler_of_another_kind_is_refused_before_the_model_changes(
    tmp_path: Path, older_file: bool
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    adam.step()
    step = torch.optim.lr_scheduler.StepLR(adam, 2)
    path = save_checkpoint(tmp_path / "c.pt", model, adam, step)
    if older_file:  # convkit 0.2.0 stored no classes: the states alone must tell
        payload = torch.load(path, weights_only=True)
        del payload["optimizer_class"], payload["scheduler_class"]
        payload["digest"] = checkpoints.digest(payload)
        torch.save(payload, path)
    torch.manual_seed(1)
    other = nn.Linear(3, 2)
    before = _snapshot(other)
    sgd = torch.optim.SGD(other.parameters(), lr=0.1)
    message = (
        r"doesn't fit the optimizer: .*'betas'.*another kind"
        if older_file
        else r"c.pt was saved with optimizer Adam, and the optimizer here is SGD"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, other, sgd)
    assert _unchanged(before, other) and sgd.state_dict()["param_groups"][0]["lr"] == 0.1
    own_adam = torch.optim.Adam(other.parameters())
    multi = torch.optim.lr_scheduler.MultiStepLR(own_adam, [1])
    message = (
        r"doesn't fit the scheduler \(MultiStepLR\): MultiStepLR's state lacks \['milestones'\]"
        if older_file
        else r"saved with scheduler StepLR, and the scheduler here is MultiStepLR"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, other, own_adam, multi)
    assert _unchanged(before, other) and not own_adam.state
    two_groups = torch.optim.Adam([{"params": [other.weight]}, {"params": [other.bias]}])
    with pytest.raises(
        ValueError, match=r"parameters per group are \[2\] in the file but \[1, 1\]"
    ):
        load_checkpoint(path, other, two_groups)
    assert _unchanged(before, other)


# ---- damaged files


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (
            int.from_bytes(f.read(2), "little"),
            int.from_bytes(f.read(2), "little"),
        )
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(where)
        byte = f.read(1)[0]
        f.seek(where)
        f.write(bytes([byte ^ 0x10]))


def _damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "plain zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    elif kind == "random bytes":
        path.write_bytes(
            bytes(
                torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).tolist()
            )
        )
    elif kind == "flipped tensor byte":
        _flip_tensor_byte(path)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated or corrupt"),
        ("empty", "the file is empty"),
        ("text", "it is not the zip archive torch.save writes"),
        ("plain zip", "a zip archive, but not one written by torch.save"),
        ("random bytes", "it is not the zip archive torch.save writes"),
        ("flipped tensor byte", "corrupt: its content doesn't match the digest"),
    ],
)
def test_damaged_files_are_named_and_never_suggest_an_unsafe_load(
    tmp_path: Path, kind: str, reason: str
) -> None:
    path = save_checkpoint(tmp_path / "c.pt", tiny_cnn(), epoch=1)
    _damage(path, kind)
    model = tiny_cnn(seed=1)
    before = _snapshot(model)
    for load in (lambda: load_checkpoint(path, model), lambda: load_model(path)):
        with pytest.raises(
            ValueError, match=rf"c.pt is not a convkit checkpoint: {reason}"
        ) as info:
            load()
        assert "weights_only=False" not in str(info.value) and info.value.__cause__ is None
    assert _unchanged(before, model)


def test_flipped_byte_is_really_in_the_weights(tmp_path: Path) -> None:
    """The damage above is tensor data that torch alone loads without error."""
    path = save_checkpoint(tmp_path / "c.pt", tiny_cnn(), epoch=1)
    saved = torch.load(path, weights_only=True)["model"]
    _flip_tensor_byte(path)
    damaged = torch.load(path, weights_only=True)["model"]
    assert sum(not torch.equal(saved[k], damaged[k]) for k in saved) == 1


def test_entries_and_version_are_checked(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2), epoch=1)
    payload = torch.load(path, weights_only=True)
    for change, message in [
        ({"version": 99}, r"format version 99; this convkit reads versions 1, 2. Upgrade"),
        ({"epoch": "one"}, r"its 'epoch' entry should be an int >= 0 or None, not str"),
        ({"model": {"weight": [1.0]}}, r"its 'model' entry should be a dict of tensors"),
    ]:
        edited = {**payload, **change}
        edited["digest"] = checkpoints.digest(edited)
        torch.save(edited, path)
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path)
    edited = dict(payload)
    del edited["history"]
    torch.save(edited, path)
    with pytest.raises(
        ValueError, match=r"not a convkit checkpoint: its 'history' entry is missing"
    ):
        load_checkpoint(path)


def test_version_1_files_still_load(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model, epoch=3)
    payload = torch.load(path, weights_only=True)
    for key in ("stopped", "clean_checkpoint", "digest"):
        del payload[key]
    torch.save({**payload, "version": 1, "callbacks": []}, path)
    other = nn.Linear(2, 2)
    with pytest.warns(UserWarning, match=r"format-version-1 checkpoint .*loaded unverified"):
        assert load_checkpoint(path, other)["epoch"] == 3
    assert torch.equal(other.weight, model.weight)


def test_old_torch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c.pt", tiny_cnn())
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    for load in (lambda: load_checkpoint(path), lambda: load_model(path)):
        with pytest.raises(RuntimeError, match=r"torch 2.5.1\+cpu: .*CVE-2025-32434.*torch>=2.6"):
            load()
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert load_checkpoint(path)["format"] == "convkit-checkpoint"


# ---- files: names, temporaries, permissions, durability


def test_stale_temp_file_of_a_killed_save_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    mine = temp_path(target)  # what a kill -9 mid-write leaves: the name of a dead process
    mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{killed.pid}-")).write_bytes(b"half")
    save_checkpoint(target, nn.Linear(2, 2))
    save_checkpoint(target, nn.Linear(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.mark.parametrize("length", [250, 255])  # 255: the longest name most file systems allow
def test_long_file_names_work(tmp_path: Path, length: int) -> None:
    target = tmp_path / ("a" * (length - 3) + ".pt")
    save_checkpoint(target, nn.Linear(2, 2), epoch=1)
    assert load_checkpoint(target)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_permissions_follow_the_umask_like_torch_save(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2))
        torch.save({}, tmp_path / "t.pt")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "c.pt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "t.pt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.skipif(os.name != "posix", reason="directory fsync is POSIX")
def test_the_directory_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:  # type: ignore[no-untyped-def]
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2))
    assert events == ["fsync file", "replace", "fsync dir"]


# ---- load_model builds on the meta device first


def test_load_model_refuses_an_architecture_that_disagrees_with_the_weights_cheaply(
    tmp_path: Path,
) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny_cnn())
    load_model(path)  # torch's one-time set-up of the meta device is not what is measured
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["hidden"] = [400000]  # 313M parameters, 1.25 GB if built for real
    payload["digest"] = checkpoints.digest(payload)  # a consistent, deliberately edited file
    torch.save(payload, path)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(
        ValueError,
        match=r"m.pt is not a consistent convkit checkpoint: its model_config builds "
        r"'head.linear1.weight' as \(400000, 784\), but the stored weights have \(16, 784\)",
    ):
        load_model(path)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024


def test_load_model_refuses_arguments_build_cnn_does_not_take(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny_cnn())
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["channel"] = [4]
    payload["digest"] = checkpoints.digest(payload)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"its model_config is not valid build_cnn arguments"):
        load_model(path)


# ---- resume_from checks everything before changing anything


def _run_to(tmp_path: Path, small_data, epochs: int) -> Path:  # type: ignore[no-untyped-def]
    fit(
        tiny_cnn(),
        small_data,
        epochs=epochs,
        batch_size=100,
        seed=0,
        progress=False,
        device="cpu",
        callbacks=[ModelCheckpoint(tmp_path / "ep{epoch}.pt")],
    )
    return tmp_path / f"ep{epochs}.pt"


def _rng_states() -> list[object]:
    return [random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()]  # noqa: NPY002


@pytest.mark.parametrize("seed", [None, 7])
def test_resume_into_another_model_changes_nothing(
    tmp_path: Path, small_data, seed: int | None
) -> None:
    path = _run_to(tmp_path, small_data, 1)
    torch.manual_seed(1)
    other = build_cnn((1, 28, 28), 10, channels=(4,), hidden=(32,))
    before, rngs = _snapshot(other), _rng_states()
    with pytest.raises(ValueError, match=r"ep1.pt doesn't fit the model: 'head.linear1.weight'"):
        fit(other, small_data, epochs=2, progress=False, device="cpu", resume_from=path, seed=seed)
    assert _unchanged(before, other) and _rng_states() == rngs


def test_resume_past_the_requested_epochs_is_refused(tmp_path: Path, small_data) -> None:
    path = _run_to(tmp_path, small_data, 3)
    model = tiny_cnn(seed=1)
    before = _snapshot(model)
    with pytest.raises(
        ValueError,
        match=r"`epochs`: .*ep3.pt is at epoch 3, past epochs=2. Pass "
        r"epochs > 3 to train further",
    ):
        fit(model, small_data, epochs=2, progress=False, device="cpu", resume_from=path)
    assert _unchanged(before, model)
    history = fit(model, small_data, epochs=3, progress=False, device="cpu", resume_from=path)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]  # restored, nothing more to train


def test_resume_from_an_interrupted_file_is_refused_naming_the_clean_one(
    tmp_path: Path, small_data
) -> None:
    model = tiny_cnn()
    clean = save_checkpoint(tmp_path / "ep2.pt", model, epoch=2)
    cut = save_checkpoint(
        tmp_path / "ep2.interrupted.pt", model, epoch=2, interrupted=True, clean_checkpoint=clean
    )
    other = tiny_cnn(seed=1)
    before = _snapshot(other)
    with pytest.raises(
        ValueError,
        match=rf"`resume_from`: .*ep2.interrupted.pt was written when "
        rf"Ctrl-C cut epoch 3 short.*Resume from the run's last end-of-epoch "
        rf"checkpoint, {clean}",
    ):
        fit(other, small_data, epochs=4, progress=False, device="cpu", resume_from=cut)
    assert _unchanged(before, other)
    alone = save_checkpoint(tmp_path / "alone.pt", model, epoch=0, interrupted=True)
    with pytest.raises(ValueError, match=r"No end-of-epoch checkpoint was written before it"):
        fit(other, small_data, epochs=4, progress=False, device="cpu", resume_from=alone)
