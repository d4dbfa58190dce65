"""torch.distributed support for ``fit``: detect a ``torchrun`` launch and set up DDP.

``torchrun --nproc_per_node=N script.py`` (or ``--nnodes``/``--rdzv-endpoint`` across
machines) starts one process per device with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
set. ``fit`` then initialises the default process group (unless the script did),
NCCL on CUDA and Gloo on the CPU, trains a ``DistributedDataParallel`` wrapper of the
model on its shard of the data, and all-reduces the epoch totals so that every rank
reports the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """One process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    created: bool = False  # whether fit initialised the process group (and so owns it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process is one of several (torchrun's variables, or a live group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> DistContext | None:
    """Join (or start) the default process group if this is a multi-process launch."""
    if not launched():
        return None
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 asks for distributed training, but this build of PyTorch has no "
            "torch.distributed support."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, created)


def teardown(ctx: DistContext | None) -> None:
    """Destroy the process group if ``setup`` created it (after a failed set-up)."""
    if ctx is not None and ctx.created and dist.is_initialized():
        dist.destroy_process_group()


def auto_device() -> torch.device:
    """The device ``device="auto"`` means on this rank of a launch: its GPU, or the CPU."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (e.g. the shuffling seed)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())
