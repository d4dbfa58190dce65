"""benchmarks/bench_training.py: public API only, alternating order, FLOPs, exit status."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_training as bench  # noqa: E402


def private_convkit_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "convkit" and any(p.startswith("_") for p in parts[1:]):
                found.append(name)
    return found


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_only_public_convkit_api(path: Path) -> None:
    assert private_convkit_imports(path) == []


def test_private_import_check_sees_private_modules(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("from convkit._data import make_batches\nimport convkit._probe\n")
    assert private_convkit_imports(script) == [
        "convkit._data",
        "convkit._data.make_batches",
        "convkit._probe",
    ]


def test_every_comparison_alternates_its_order() -> None:
    assert list(bench.alternating(["a", "b", "c"], 3)) == list("abccbaabc")


def test_training_flops_come_from_the_model() -> None:
    # the notebook's network counted by hand: conv1 28->24, conv2 12->8, fc1, fc2
    macs = 1 * 32 * 5 * 5 * 24 * 24 + 32 * 64 * 5 * 5 * 8 * 8 + 1024 * 200 + 200 * 10
    assert bench.training_flops_per_image() == 3 * 2 * macs


def fake_results(**values: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, ((section, key), _op, limit) in bench.TARGETS.items():
        results.setdefault(section, {})[key] = values.get(name, limit)  # on the line: met
    return results


def test_targets_are_checked_against_their_limits() -> None:
    checks = bench.check_targets(fake_results())
    assert [c["target"] for c in checks] == list(bench.TARGETS)
    assert all(c["met"] for c in checks)
    missed = bench.check_targets(
        fake_results(**{"data path, times faster": 49.0, "fit / notebook, end to end": 0.61})
    )
    assert [c["target"] for c in missed if not c["met"]] == [
        "data path, times faster",
        "fit / notebook, end to end",
    ]


@pytest.mark.parametrize(("speedup", "status"), [(50.0, 0), (49.0, 1)])
def test_exit_status_is_1_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, speedup: float, status: int
) -> None:
    results = fake_results(**{"data path, times faster": speedup})

    def measure(args: Any, device: Any) -> dict[str, Any]:
        return {**results, "targets": bench.check_targets(results)}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "write_outputs", lambda *args: None)
    monkeypatch.setattr(bench, "markdown", lambda results: "")
    assert bench.main(["--out-dir", str(tmp_path), "--img-dir", "-"]) == status
