"""One rank of the DDP stop tests in ``test_distributed.py`` (run by torchrun).

``python ddp_stop_worker.py OUT MODE``:
- ``uneven``: rank 0 passes 200 samples and rank 1 passes 120;
- ``sigint``: rank 0 alone gets a real SIGINT in the middle of epoch 2.
Each rank writes what ``fit`` did (``rank<N>.json``): the error it raised, or the epochs
it trained.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main(out: str, mode: str) -> None:
    import torch

    from convkit import Callback, ModelCheckpoint, build_cnn, fit, load_checkpoint

    signal.signal(signal.SIGINT, signal.default_int_handler)  # torchrun's workers ignore it
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = build_cnn((1, 8, 8), 3, channels=(4,), hidden=())
    count = 200 if mode != "uneven" or rank == 0 else 120
    generator = torch.Generator().manual_seed(rank)
    data = (torch.rand(count, 1, 8, 8, generator=generator), torch.arange(count) % 3)

    class CtrlC(Callback):
        def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            if rank == 0 and state.epoch == 2 and state.batch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    report: dict[str, object] = {"rank": rank}
    try:
        history = fit(
            model,
            data,
            epochs=5,
            batch_size=16,
            device="cpu",
            progress=False,
            seed=0,
            on_interrupt="return",
            callbacks=[CtrlC(), ModelCheckpoint(os.path.join(out, "ep{epoch}.pt"))],
        )
        report.update(epochs=len(history), interrupted=history.interrupted)
    except ValueError as err:
        report["error"] = str(err)
    if mode == "sigint":
        torch.distributed.barrier()  # rank 0 has written its files
        files = sorted(name for name in os.listdir(out) if name.endswith(".pt"))
        report["files"] = files
        last = load_checkpoint(os.path.join(out, files[-1]), model)
        report["last_epoch"] = last["epoch"]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
