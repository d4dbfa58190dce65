"""torch.distributed support for ``fit``: detect a ``torchrun`` launch and set up DDP.

``torchrun --nproc_per_node=N script.py`` (or ``--nnodes``/``--rdzv-endpoint`` across
machines) starts one process per device with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
set. ``fit`` then initialises the default process group (unless the script did),
NCCL on CUDA and Gloo on the CPU, trains a ``DistributedDataParallel`` wrapper of the
model on its shard of the data, and all-reduces the epoch totals so that every rank
reports the same numbers. At the end of every epoch the ranks also agree on the
model's buffers (BatchNorm statistics) and on whether to stop.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.rendezvous import rendezvous

from .devices import launched

logger = logging.getLogger(__name__)

#: How long ``setup_distributed`` waits for the other processes by default, in seconds.
DEFAULT_JOIN_TIMEOUT_S = 300.0

#: After this many seconds of waiting, a warning says what the process waits for.
_WAIT_NOTICE_S = 10.0


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


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            "Invalid type for argument `timeout`. Expected a number of seconds. "
            f"Received timeout={timeout!r} of type {type(timeout).__name__}."
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(
            "Invalid value for argument `timeout`. Expected a positive, finite number of "
            f"seconds, e.g. {DEFAULT_JOIN_TIMEOUT_S:g}. Received timeout={timeout!r}."
        )
    return float(timeout)


def setup_distributed(*, timeout: float = DEFAULT_JOIN_TIMEOUT_S) -> DistContext | None:
    """Join the default process group of a ``torchrun`` launch, waiting at most ``timeout``.

    [`fit`][convkit.fit] calls this itself with the default timeout. Call it first to
    wait for a different time: ``fit`` then uses the group as it is. With
    ``WORLD_SIZE`` unset or 1 (or a group already initialised), nothing waits.

    While waiting for the other processes it logs what it waits for (rank, world
    size, ``MASTER_ADDR:MASTER_PORT``) at INFO level, and again as a WARNING if the
    wait passes 10 seconds: a stray ``WORLD_SIZE=2`` in a one-process shell then
    explains itself instead of hanging silently.

    Args:
        timeout: Seconds to wait for all ``WORLD_SIZE`` processes to join. The
            group's collective operations keep PyTorch's own timeout.

    Returns:
        This process's ``rank``, ``world_size`` and ``local_rank``, or ``None`` for a
        single-process run.

    Raises:
        ValueError: If ``WORLD_SIZE`` > 1 but ``RANK``, ``MASTER_ADDR`` or
            ``MASTER_PORT`` is missing (not a torchrun launch), or for a non-positive
            ``timeout``.
        TimeoutError: If the other processes don't join within ``timeout`` seconds.

    Examples:
        >>> from convkit import setup_distributed
        >>> setup_distributed(timeout=60) is None  # one process: nothing to join
        True
    """
    seconds = _check_timeout(timeout)
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
        _join(backend, seconds)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, created)


def teardown(ctx: DistContext | None) -> None:
    """Destroy the process group if ``setup`` created it (after a failed set-up)."""
    if ctx is not None and ctx.created and dist.is_initialized():
        dist.destroy_process_group()


def _join(backend: str, timeout: float) -> None:
    """Rendezvous through ``env://`` with ``timeout``, then start the process group."""
    world = int(os.environ["WORLD_SIZE"])
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} in the environment asks for {world} processes, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. Launch the "
            f"script with torchrun (torchrun --nproc_per_node={world} script.py), which sets "
            "them, or unset WORLD_SIZE to train in this one process."
        )
    rank = int(os.environ["RANK"])
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    waiting = (
        "rank %d of %d (WORLD_SIZE=%d in the environment) waits up to %gs for the other %d "
        "process(es) at %s"
    )
    args = (rank, world, world, timeout, world - 1, where)
    logger.info(waiting, *args)
    # A warning after a while: the INFO line above is hidden under default logging.
    notice = threading.Timer(
        _WAIT_NOTICE_S,
        logger.warning,
        (waiting + "; still waiting. Start them with torchrun, or unset WORLD_SIZE.", *args),
    )
    notice.daemon = True
    notice.start()
    try:
        store, rank, world = next(rendezvous("env://", timeout=datetime.timedelta(seconds=timeout)))
    except RuntimeError as err:  # DistStoreError / DistNetworkError: the wait timed out
        raise TimeoutError(
            f"Rank {rank} of {world} waited {timeout:g}s for the other {world - 1} process(es) "
            f"at {where} (WORLD_SIZE={world} in the environment) and gave up: {err}. Start "
            f"all {world} processes with torchrun (torchrun --nproc_per_node={world} "
            "script.py), unset WORLD_SIZE to train in one process, or wait longer with "
            "convkit.setup_distributed(timeout=...) before fit."
        ) from err
    finally:
        notice.cancel()
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    atexit.unregister(_destroy_at_exit)  # registered once, however often a group is made
    atexit.register(_destroy_at_exit)


def _destroy_at_exit() -> None:
    """Destroy the process group ``fit`` created, while the interpreter is still whole.

    A group left to the interpreter's teardown can abort the process ("terminate called
    without an active exception") when a backend thread still holds Python objects; a
    script that destroyed it already leaves nothing to do.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (e.g. the shuffling seed)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank; every rank gets the same answer.

    A stop asked for on one rank (a callback's ``stop_training``) must stop all of
    them: a rank that left the loop alone would leave the others waiting in their
    next collective forever.
    """
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def check_same_length(name: str, length: int, device: torch.device) -> None:
    """Refuse, on every rank alike, data whose number of samples differs between ranks.

    ``fit`` shards the data itself, so every rank must pass the same data; ranks with
    different numbers of samples would train different numbers of batches, and the rank
    with more would wait forever in its next collective. ``length`` is -1 where the
    data has no length (an ``IterableDataset``), which is not checked.
    """
    lengths = torch.tensor([length, -length], dtype=torch.int64, device=device)
    dist.all_reduce(lengths, op=dist.ReduceOp.MAX)
    longest, shortest = int(lengths[0]), -int(lengths[1])
    if shortest >= 0 and longest != shortest:
        raise ValueError(
            f"Invalid value for argument `{name}`: this rank (rank {dist.get_rank()}) has "
            f"{length} samples, and the ranks hold between {shortest} and {longest}. "
            "Pass the same data on every rank: fit gives each rank its own shard of it "
            "(DistributedSampler), so that every rank trains the same number of batches."
        )


def sync_buffers(model: nn.Module) -> None:
    """Give every rank the same buffers: floating ones averaged, others rank 0's.

    ``DistributedDataParallel`` keeps the parameters identical, but each rank's
    BatchNorm updates its running statistics from its own shard after the buffers
    were last broadcast, so without this the ranks end an epoch with different
    models: validation would average them, and rank 0 would save yet another.
    Averaging the running means and variances uses every rank's data (as timm's
    ``distribute_bn(reduce=True)``); counters such as ``num_batches_tracked`` are
    equal on every rank and are taken from rank 0.
    """
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point() or buffer.is_complex():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)
        else:
            dist.broadcast(buffer, src=0)
