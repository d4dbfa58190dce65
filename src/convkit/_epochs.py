"""``fit``'s epoch loop: callbacks, validation, the LR schedule, the History and Ctrl-C.

Ctrl-C is a flag checked between batches, so training stops on a consistent state:
the model, optimizer and scheduler all stand after the same batch, and the callbacks'
``on_train_end`` sees the last *completed* epoch.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._data import LoaderBatches, TensorBatches
from ._distributed import any_rank, sync_buffers
from ._loop import HardInterrupt, Step, run_epoch
from ._metrics import MetricSet
from ._optim import LossFn, current_lr
from ._probe import eval_mode, preserved_modes
from ._runtime import Runtime
from .callbacks import TrainState
from .history import History

logger = logging.getLogger("convkit.training")

Batches = TensorBatches | LoaderBatches


@dataclass
class Run:
    """Everything the epoch loop needs, set up by ``fit``."""

    model: nn.Module
    net: nn.Module  # what the training batches go through: the model, or its DDP/compile wrapper
    train: Batches
    val: Batches | None
    loss_fn: LossFn
    metrics: MetricSet
    runtime: Runtime
    step: Step
    state: TrainState
    scheduler: Any
    per_batch: bool
    show: bool
    distributed: bool


def _bar(run: Run, epoch: int) -> Any:
    if not run.show:
        return nullcontext(None)
    try:
        total = len(run.train)
    except TypeError:  # an IterableDataset without a length
        total = None
    epochs = run.state.epochs
    return tqdm(
        total=total, desc=f"Epoch {epoch}/{epochs}", unit="batch", leave=False, dynamic_ncols=True
    )


def _epoch(run: Run, epoch: int) -> dict[str, float]:
    """Train one epoch, validate, step the epoch scheduler; the epoch's logs."""
    history: History = run.state.history
    run.train.set_epoch(epoch)
    run.model.train()
    with _bar(run, epoch) as bar:
        logs = run_epoch(
            run.net,
            run.train,
            "train_data",
            run.loss_fn,
            run.metrics,
            run.runtime,
            step=run.step,
            bar=bar,
            all_reduce=run.distributed,
            history=history,
        )
    if run.step.interrupt.raised:
        return logs
    if run.distributed:
        sync_buffers(run.model)  # e.g. BatchNorm statistics: the same model on every rank
    if run.val is not None:
        # the model, not a DDP wrapper: evaluation needs no gradient sync
        with eval_mode(run.model), torch.inference_mode():
            val_logs = run_epoch(
                run.model,
                run.val,
                "val_data",
                run.loss_fn,
                run.metrics,
                run.runtime,
                step=None,
                all_reduce=run.distributed,
            )
        if not math.isfinite(val_logs["loss"]):
            warnings.warn(
                f"val_loss is {val_logs['loss']} at epoch {epoch}: the validation data holds "
                "NaN/inf values or the model produces them on it, so callbacks that monitor "
                "val_loss (EarlyStopping, ModelCheckpoint(save_best_only=True)) can't see an "
                "improvement. Check val_data with torch.isfinite.",
                RuntimeWarning,
                stacklevel=2,
            )
        logs.update({f"val_{k}": v for k, v in val_logs.items()})
    sched = run.scheduler
    if sched is not None and not run.per_batch:
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(logs["val_loss" if run.val is not None else "loss"])
        else:
            sched.step()
    return logs


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


def _epochs(run: Run, start_epoch: int) -> None:
    state, history, callbacks = run.state, run.state.history, run.step.callbacks
    interrupt = run.step.interrupt
    for callback in callbacks:
        callback.on_train_begin(state)
    for epoch in range(start_epoch, state.epochs + 1):
        if run.distributed:  # a stop asked for on any rank stops every rank
            state.stop_training = any_rank(state.stop_training, run.runtime.device)
        if state.stop_training:  # set by a callback, or by a resumed run that had stopped
            break
        state.epoch = run.step.epoch = epoch
        for callback in callbacks:
            callback.on_epoch_begin(state)
        start = time.perf_counter()
        lr = current_lr(run.step.optimizer)
        logs = _epoch(run, epoch)
        if interrupt.raised:  # mid-epoch: the epoch is not recorded
            raise KeyboardInterrupt
        seconds = time.perf_counter() - start
        history.append(epoch, logs, seconds, lr=lr)
        state.logs = dict(logs)
        logger.info("epoch %d/%d: %s (%.1fs)", epoch, state.epochs, _format_logs(logs), seconds)
        if run.show:
            tqdm.write(f"Epoch {epoch}/{state.epochs} - {_format_logs(logs)} - {seconds:.1f}s")
        for callback in callbacks:
            callback.on_epoch_end(state)
        if interrupt.raised:
            raise KeyboardInterrupt


def train(run: Run, start_epoch: int) -> None:
    """Run epochs ``start_epoch..state.epochs``; modes restored, callbacks told the end.

    ``on_train_end`` runs after a normal end and after a graceful Ctrl-C (the first
    one), not when an error (or a second Ctrl-C) propagates.
    """
    state, history = run.state, run.state.history
    with run.step.interrupt:
        try:
            with preserved_modes(run.model):
                _epochs(run, start_epoch)
        except HardInterrupt:
            raise
        except KeyboardInterrupt:
            # Ctrl-C: stop at this batch, keep everything learned, and return normally.
            history.interrupted = state.interrupted = True
            state.epoch = history.epochs[-1]["epoch"] if history.epochs else start_epoch - 1
            logger.info("fit interrupted by the user during epoch %d", state.epoch + 1)
            if run.show:
                tqdm.write(
                    f"Interrupted during epoch {state.epoch + 1}; returning the History so far."
                )
        for callback in run.step.callbacks:
            callback.on_train_end(state)
