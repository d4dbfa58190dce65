"""One rank of the two-process test in ``test_distributed.py`` (run by torchrun)."""

from __future__ import annotations

import json
import os
import sys


def main(out: str, mode: str) -> None:
    import torch
    from torch.utils.data import Dataset

    from convkit import ModelCheckpoint, build_cnn, fit, load_checkpoint, mnist_sample

    x, y = mnist_sample().tensors
    x, y = x[:1024], y[:1024]

    class Plain(Dataset):  # goes through a DataLoader with a DistributedSampler
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return x[i], y[i]

    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=(), norm=None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    history = fit(
        model,
        (x, y) if mode == "tensor" else Plain(),
        epochs=3,
        batch_size=64 // world,  # the same global batch on one process or two
        val_data=(x[:300], y[:300]),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        device="auto",
        progress=False,
        seed=0,
        callbacks=[ModelCheckpoint(os.path.join(out, "last.pt"))],  # rank 0 writes
    )
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.barrier()  # rank 0 has written the checkpoint
    fresh = build_cnn((1, 28, 28), 10, channels=(8,), hidden=(), norm=None)
    payload = load_checkpoint(os.path.join(out, "last.pt"), fresh)  # on every rank
    pairs = zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    with open(os.path.join(out, f"rank{rank}.ckpt.json"), "w") as f:
        json.dump({"epoch": payload["epoch"], "same_weights": same}, f)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(history.to_dict(), f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
