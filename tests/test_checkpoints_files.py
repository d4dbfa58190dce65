"""convkit.checkpoints.files: writers that share a target, stale temporary files, full disks.

The multi-process tests run real writer processes (and kill -9 them) against one
target while this process reads it; they are marked slow.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from convkit import load_checkpoint, save_checkpoint
from convkit.checkpoints import files
from convkit.checkpoints.files import atomic_write, stale_temp_paths, temp_path
from helpers import run_python


def checkpoint_bytes(tmp_path: Path, value: float, size: int = 256) -> bytes:
    """The bytes of a real checkpoint whose weight is filled with ``value``."""
    model = nn.Linear(size, size)
    with torch.no_grad():
        model.weight.fill_(value)
    path = save_checkpoint(tmp_path / f"source-{value}.pt", model, epoch=int(value))
    data = path.read_bytes()
    path.unlink()
    return data


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- two writers of one target


def test_a_writer_that_dies_never_puts_its_half_file_in_place(tmp_path: Path) -> None:
    """A starts over a good file, B starts, A finishes, B dies: the target is A's file."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    target = folder / "c.pt"
    first, second = checkpoint_bytes(tmp_path, 1.0), checkpoint_bytes(tmp_path, 2.0)
    save_checkpoint(target, nn.Linear(256, 256), epoch=0)  # the last good checkpoint
    writer_a = atomic_write(target)
    file_a = writer_a.__enter__()
    file_a.write(first[: len(first) // 2])
    writer_b = atomic_write(target)  # another process saving the same path
    file_b = writer_b.__enter__()
    file_b.write(second[: len(second) // 2])
    file_a.write(first[len(first) // 2 :])
    writer_a.__exit__(None, None, None)  # A's rename: B is still half way
    file_b.flush()
    payload = load_checkpoint(target)  # one complete file: A's
    assert payload["epoch"] == 1 and torch.all(payload["model"]["weight"] == 1.0)
    # B dies before finishing (its temporary file stays); the target is still A's
    assert len([n for n in names(folder) if n.endswith(".tmp")]) == 1
    assert load_checkpoint(target)["epoch"] == 1
    # its clean-up on the way out (a Ctrl-C, say) removes only its own file
    assert writer_b.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None) is False
    assert names(folder) == ["c.pt"]


def test_every_write_gets_its_own_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    seen = {temp_path(target) for _ in range(100)}
    assert len(seen) == 100
    assert all(p.parent == tmp_path and p.name.startswith(".c.pt.") for p in seen)
    assert all(f"-{os.getpid()}-" in p.name and p.name.endswith(".tmp") for p in seen)


def test_concurrent_saves_in_threads_all_succeed(tmp_path: Path) -> None:
    """Two writers in one process (threads) also never share a temporary file."""
    import threading

    target = tmp_path / "c.pt"
    errors: list[BaseException] = []

    def save(value: float) -> None:
        model = nn.Linear(64, 64)
        with torch.no_grad():
            model.weight.fill_(value)
        try:
            for epoch in range(20):
                save_checkpoint(target, model, epoch=epoch)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=save, args=(v,)) for v in (1.0, 2.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    weight = load_checkpoint(target)["model"]["weight"]
    assert torch.all(weight == weight[0, 0]) and float(weight[0, 0]) in (1.0, 2.0)
    assert names(tmp_path) == ["c.pt"]


# ---- stale temporary files: removed only when their writer can't finish


def _owned(target: Path, pid: int, host: str = files._HOST) -> Path:
    return target.with_name(f".{target.name}.{host}-{pid}-0123abcd.tmp")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_only_stale_temporary_files_are_removed(tmp_path: Path, live_pid: int) -> None:
    target = tmp_path / "c.pt"
    dead = _owned(target, _dead_pid())
    live = _owned(target, live_pid)
    live_old = target.with_name(f".{target.name}.{files._HOST}-{live_pid}-4567cdef.tmp")
    elsewhere = _owned(target, 12345, host="ffffffff")  # another host: can't ask its pids
    elsewhere_old = _owned(target, 12346, host="ffffffff")
    other_target = _owned(tmp_path / "d.pt", _dead_pid())
    for path in (dead, live, live_old, elsewhere, elsewhere_old, other_target):
        path.write_bytes(b"half a checkpoint")
    day_ago = time.time() - files.STALE_AFTER_S - 60
    for path in (live_old, elsewhere_old):
        os.utime(path, (day_ago, day_ago))
    assert sorted(p.name for p in stale_temp_paths(target)) == sorted(
        p.name for p in (dead, live_old, elsewhere_old)
    )
    save_checkpoint(target, nn.Linear(2, 2))
    assert names(tmp_path) == sorted(["c.pt", live.name, elsewhere.name, other_target.name])


def test_stale_files_of_a_long_name_are_found(tmp_path: Path) -> None:
    target = tmp_path / ("a" * 252 + ".pt")  # 255 characters: temporary names are hashed
    stale = temp_path(target)
    assert stale.name.endswith(".convkit.tmp") and len(stale.name) < 255
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    stale.write_bytes(b"half")
    save_checkpoint(target, nn.Linear(2, 2), epoch=1)
    assert names(tmp_path) == [target.name]


# ---- a full disk or a file-size limit


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Lower this process's file-size limit to 1 MiB (SIGXFSZ ignored, so a write past it
    fails with EFBIG as on a full disk), and put both back afterwards."""
    limit = 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limits")
def test_a_full_disk_says_so_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, file_size_limit: int
) -> None:
    target = tmp_path / "c.pt"
    save_checkpoint(target, nn.Linear(10, 10), epoch=1)  # well under the limit
    message = (
        r"Couldn't write .*c.pt: the file reached the process's file-size limit \(ulimit -f\) "
        r".*after 1,048,576 bytes\. The last good checkpoint at .*c.pt is intact, and the "
        r"partial temporary file was removed\. Free some space"
    )
    with pytest.raises(OSError, match=message) as info:
        save_checkpoint(target, nn.Linear(1000, 1000), epoch=2)  # 4 MB
    assert info.value.errno == errno.EFBIG and info.value.__cause__ is None
    assert "inline_container" not in str(info.value)
    assert names(tmp_path) == ["c.pt"]
    assert load_checkpoint(target)["epoch"] == 1
    with pytest.raises(OSError, match=r"Nothing was written at .*new.pt \(no earlier checkpoint"):
        save_checkpoint(tmp_path / "new.pt", nn.Linear(1000, 1000))
    assert names(tmp_path) == ["c.pt"]


# ---- real processes: two writers, a reader, kill -9


WRITER = """
    import sys, torch
    from torch import nn
    from convkit import save_checkpoint
    path, value, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    model = nn.Linear(512, 512)  # 1 MiB of weights
    print("READY", flush=True)
    sys.stdin.readline()  # every writer starts at once
    i = 0
    while count < 0 or i < count:
        with torch.no_grad():
            model.weight.fill_(value * 10_000 + i)
        save_checkpoint(path, model, epoch=i)
        i += 1
"""


def start_writers(path: Path, values: list[int], count: int) -> list[subprocess.Popen[str]]:
    """Writer processes saving ``path`` ``count`` times each (-1: until killed), started
    together once every one has imported torch."""
    procs = [
        run_python(WRITER, str(path), str(value), str(count), stdin=subprocess.PIPE)
        for value in values
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY", proc.communicate(timeout=60)[1]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    return procs


def first_checkpoint(path: Path) -> None:
    """The good file the writers then save over: weight 0 at epoch 0, as they'd write it."""
    model = nn.Linear(512, 512)
    with torch.no_grad():
        model.weight.zero_()
    save_checkpoint(path, model, epoch=0)


def read_complete(path: Path) -> tuple[int, float]:
    """Load ``path`` and check it is one writer's complete save: (epoch, value)."""
    payload = load_checkpoint(path)
    weight = payload["model"]["weight"]
    value = float(weight[0, 0])
    assert torch.all(weight == value), "a mix of two saves"
    assert value % 10_000 == payload["epoch"]
    return payload["epoch"], value


@pytest.mark.slow
def test_two_processes_saving_one_path_with_a_reader(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    first_checkpoint(target)
    writers = start_writers(target, [1, 2], 60)
    reads = 0
    deadline = time.monotonic() + 300
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        read_complete(target)  # never empty, truncated or mixed
        reads += 1
    results = [w.communicate(timeout=60) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in results]
    assert reads > 10
    epoch, value = read_complete(target)
    assert epoch == 59 and value // 10_000 in (1, 2)
    assert names(tmp_path) == ["c.pt"]


@pytest.mark.slow
def test_random_kill_9_of_one_of_two_writers(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    first_checkpoint(target)
    rng = random.Random(0)
    writers = start_writers(target, [1, 2], -1)
    try:
        for _round in range(5):
            deadline = time.monotonic() + rng.uniform(0.2, 1.5)
            while time.monotonic() < deadline:
                read_complete(target)
            assert [w.poll() for w in writers] == [None, None], writers[0].communicate()[1]
            victim = rng.randrange(2)
            writers[victim].kill()  # kill -9, at whatever point its save is
            writers[victim].communicate(timeout=60)
            read_complete(target)
            [writers[victim]] = start_writers(target, [victim + 1], -1)
    finally:
        for writer in writers:
            writer.kill()
            writer.communicate(timeout=60)
    read_complete(target)
    save_checkpoint(target, nn.Linear(2, 2))  # every writer is dead: their files are stale
    assert names(tmp_path) == ["c.pt"]


@pytest.mark.slow
def test_two_fits_with_one_model_checkpoint_path(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    code = f"""
        import torch
        from convkit import ModelCheckpoint, build_cnn, fit, mnist_sample
        torch.manual_seed(0)
        x, y = mnist_sample().tensors
        model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        fit(model, (x[:256], y[:256]), epochs=15, batch_size=64, device="cpu", progress=False,
            callbacks=[ModelCheckpoint({str(path)!r})])
        print("DONE", flush=True)
    """
    runs = [run_python(code) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    assert [out.split() for out, _ in results] == [["DONE"], ["DONE"]]
    assert load_checkpoint(path)["epoch"] == 15
    assert names(tmp_path) == ["run.pt"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limits")
def test_a_full_disk_during_fit_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """In a fresh process limited to 300 KB per file: the first epoch's checkpoint fits,
    the grown model's does not."""
    path = tmp_path / "run.pt"
    code = f"""
        import json, resource, signal, torch
        from convkit import ModelCheckpoint, build_cnn, fit, mnist_sample, save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
        torch.manual_seed(0)
        x, y = mnist_sample().tensors
        model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())  # about 40 KB
        fit(model, (x[:128], y[:128]), epochs=1, device="cpu", progress=False,
            callbacks=[ModelCheckpoint({str(path)!r})])
        big = build_cnn((1, 28, 28), 10, channels=(4,), hidden=(128,))  # about 1.2 MB
        try:
            fit(big, (x[:128], y[:128]), epochs=1, device="cpu", progress=False,
                callbacks=[ModelCheckpoint({str(path)!r})])
        except OSError as err:
            print(json.dumps({{"type": type(err).__name__, "errno": err.errno,
                               "message": str(err)}}))
    """
    proc = run_python(code)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["type"] == "OSError" and result["errno"] == errno.EFBIG
    assert f"The last good checkpoint at {path} is intact" in result["message"]
    assert "inline_container" not in result["message"]
    assert names(tmp_path) == ["run.pt"]
    assert load_checkpoint(path)["model"]["head.output.weight"].shape == (10, 784)


@pytest.mark.slow
def test_ctrl_c_mid_save_is_a_keyboard_interrupt_and_leaves_the_last_good_file(
    tmp_path: Path,
) -> None:
    """torch.save reports any exception from a write as "unexpected pos": the Ctrl-C
    itself must come out, with the temporary file removed."""
    path = tmp_path / "big.pt"
    code = f"""
        import signal, torch
        from torch import nn
        from convkit import save_checkpoint
        signal.signal(signal.SIGINT, signal.default_int_handler)
        model = nn.Linear(4096, 4096)  # 64 MiB of weights
        save_checkpoint({str(path)!r}, model, epoch=0)
        print("FIRST", flush=True)
        try:
            for epoch in range(1, 1000):
                save_checkpoint({str(path)!r}, model, epoch=epoch)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
    """
    for _attempt in range(5):
        proc = run_python(code)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "FIRST"
        deadline, mid_write = time.monotonic() + 60, False
        while time.monotonic() < deadline and not mid_write:
            for temp in tmp_path.glob(".big.pt.*.tmp"):
                with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                    mid_write = temp.stat().st_size > 1 << 20
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert out.split() == ["KeyboardInterrupt"], err
        assert "unexpected pos" not in err
        assert names(tmp_path) == ["big.pt"]
        load_checkpoint(path)
        if mid_write:
            break
    assert mid_write, "no Ctrl-C mid-write"
