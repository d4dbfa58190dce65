"""Two Gloo processes on loopback, launched with torchrun, against one process; and what
a process does when ``WORLD_SIZE`` asks for others that never come."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from convkit import build_cnn, fit, setup_distributed
from convkit.train import distributed as _distributed

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")


def launch(out: Path, mode: str, nproc: int, timeout: float = 240) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # Gloo on the CPU, even on a GPU machine
    }
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "ddp_worker.py"), str(out), mode]
    else:
        worker = str(HERE / "ddp_worker.py")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", worker, str(out), mode]  # fmt: skip
    out.mkdir(exist_ok=True)
    # A session of its own, so that a hang can be ended with everything it started.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: torchrun then ends its workers, which run in sessions of their own
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        pytest.fail(f"{mode} with {nproc} process(es) hung for {timeout}s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]


def _results(out: Path, rank: int) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    weights = torch.load(out / f"rank{rank}.pt", weights_only=True)
    history = json.loads((out / f"rank{rank}.json").read_text())
    ckpt = json.loads((out / f"rank{rank}.ckpt.json").read_text())
    return weights, history, ckpt


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tensor", "loader"])
def test_two_gloo_processes_agree_and_match_one_process(tmp_path: Path, mode: str) -> None:
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    launch(tmp_path / "ddp", mode, nproc=2)
    launch(tmp_path / "single", mode, nproc=1)

    w0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key  # DDP keeps the replicas identical
    h0 = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    h1 = json.loads((tmp_path / "ddp" / "rank1.json").read_text())
    assert h0["history"] == h1["history"]  # all-reduced: every rank reports the same means
    for rank in (0, 1):  # rank 0 wrote the checkpoint; every rank loads it
        ckpt = json.loads((tmp_path / "ddp" / f"rank{rank}.ckpt.json").read_text())
        assert (ckpt["epoch"], ckpt["same_weights"]) == (3, True)

    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    # Same global batch (2 x 32 vs 64) and learning rate, but a different sample order
    # (DistributedSampler's), so the runs are not identical. Stated tolerance: every
    # epoch's train and validation loss within 3% (relative), final accuracies within
    # 0.05 (absolute; accuracy still jumps between epochs this early in training).
    ddp, one = h0["history"], single["history"]
    for key in ("loss", "val_loss"):
        assert ddp[key] == pytest.approx(one[key], rel=0.03), key
    for key in ("accuracy", "val_accuracy"):
        assert ddp[key][-1] == pytest.approx(one[key][-1], abs=0.05), key
    assert h0["history"]["loss"][-1] < h0["history"]["loss"][0]


@pytest.mark.slow
def test_the_example_runs_under_torchrun() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE.parent / "examples" / "mnist_cnn.py"), "--epochs", "1"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy:") == 1  # rank 0 reports
    assert result.stdout.count("Epoch 1/1 - ") == 1  # and only rank 0 shows progress


@pytest.mark.slow
def test_the_group_fit_created_is_destroyed_when_the_script_ends(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*launcher, "--nproc_per_node=2", str(HERE / "ddp_exit_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert reports == ["initialized=False"] * 2


@pytest.mark.slow
def test_batchnorm_statistics_are_the_same_on_every_rank(tmp_path: Path) -> None:
    launch(tmp_path, "batchnorm", nproc=2)
    (w0, h0, c0), (w1, h1, c1) = _results(tmp_path, 0), _results(tmp_path, 1)
    assert h0["history"] == h1["history"]
    assert any("running_mean" in key for key in w0)
    for key in w0:  # parameters *and* buffers (running_mean/var, num_batches_tracked)
        assert torch.equal(w0[key], w1[key]), key
    for ckpt in (c0, c1):
        assert (ckpt["epoch"], ckpt["same_weights"]) == (3, True)  # rank 0 saved this model
        # val_loss (all-reduced over the two shards) is the loss of the model every rank
        # holds, evaluated by itself on all of the validation data
        assert ckpt["local"]["loss"] == pytest.approx(h0["history"]["val_loss"][-1], rel=1e-5)
        assert ckpt["local"]["accuracy"] == pytest.approx(h0["history"]["val_accuracy"][-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop-epoch", "stop-batch"])
def test_a_stop_on_one_rank_stops_every_rank(tmp_path: Path, mode: str) -> None:
    # Without agreement, rank 0 waits forever for rank 1 in the next epoch's
    # collectives; the subprocess timeout turns such a hang into a failure.
    launch(tmp_path, mode, nproc=2, timeout=120)
    (w0, h0, c0), (w1, h1, _) = _results(tmp_path, 0), _results(tmp_path, 1)
    # a stop asked for during a batch is honoured at the end of that epoch, together
    assert len(h0["epochs"]) == len(h1["epochs"]) == 1
    assert h0["history"] == h1["history"]
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    assert c0["epoch"] == 1


@pytest.mark.slow
def test_only_rank_zero_writes_tensorboard_files(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    launch(tmp_path, "tensorboard", nproc=2)
    (_, h0, _), (_, h1, _) = _results(tmp_path, 0), _results(tmp_path, 1)
    assert h0["history"] == h1["history"]
    for run, prefix in (("train", ""), ("validation", "val_")):
        files = list((tmp_path / "tb" / run).glob("events.out.tfevents.*"))
        assert len(files) == 1 and f".{h0['rank_pid']}." in files[0].name  # rank 0's
        reader = EventAccumulator(str(tmp_path / "tb" / run)).Reload()
        logged = [(e.step, e.value) for e in reader.Scalars("epoch_loss")]
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx(h0["history"][prefix + "loss"], rel=1e-6)
    steps = EventAccumulator(str(tmp_path / "tb" / "steps")).Reload().Scalars("batch_loss")
    assert [e.step for e in steps] == list(range(1, 3 * 16 + 1))  # 512 samples a rank / 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lone_rank(monkeypatch: pytest.MonkeyPatch) -> int:
    """This process as rank 0 of 2, with nobody else coming."""
    port = _free_port()
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # Gloo
    return port


def test_a_lone_process_says_what_it_waits_for_and_times_out(
    lone_rank: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_distributed, "_WAIT_NOTICE_S", 0.05)
    caplog.set_level(logging.INFO, logger="convkit.train.distributed")
    start = time.monotonic()
    with pytest.raises(
        TimeoutError,
        match=rf"Rank 0 of 2 waited 0.3s for the other 1 process\(es\) at 127.0.0.1:{lone_rank} "
        r"\(WORLD_SIZE=2 in the environment\).*torchrun --nproc_per_node=2.*unset WORLD_SIZE"
        r".*setup_distributed\(timeout=",
    ):
        setup_distributed(timeout=0.3)
    assert time.monotonic() - start < 10
    assert not dist.is_initialized()
    waiting = "rank 0 of 2 (WORLD_SIZE=2 in the environment) waits up to 0.3s for the other 1 "
    waiting += f"process(es) at 127.0.0.1:{lone_rank}"
    levels = {r.levelname for r in caplog.records if r.getMessage().startswith(waiting)}
    assert levels == {"INFO", "WARNING"}  # said at once, and again as the wait went on


def test_world_size_without_torchrun_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, small_data
) -> None:
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"WORLD_SIZE=2 in the environment asks for 2 processes, but RANK, MASTER_ADDR, "
        r"MASTER_PORT are not set.*torchrun --nproc_per_node=2.*unset WORLD_SIZE",
    ):
        fit(model, small_data, epochs=1, device="cpu", progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     ("30", TypeError), (True, TypeError), (None, TypeError)],
)  # fmt: skip
def test_timeout_is_checked(timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"`timeout`.*Received timeout={timeout!r}"):
        setup_distributed(timeout=timeout)  # type: ignore[arg-type]


def _launch_stop_worker(out: Path, mode: str) -> list[dict]:  # type: ignore[type-arg]
    """Both ranks of ``ddp_stop_worker.py``; a hang fails the test after 120 s."""
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    out.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "ddp_stop_worker.py"), str(out), mode,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        pytest.fail(f"{mode}: the ranks hung for 120 s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_ranks_with_different_data_are_refused_on_every_rank_instead_of_hanging(
    tmp_path: Path,
) -> None:
    reports = _launch_stop_worker(tmp_path, "uneven")
    for report in reports:
        assert "epochs" not in report  # refused before any training
        assert "`train_data`" in report["error"]
        assert "between 120 and 200" in report["error"]
        assert "the same data on every rank" in report["error"]


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_with_a_consistent_checkpoint(
    tmp_path: Path,
) -> None:
    reports = _launch_stop_worker(tmp_path, "sigint")
    for report in reports:  # both stopped after epoch 2, which every rank finished
        assert (report["epochs"], report["interrupted"]) == (2, True), report
        assert report["files"] == ["ep1.pt", "ep2.interrupted.pt", "ep2.pt"]
        assert report["last_epoch"] == 2  # the last clean checkpoint loads on every rank
