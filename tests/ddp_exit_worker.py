"""One rank of the process-group clean-up test in ``test_distributed.py`` (run by torchrun).

The script trains with ``fit``, which creates the process group, and ends without
destroying it. An exit handler registered before ``fit`` runs after the ones ``fit``
registers (they run last in, first out) and reports whether the group is still up.
"""

from __future__ import annotations

import atexit
import os
import sys


def main(out: str) -> None:
    import torch
    import torch.distributed as dist

    from convkit import build_cnn, fit, mnist_sample

    def report() -> None:
        rank = os.environ["RANK"]
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(f"initialized={dist.is_initialized()}")

    atexit.register(report)
    x, y = mnist_sample().tensors
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=(), norm=None)
    fit(model, (x[:128], y[:128]), epochs=1, batch_size=32, device="cpu", progress=False)
    assert dist.is_initialized()  # fit leaves the group up for the rest of the script


if __name__ == "__main__":
    main(sys.argv[1])
