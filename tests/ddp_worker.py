"""One rank of the multi-process tests in ``test_distributed.py`` (run by torchrun).

``python ddp_worker.py OUT MODE``: ``tensor``/``loader`` train the same run on one process
or two; ``batchnorm`` trains a BatchNorm model; ``stop-epoch``/``stop-batch`` set
``stop_training`` on rank 1 only; ``tensorboard`` gives every rank a TensorBoard callback.
Each rank writes its weights, History and findings to ``OUT``.
"""

from __future__ import annotations

import json
import os
import sys


def main(out: str, mode: str) -> None:
    import torch
    from torch.utils.data import Dataset

    from convkit import (
        Callback,
        ModelCheckpoint,
        TensorBoard,
        build_cnn,
        evaluate,
        fit,
        load_checkpoint,
        mnist_sample,
    )

    x, y = mnist_sample().tensors
    x, y = x[:1024], y[:1024]
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))

    class Plain(Dataset):  # goes through a DataLoader with a DistributedSampler
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return x[i], y[i]

    class StopOnRankOne(Callback):
        def on_batch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            if mode == "stop-batch" and rank == 1 and state.batch == 2:
                state.stop_training = True

        def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
            if mode == "stop-epoch" and rank == 1 and state.epoch == 1:
                state.stop_training = True

    norm = "batch" if mode == "batchnorm" else None
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=(), norm=norm)
    callbacks: list[Callback] = [ModelCheckpoint(os.path.join(out, "last.pt"))]  # rank 0 writes
    if mode.startswith("stop"):
        callbacks.append(StopOnRankOne())
    if mode == "tensorboard":  # every rank is given one; rank 0 writes
        callbacks.append(TensorBoard(os.path.join(out, "tb"), log_every_n_steps=1))
    history = fit(
        model,
        Plain() if mode == "loader" else (x, y),
        epochs=3,
        batch_size=64 // world,  # the same global batch on one process or two
        val_data=(x[:300], y[:300]),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        device="auto",
        progress=False,
        seed=0,
        callbacks=callbacks,
    )
    if world > 1:
        torch.distributed.barrier()  # rank 0 has written the checkpoint
    fresh = build_cnn((1, 28, 28), 10, channels=(8,), hidden=(), norm=norm)
    payload = load_checkpoint(os.path.join(out, "last.pt"), fresh)  # on every rank
    pairs = zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    # this rank's model, evaluated on its own, on all of the validation data
    local = evaluate(model, (x[:300], y[:300]), device="cpu", batch_size=300)
    with open(os.path.join(out, f"rank{rank}.ckpt.json"), "w") as f:
        json.dump({"epoch": payload["epoch"], "same_weights": same, "local": local}, f)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({**history.to_dict(), "rank_pid": os.getpid()}, f)
    if torch.distributed.is_initialized():
        # an orderly end: gloo's threads left running at interpreter exit can abort the
        # process ("terminate called without an active exception")
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
