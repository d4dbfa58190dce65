"""benchmarks/bench_peers.py: alternation, settled/unsettled comparisons, targets, exit status,
the epoch clock on real training calls, and (slow) a whole --quick run in worker processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_peers as bench  # noqa: E402

QUICK = {w.name: w for w in bench.workloads(quick=True)}


def fake_run(first: float, steady: float, rss: float = 800.0) -> dict[str, Any]:
    """One training call's figures as a worker reports them (3 epochs)."""
    return {
        "epoch_seconds": [first, steady, steady],
        "epoch_cpu_seconds": [first, steady, steady],
        "epoch_minor_faults": [1000, 10, 10],
        "tail_seconds": 0.01,
        "peak_rss_mib": rss,
        "rss_growth_mib": rss - 700.0,
        "rss_exact": True,
        "test_accuracy": None,
    }


def fake_contenders(steady: dict[str, list[float]], rss: dict[str, float] | None = None) -> Any:
    """``summarize`` of rounds whose steady-state epochs take the given seconds."""
    runs = {
        key: [fake_run(2 * s, s, (rss or {}).get(key, 800.0)) for s in seconds]
        for key, seconds in steady.items()
    }
    return bench.summarize(runs)


def target(name: str) -> bench.Target:
    return next(t for t in bench.TARGETS if t.name == name)


def test_rounds_alternate_their_order() -> None:
    order = list(bench.alternating(["a", "b", "c"], 4))
    assert [name for _, name in order] == list("abccbaabccba")
    assert [r for r, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_measure_asks_each_worker_in_alternating_order(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []

    class FakeWorker:
        def __init__(self, key: str, w: Any, threads: Any) -> None:
            self.key = key

        def receive(self) -> dict[str, Any]:
            return {"ready": True}

        def ask(self, command: str) -> dict[str, Any]:
            asked.append((self.key, command))
            return fake_run(1.0, 0.5 if self.key == "fit" else 1.0)

        def close(self) -> None:
            asked.append((self.key, "stop"))

    monkeypatch.setattr(bench, "Worker", FakeWorker)
    result = bench.measure(QUICK["resnet20"], ["hand", "fit"], 3, None)
    runs = [key for key, command in asked if command == "run"]
    assert runs == result["order"] == ["hand", "fit", "fit", "hand", "hand", "fit"]
    assert asked[:2] == [("hand", "warm"), ("fit", "warm")]  # every warm-up before any round
    assert asked[-2:] == [("hand", "stop"), ("fit", "stop")]
    assert result["contenders"]["fit"]["ratios"] == [0.5, 0.5, 0.5]


def test_steady_state_and_first_epoch_are_apart() -> None:
    runs = {
        "hand": [fake_run(4.0, 2.0), fake_run(5.0, 2.5)],
        "fit": [
            {**fake_run(3.0, 1.0), "epoch_seconds": [3.0, 1.0, 2.0]},
            fake_run(3.0, 1.25),
        ],
    }
    fit = bench.summarize(runs)["fit"]
    assert fit["steady_epoch"] == {"min": 1.25, "median": 1.375, "max": 1.5}  # mean of 2..N
    assert fit["ratios"] == [0.75, 0.5]  # steady over the hand loop's in the same round
    assert fit["first_ratios"] == [0.75, 0.6]


@pytest.mark.parametrize(
    ("a", "b", "tolerance", "verdict"),
    [
        ([0.80, 0.85, 0.90], [0.95, 1.00, 1.05], 0.0, "faster"),
        ([0.95, 1.00, 1.05], [0.80, 0.85, 0.90], 0.0, "slower"),
        ([0.80, 0.90, 0.96], [0.95, 1.00, 1.05], 0.0, "unsettled"),  # ranges touch: overlap
        ([1.00, 1.01, 1.02], [0.95, 0.96, 0.98], 0.0, "slower"),
        ([1.00, 1.01, 1.02], [0.95, 0.96, 0.98], 0.05, "unsettled"),  # within the tolerance
    ],
)
def test_a_comparison_is_unsettled_when_the_ranges_overlap(
    a: list[float], b: list[float], tolerance: float, verdict: str
) -> None:
    assert bench.settle(a, b, tolerance) == verdict


@pytest.mark.parametrize(
    ("fit", "result"),
    [
        ([0.60, 0.62, 0.61, 0.63, 0.60], "met"),
        ([0.70, 0.82, 0.75, 0.72, 0.71], "unsettled"),  # overlaps Lightning's 0.80-0.90
        ([0.95, 0.97, 0.96, 0.99, 0.95], "missed"),
    ],
)
def test_ahead_target_is_met_missed_or_unsettled(fit: list[float], result: str) -> None:
    contenders = fake_contenders(
        {
            "hand": [1.0] * 5,
            "fit": fit,
            "lightning": [0.80, 0.85, 0.90, 0.85, 0.85],
            "keras": [0.90, 0.92, 0.91, 0.93, 0.90],
            "lightning_fast": [0.30] * 5,  # a fastest row: not a rival at defaults
        }
    )
    check = bench.check_target(target("defaults"), contenders)
    assert check["result"] == result
    assert "Lightning" in check["detail"] and "Keras" in check["detail"]
    assert "fastest" not in check["detail"]


def test_fastest_target_takes_each_peers_fastest_row() -> None:
    contenders = fake_contenders(
        {
            "hand": [1.0] * 5,
            "fit_bf16": [0.40, 0.41, 0.42, 0.40, 0.41],
            "lightning": [0.80] * 5,
            "lightning_fast": [0.45, 0.46, 0.47, 0.45, 0.46],
            "keras": [0.35, 0.36, 0.37, 0.35, 0.36],  # Keras's defaults are its fastest
        }
    )
    check = bench.check_target(target("fastest"), contenders)
    assert check["result"] == "missed"
    assert "faster than Lightning, fastest" in check["detail"]
    assert "slower than Keras 3 (torch)" in check["detail"]


@pytest.mark.parametrize(
    ("fit_contiguous", "result"),
    [
        ([0.98, 1.00, 1.02, 1.01, 0.99], "met"),  # median 1.00 <= 0.98 * 1.03
        ([1.00, 1.05, 1.06, 1.04, 1.05], "unsettled"),  # 7 % behind, ranges overlap
        ([1.10, 1.12, 1.11, 1.13, 1.10], "missed"),  # settled beyond 3 %
    ],
)
def test_within_target_checks_the_tolerance(fit_contiguous: list[float], result: str) -> None:
    contenders = fake_contenders(
        {
            "hand": [1.0] * 5,
            "fit_contiguous": fit_contiguous,
            "lightning": [0.96, 0.98, 1.00, 0.97, 0.98],
            "skorch": [1.05] * 5,
        }
    )
    assert bench.check_target(target("peers' settings"), contenders)["result"] == result


@pytest.mark.parametrize(("fit_rss", "result"), [(880.0, "met"), (881.0, "missed")])
def test_memory_target_allows_ten_percent_over_the_hand_loop(fit_rss: float, result: str) -> None:
    contenders = fake_contenders({"hand": [1.0] * 3, "fit": [0.6] * 3}, {"fit": fit_rss})
    assert bench.check_target(target("memory"), contenders)["result"] == result


def test_a_target_without_its_contenders_is_not_measured() -> None:
    contenders = fake_contenders({"hand": [1.0] * 3, "fit": [0.6] * 3})
    assert bench.check_target(target("fastest"), contenders)["result"] == "not measured"


def fake_results(fit_steady: list[float]) -> dict[str, Any]:
    contenders = fake_contenders(
        {
            "hand": [1.0] * 5,
            "fit": fit_steady,
            "fit_contiguous": [0.98] * 5,
            "fit_bf16": [0.40] * 5,
            "lightning": [0.95, 0.96, 0.97, 0.98, 0.99],
            "lightning_fast": [0.50] * 5,
        }
    )
    w = QUICK["resnet20"]
    workload = {
        "name": w.name,
        "title": w.title,
        "short": w.short,
        "epochs": 3,
        "batch_size": w.batch_size,
        "images": w.images,
        "steps_per_epoch": w.steps_per_epoch,
        "load_before": [0.2, 0.2, 0.2],
        "load_after": [0.3, 0.2, 0.2],
        "order": [],
        "contenders": contenders,
    }
    return {
        "date": "2026-12-04",
        "machine": {
            "cpu": "test CPU",
            "cores": 2,
            "torch_threads": 2,
            "os": "Linux",
            "python": "3",
        },
        "versions": {"convkit": "0", "torch": "2", "lightning": "2", "keras": None},
        "rounds": 5,
        "quick": False,
        "load_before": [0.2, 0.2, 0.2],
        "load_after": [0.3, 0.2, 0.2],
        "minutes": 1.0,
        "workloads": [workload],
    }


@pytest.mark.parametrize(
    ("fit_steady", "status", "result"),
    [
        ([0.60, 0.61, 0.62, 0.60, 0.61], 0, "met"),
        ([0.90, 0.96, 0.97, 0.95, 0.96], 0, "unsettled"),  # not a loss: exit 0
        ([1.05, 1.06, 1.07, 1.05, 1.06], 1, "missed"),
    ],
)
def test_exit_status_is_1_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fit_steady: list[float],
    status: int,
    result: str,
) -> None:
    monkeypatch.setattr(bench, "run_all", lambda args: fake_results(fit_steady))
    assert bench.main(["--out-dir", str(tmp_path), "--img-dir", "-"]) == status
    saved = json.loads((tmp_path / "peers-cpu.json").read_text())
    assert saved["targets"][0]["target"] == "defaults"
    assert saved["targets"][0]["result"] == result
    table = (tmp_path / "peers-cpu.md").read_text()
    assert f"| `fit` at its defaults: the fastest contender at their defaults | **{result}** |" in (
        table
    )
    assert "Not installed, so not measured: keras." in table


def test_render_redraws_from_the_json_and_rechecks_the_targets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = fake_results([1.05, 1.06, 1.07, 1.05, 1.06])
    (tmp_path / "peers-cpu.json").write_text(json.dumps(results))
    monkeypatch.setattr(bench, "run_all", lambda args: pytest.fail("--render measured"))
    assert bench.main(["--render", "--out-dir", str(tmp_path), "--img-dir", str(tmp_path)]) == 1
    assert (tmp_path / "benchmark-peers-cpu.png").stat().st_size > 10_000
    assert "![steady-state epoch" in (tmp_path / "peers-cpu.md").read_text()


@pytest.mark.parametrize("option", ["--rounds", "--epochs"])
def test_fewer_than_two_rounds_or_epochs_are_refused(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.main([option, "1"])
    assert f"{option} must be at least 2" in capsys.readouterr().err


def test_an_unknown_contender_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"unknown contender\(s\) \['fitt'\]"):
        bench.contender_keys("fitt", dict.fromkeys(bench.PEERS.values()))


def test_the_first_epoch_runs_from_the_call_and_the_others_from_hook_to_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter([10.0, 13.0, 14.5, 16.0])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(readings))
    clock = bench.EpochClock()
    clock.start()
    for _ in range(3):
        clock.mark("hooks pass", "arguments", logs={})
    assert clock.epoch_seconds() == [3.0, 1.5, 1.5]


@pytest.mark.slow
@pytest.mark.parametrize("key", ["hand", "fit"])
def test_the_epoch_clock_reads_each_epoch_of_a_real_training_call(key: str) -> None:
    w = QUICK["mnist"]  # the notebook network: the cheap one
    run = bench.timed_run(bench.BY_KEY[key].make(), w, bench.load_data(w), images=256, epochs=2)
    assert len(run["epoch_seconds"]) == 2 and all(s > 0 for s in run["epoch_seconds"])
    assert run["test_accuracy"] is not None
    assert run["peak_rss_mib"] > 50 and run["rss_growth_mib"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "key", [c.key for c in bench.CONTENDERS if c.peer is not None], ids=lambda k: k
)
def test_each_peers_epoch_hook_fires_once_per_epoch(key: str) -> None:
    contender = bench.BY_KEY[key]
    pytest.importorskip(contender.peer or "")
    w = QUICK["mnist"]
    run = bench.timed_run(contender.make(), w, bench.load_data(w), images=256, epochs=2)
    assert len(run["epoch_seconds"]) == 2
    assert run["test_accuracy"] is not None and run["test_accuracy"] > 0.3  # it learned


@pytest.mark.slow
def test_quick_run_in_worker_processes(tmp_path: Path) -> None:
    argv = ["--quick", "--only", "fit", "--malloc-retain", "--out-dir", str(tmp_path)]
    status = bench.main([*argv, "--img-dir", "-"])
    results = json.loads((tmp_path / "peers-cpu.json").read_text())
    assert results["allocator"] == bench.MALLOC_RETAIN
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ  # only the workers' environment
    assert status == bench.exit_status(results["targets"])
    assert [w["name"] for w in results["workloads"]] == ["resnet20", "mnist"]
    for w in results["workloads"]:
        assert w["order"] == ["hand", "fit", "fit", "hand"]
        for r in w["contenders"].values():
            assert [len(e) for e in r["epoch_seconds"]] == [2, 2]
            assert r["peak_rss_mib"]["min"] > 50
    assert "| convkit.fit | defaults" in (tmp_path / "peers-cpu.md").read_text()
