"""What ``fit``, ``evaluate`` and ``predict`` set up before the loop runs: checked data,
the seeds, the run's state, and a resumed checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import _distributed
from ._data import Batching, LoaderBatches, Shard, TensorBatches, make_batches, split_rows
from ._data_check import DataCheck
from ._epochs import Run
from ._loop import BufferGuard, Step
from ._metrics import MetricSet
from ._optim import (
    LossFn,
    steps_per_batch,
)
from ._runtime import Runtime
from ._task_setup import TaskSetup, first_batch, loss_name
from ._validation import (
    check_bool,
    check_finite_float,
    check_optional_bool,
)
from .callbacks import Callback, TrainState, hook_order
from .checkpoints import resume
from .history import History

logger = logging.getLogger("convkit.training")

Batches = TensorBatches | LoaderBatches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    torch.manual_seed(seed)  # also seeds every CUDA device


def check_callbacks(callbacks: Any) -> list[Callback]:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if not isinstance(callbacks, Sequence) or not all(isinstance(c, Callback) for c in callbacks):
        raise TypeError(
            "Invalid type for argument `callbacks`. Expected a sequence of convkit.Callback "
            f"instances, e.g. [EarlyStopping()]. Received callbacks={callbacks!r}."
        )
    return list(callbacks)


def record_task(history: History, setup: TaskSetup) -> None:
    """What the run trained: names in the History, the objects for ``evaluate``/``predict``."""
    history.task, history.loss = setup.spec.task, loss_name(setup.loss_fn)
    history.metrics, history.setup = list(setup.metrics.names), setup


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def draw_shuffle_seed(
    seed: int | None, ctx: _distributed.DistContext | None, dev: torch.device
) -> int:
    """The seed of the shuffling generator, the same on every rank."""
    if seed is None:  # follow the global RNG, so torch.manual_seed() before fit still works
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
    if ctx is not None:
        seed = _distributed.broadcast_int(seed, dev if dev.type == "cuda" else torch.device("cpu"))
    return seed


def make_checked_batches(model: nn.Module, data: Any, spec: Batching, loss: Any = None) -> Batches:
    """``data`` batched by ``spec``, checked against the model and converted to its dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    check = DataCheck(model, spec.name, loss=loss)
    return make_batches(data, dataclasses.replace(spec, check=check, dtype=dtype))


def resume_run(path: Any, run: Run, generator: torch.Generator) -> int:
    """Restore everything a checkpoint holds into the run; the first epoch to train."""
    state = run.state
    payload = resume(path, model=run.model, optimizer=state.optimizer, scheduler=state.scheduler,
                     scaler=state.scaler, generator=generator, callbacks=state.callbacks,
                     epochs=state.epochs)  # fmt: skip
    if payload["history"] is not None:
        state.history = History.from_dict(payload["history"])
        state.history.device = str(run.runtime.device)
    state.history.interrupted = False
    state.stop_training = payload.get("stopped", False)
    if state.stop_training:
        logger.info("fit: the run in %s was stopped by a callback; no epoch to train", path)
    return int(payload["epoch"] or 0) + 1


def prepare_data(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    runtime: Runtime,
    ctx: _distributed.DistContext | None,
    *,
    seed: int | None,
    resuming: bool,
    batch_size: int,
    drop_last: bool | None,
    data_on_device: bool | None,
    loss: Any = None,
    validation_split: float | None = None,
    num_workers: int = 0,
) -> tuple[torch.Generator, Batches, Batches | None]:
    """The shuffling generator and the training and validation batches, checked."""
    dev = runtime.device
    # A resumed run's generator state comes from the checkpoint: drawing a seed from the
    # global RNG would change it before the checkpoint is checked.
    shuffle_seed = draw_shuffle_seed(0 if seed is None and resuming else seed, ctx, dev)
    generator = torch.Generator().manual_seed(shuffle_seed)
    shard: Shard | None = (ctx.rank, ctx.world_size) if ctx is not None else None
    train_spec = Batching(
        "train_data", batch_size, shuffle=True, generator=generator, device=dev,
        need_targets=True, on_device=data_on_device, memory_format=runtime.memory_format,
        shard=shard, seed=shuffle_seed, drop_last=drop_last is True, num_workers=num_workers,
    )  # fmt: skip
    # validation never shuffles; its own generator keeps the training RNG untouched
    val_spec = dataclasses.replace(
        train_spec, name="val_data", shuffle=False, generator=torch.Generator().manual_seed(0),
        seed=0, drop_last=False,
    )  # fmt: skip
    if validation_split is not None:  # the same split on every call and every rank
        train_rows, val_rows = split_rows(train_data, validation_split, seed or 0)
        train_spec = dataclasses.replace(train_spec, rows=train_rows)
        val_spec = dataclasses.replace(val_spec, rows=val_rows)
        val_data = train_data
    train = make_checked_batches(model, train_data, train_spec, loss)
    if (
        drop_last is False
        and isinstance(train, TensorBatches)
        and train.num_samples % batch_size == 1
        and has_batchnorm(model)
    ):
        raise ValueError(
            f"Invalid value for argument `drop_last`: drop_last=False keeps a last training "
            f"batch of 1 sample ({train.num_samples} samples, batch_size={batch_size}), and "
            "the model's BatchNorm layers can't train on one sample. Use drop_last=None "
            "(skips just that batch), drop_last=True, or another batch_size."
        )
    val = make_checked_batches(model, val_data, val_spec, loss) if val_data is not None else None
    if isinstance(val, LoaderBatches):
        first_batch(val)  # checked now, not after the first epoch (drawing no randomness)
    return generator, train, val


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """``fit``'s arguments that only the loop reads."""

    grad_clip: float | None
    nan_guard: bool
    drop_last: bool | None
    scheduler_interval: str | None
    progress: bool


def build_run(
    model: nn.Module,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    train_batches: Batches,
    val: Batches | None,
    loss_fn: LossFn,
    metric_list: MetricSet,
    runtime: Runtime,
    ctx: _distributed.DistContext | None,
    epochs: int,
    history: History,
    generator: torch.Generator,
    callbacks: list[Callback],
    options: LoopOptions,
) -> Run:
    log_keys = ["loss", *metric_list.names]
    log_keys += [f"val_{k}" for k in log_keys] if val is not None else []
    state = TrainState(
        model=model, optimizer=opt, epochs=epochs, history=history, log_keys=tuple(log_keys),
        is_main=ctx is None or ctx.is_main, scheduler=sched, scaler=runtime.grad_scaler(),
        generator=generator, callbacks=callbacks,
    )  # fmt: skip
    per_batch = steps_per_batch(sched, options.scheduler_interval)
    guard = options.nan_guard and any(True for _ in model.buffers())
    hooked = hook_order(callbacks)  # ModelCheckpoints last: their files hold the others' state
    step = Step(
        opt, state.scaler, options.grad_clip, sched if per_batch else None, options.nan_guard,
        state, hooked, skip_single=options.drop_last is None and has_batchnorm(model),
        buffers=BufferGuard(model) if guard else None,
    )  # fmt: skip
    return Run(model, net, train_batches, val, loss_fn, metric_list, runtime, step, state, sched,
               per_batch, options.progress and state.is_main, ctx is not None)  # fmt: skip


def check_flags(*, drop_last: Any, data_on_device: Any, **flags: Any) -> None:
    for name, flag in flags.items():
        check_bool(name, flag)
    check_optional_bool("drop_last", drop_last, "drop a last batch of one sample for BatchNorm")
    check_optional_bool("data_on_device", data_on_device, "decide by size")


def check_validation_split(validation_split: Any, val_data: Any) -> None:
    if validation_split is None:
        return
    check_finite_float("validation_split", validation_split, strict=True)
    if validation_split >= 1:
        raise ValueError(
            "Invalid value for argument `validation_split`. Expected a fraction in (0, 1), "
            f"e.g. 0.1. Received validation_split={validation_split!r}."
        )
    if val_data is not None:
        raise ValueError(
            "Invalid value for argument `validation_split`: val_data is given too. Pass "
            "either val_data or validation_split, not both."
        )


def wrap_model(
    model: nn.Module, ctx: _distributed.DistContext | None, dev: torch.device, *, compile: bool
) -> nn.Module:
    """What the training batches go through: the model, its DDP wrapper, compiled or not."""
    net: nn.Module = model
    if ctx is not None:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def announce(run: Run, start_epoch: int, *, auto: bool, task: str) -> None:
    """Log (and, with a progress bar, print) what is about to run and where."""
    dev, epochs = run.runtime.device, run.state.epochs
    picked = " (picked by device='auto')" if auto else ""
    logger.info("fit: epochs %d-%d on %s%s; %s", start_epoch, epochs, dev, picked, task)
    if run.show and auto:
        tqdm.write(f"Training on {dev} (device='auto'; pass device= to choose).")
