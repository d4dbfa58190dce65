"""Peak host memory that ``fit``, ``evaluate`` and ``predict`` add on top of in-memory data.

Each measurement runs in a fresh process: it builds the data (by default 50,000 random
3x32x32 float32 images, 586 MiB, the size of CIFAR-10's training set), runs the call once
on a small slice so that PyTorch's one-off allocations (kernels, thread pools) are
already in the baseline, then runs it on all the data and reports how far the peak
resident set size (``ru_maxrss``) rose above the baseline, as a share of the data's size.
``fit`` is stopped by a callback after ``--batches`` batches: whatever it copies up front
is in the peak by then. Target: under 10 % of the data, on the CPU.

    python benchmarks/bench_memory.py              # all rows, 50,000 images
    python benchmarks/bench_memory.py --n 10000    # a quicker run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

CALLS = ("fit", "evaluate", "predict")
MEMORY_FORMATS = ("auto", "contiguous")
TARGET = 0.10  # of the data's size


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(call: str, memory_format: str, n: int, batches: int) -> dict[str, float]:
    """One row, in this process (run it in a fresh one: the peak only ever grows)."""
    import torch

    from convkit import Callback, build_cnn, evaluate, fit, predict

    class StopAfter(Callback):
        def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            if state.batch + 1 >= batches:
                state.stop_training = True

    torch.manual_seed(0)
    inputs = torch.rand(n, 3, 32, 32)
    targets = torch.randint(0, 10, (n,))
    model = build_cnn((3, 32, 32), 10, channels=(8,), hidden=())

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        common = {"device": "cpu", "memory_format": memory_format}
        if call == "fit":
            fit(model, (x, y), epochs=1, progress=False, callbacks=[StopAfter()], **common)
        elif call == "evaluate":
            evaluate(model, (x, y), **common)
        else:
            predict(model, x, **common)

    run(inputs[:512], targets[:512])  # warm-up, so one-off allocations are in the baseline
    baseline = _peak_mib()
    run(inputs, targets)
    data_mib = (inputs.nbytes + targets.nbytes) / 2**20
    extra = _peak_mib() - baseline
    return {"data_mib": data_mib, "extra_mib": extra, "share": extra / data_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of 3x32x32 images")
    parser.add_argument("--batches", type=int, default=20, help="fit: batches before stopping")
    parser.add_argument("--one", nargs=2, metavar=("CALL", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.n, args.batches)))
        return
    print(f"| call | memory_format | data (MiB) | peak above data (MiB) | share | < {TARGET:.0%} |")
    print("| --- | --- | --- | --- | --- | --- |")
    failed = False
    for call in CALLS:
        for memory_format in MEMORY_FORMATS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", call, memory_format,
                   "--n", str(args.n), "--batches", str(args.batches)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            ok = row["share"] < TARGET
            failed |= not ok
            print(
                f"| {call} | {memory_format} | {row['data_mib']:.0f} | {row['extra_mib']:.0f} "
                f"| {row['share']:.1%} | {'yes' if ok else 'NO'} |",
                flush=True,
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
