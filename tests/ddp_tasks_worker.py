"""One rank of the two-process task-metrics test in ``test_tasks.py`` (run by torchrun)."""

from __future__ import annotations

import json
import os
import sys


def main(out: str, task: str) -> None:
    import torch

    from convkit import build_cnn, fit, mnist_sample

    x, digits = mnist_sample().tensors
    x, digits = x[:512], digits[:512]
    if task == "multiclass":
        # 301 samples: DistributedSampler gives each of 2 ranks 151, one of them a repeat
        x, y = x[:301], digits[:301]
        metrics = {m: m for m in ("accuracy", "f1", "iou")}
    elif task == "regression":
        y = torch.stack([x.mean((1, 2, 3)) * 10, x[:, 0, :14].mean((1, 2)) * 10], 1)
        metrics = {m: m for m in ("mae", "mse", "rmse")}
    else:
        groups = [[0, 2, 4, 6, 8], [5, 6, 7, 8, 9], [0, 6, 8, 9]]
        y = torch.stack([torch.isin(digits, torch.tensor(g)).float() for g in groups], 1)
        metrics = {m: m for m in ("binary_accuracy", "f1", "precision", "recall", "iou")}
        try:  # a torchmetrics Metric syncs its own state across the processes
            from torchmetrics.classification import MultilabelF1Score

            metrics["tm_f1"] = MultilabelF1Score(num_labels=3, average="macro")
        except ImportError:
            pass
    torch.manual_seed(0)
    outputs = 10 if task == "multiclass" else y.shape[1]
    model = build_cnn((1, 28, 28), outputs, channels=(4,), hidden=(), norm=None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    history = fit(
        model,
        (x, y),
        epochs=2,
        batch_size=64 // world,  # the same global batch on one process or two
        val_data=(x[:301], y[:301]),  # odd: ranks hold 151 and 150 samples
        task=task,
        metrics=metrics,
        # lr 0: the weights never move, so every epoch scores the same fixed model and
        # one process and two must report the same numbers
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        device="cpu",
        progress=False,
        seed=0,
    )
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(history.to_dict(), f)
    if torch.distributed.is_initialized():
        # an orderly end, both ranks together: a rank that tears gloo down while the other
        # still finishes its last collective, or gloo's threads left running at interpreter
        # exit, can abort the process ("terminate called without an active exception")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
