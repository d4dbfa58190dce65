"""benchmarks/bench_training.py: public API only, alternating order, FLOPs, exit status."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_training as bench  # noqa: E402

#: The documented modules; everything else in the package is internal.
PUBLIC_MODULES = {
    "convkit",
    "convkit.checkpoints",
    "convkit.datasets",
    "convkit.shapes",
    "convkit.viz",
}


def private_convkit_imports(path: Path) -> list[str]:
    """Imports of convkit modules that are not documented as public."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n.startswith("convkit") and n not in PUBLIC_MODULES]
    return found


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_only_public_convkit_api(path: Path) -> None:
    assert private_convkit_imports(path) == []


def test_private_import_check_sees_private_modules(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("from convkit.train.data import make_batches\nimport convkit.utils.probe\n")
    assert private_convkit_imports(script) == ["convkit.train.data", "convkit.utils.probe"]


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


@pytest.mark.slow
def test_quick_run_end_to_end_on_a_small_sample(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The whole script (every comparison, the tables, the exit status) on 256 training and
    # 128 test images of the bundled sample, so that it takes seconds.
    from torch.utils.data import TensorDataset

    from convkit import mnist_sample

    def small_sample(train: bool = True) -> TensorDataset:
        x, y = mnist_sample(train=train).tensors
        n = 256 if train else 128
        return TensorDataset(x[:n], y[:n])

    monkeypatch.setattr(bench, "mnist_sample", small_sample)
    status = bench.main(["--quick", "--out-dir", str(tmp_path), "--img-dir", "-"])
    results = json.loads((tmp_path / "results-cpu.json").read_text())
    missed = [c["target"] for c in results["targets"] if not c["met"]]
    assert status == (1 if missed else 0)
    assert [c["target"] for c in results["targets"]] == list(bench.TARGETS)
    assert results["eval"]["images"] == 128
    assert results["e2e"]["rounds"] == 2 and len(results["e2e"]["round_ratios"]["fit"]) == 2
    assert results["overhead"]["loss_abs_diff"] <= 1e-5  # fit and the hand loop agree
    assert set(results["flatten_grad"]) == {"fp32", "bf16"}
    assert "compile" not in results  # --quick skips torch.compile
    table = (tmp_path / "results-cpu.md").read_text()
    assert "| channels_last gradient at the flatten (fit epoch) |" in table
    assert "| target | limit | measured | met |" in table
