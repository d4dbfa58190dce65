"""One pass over the data: a training or an evaluation epoch.

Losses and metric totals add up on the device and are read back once per epoch; the
only other host read is the NaN guard's single flag per training batch (and the
progress bar's rate-limited running loss, only when a bar is shown).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn

from ._data import LoaderBatches, TensorBatches
from ._metrics import MetricSet
from ._optim import LossFn
from ._runtime import Runtime
from .callbacks import Callback, TrainState
from .history import History

# How often a shown progress bar's running loss is refreshed; reading it is a
# host-device sync, so it is rate-limited.
POSTFIX_INTERVAL_S = 0.5


class NonFiniteLossError(FloatingPointError):
    """``fit``'s NaN guard found a NaN or infinite loss or gradient, before the step.

    Attributes:
        history: The [`History`][convkit.History] of the epochs completed before it.
        epoch: The epoch it happened in (from 1).
        batch: The batch within that epoch (from 1).

    Examples:
        >>> import torch
        >>> from convkit import NonFiniteLossError, fit
        >>> model = torch.nn.Linear(4, 2)
        >>> x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
        >>> def exploding(outputs, targets):  # a loss that turns NaN
        ...     return torch.nn.functional.cross_entropy(outputs, targets) * float("nan")
        >>> try:
        ...     fit(model, (x, y), epochs=1, loss=exploding, task="multiclass",
        ...         device="cpu", progress=False)
        ... except NonFiniteLossError as err:
        ...     print(err.epoch, err.batch, len(err.history))
        1 1 0
    """

    def __init__(self, message: str, *, history: History, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.history, self.epoch, self.batch = history, epoch, batch


class HardInterrupt(KeyboardInterrupt):
    """A second Ctrl-C: stop now, without the graceful end of training."""


class SigintFlag:
    """Turn the first Ctrl-C into a flag that the loop checks at batch boundaries.

    Installed only on the main thread (the only one Python delivers signals to); the
    previous handler is restored on exit. A second Ctrl-C raises ``HardInterrupt`` (a
    ``KeyboardInterrupt``) at once.
    """

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.raised:
            raise HardInterrupt
        self.raised = True

    def __enter__(self) -> SigintFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


class BufferGuard:
    """A copy of the model's buffers taken before each training batch, to put back when
    the NaN guard trips (BatchNorm running statistics are updated by the forward pass,
    before the loss can be checked)."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for b in model.buffers() if b is not None]
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        with torch.no_grad():
            for saved, buffer in zip(self.saved, self.buffers, strict=True):
                saved.copy_(buffer)

    def restore(self) -> None:
        with torch.no_grad():
            for saved, buffer in zip(self.saved, self.buffers, strict=True):
                buffer.copy_(saved)


@dataclass
class Step:
    """How a training batch updates the model (``None`` in ``run_epoch``: evaluation)."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    batch_scheduler: Any = None
    nan_guard: bool = True
    state: TrainState | None = None
    callbacks: Sequence[Callback] = ()
    epoch: int = 0
    skip_single: bool = False
    buffers: BufferGuard | None = None
    interrupt: SigintFlag = field(default_factory=SigintFlag)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _grad_norm(model: nn.Module) -> torch.Tensor | None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def _update(model: nn.Module, loss: torch.Tensor, step: Step, batch: int, history: History) -> None:
    """Backward, NaN guard (one flag read), clip and optimizer step for one batch."""
    opt = step.optimizer
    opt.zero_grad(set_to_none=True)
    scaled = loss if step.scaler is None else step.scaler.scale(loss)
    torch.autograd.backward(scaled)
    if step.scaler is not None and step.grad_clip is not None:
        step.scaler.unscale_(opt)
    norm: torch.Tensor | None = None
    if step.grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
    if step.nan_guard:
        finite = torch.isfinite(loss.detach())
        if step.scaler is None:  # the scaler skips steps with inf/NaN gradients itself
            norm = norm if norm is not None else _grad_norm(model)
            if norm is not None:
                finite = finite & torch.isfinite(norm)
        if not bool(finite):
            _trip(model, loss, step, batch, history)
    if step.scaler is None:
        opt.step()
    else:
        step.scaler.step(opt)
        step.scaler.update()
    if step.batch_scheduler is not None:
        step.batch_scheduler.step()


def _trip(model: nn.Module, loss: torch.Tensor, step: Step, batch: int, history: History) -> None:
    step.optimizer.zero_grad(set_to_none=True)
    if step.buffers is not None:
        step.buffers.restore()
    value = loss.item()
    what = "A gradient is not finite" if math.isfinite(value) else f"The loss is {value}"
    kept = "parameters"
    if step.buffers is not None and step.buffers.buffers:
        kept += " and buffers (BatchNorm running statistics)"
    if batch > 1:
        when = f"after batch {batch - 1} of this epoch"
    else:
        when = f"at the end of epoch {step.epoch - 1}" if step.epoch > 1 else "before training"
    raise NonFiniteLossError(
        f"{what} at epoch {step.epoch}, batch {batch}: training stopped before the optimizer "
        f"stepped on it, so the model's {kept} are as they were {when}. Lower the learning "
        "rate, clip gradients (grad_clip=1.0) or check the data for NaN/inf; the History of "
        "the completed epochs is in this error's `history`.",
        history=history,
        epoch=step.epoch,
        batch=batch,
    )


def run_epoch(
    model: nn.Module,
    batches: TensorBatches | LoaderBatches,
    name: str,
    loss_fn: LossFn,
    metrics: MetricSet,
    runtime: Runtime,
    *,
    step: Step | None,
    bar: Any = None,
    all_reduce: bool = False,
    history: History | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: a training epoch if ``step`` is given."""
    device, dtype = runtime.device, accumulator_dtype(runtime.device)
    # Two accumulators, each updated by a single in-place kernel per batch (a small
    # model on a GPU is bound by kernel launches, so every launch counts): the loss
    # total, and every metric's statistics in one flat vector.
    loss_sum = torch.zeros((), dtype=dtype, device=device)
    # A loss with an ignore_index averages over the targets it doesn't ignore, so its
    # batch means are weighted by that count; every other loss by the batch size.
    ignore_index: int | None = getattr(loss_fn, "ignore_index", None)
    counted = torch.zeros((), dtype=dtype, device=device) if ignore_index is not None else None
    stats = torch.zeros(metrics.size, dtype=dtype, device=device)
    metrics.reset(device)
    count = 0
    last_refresh = time.perf_counter()
    for index, batch in enumerate(_batches(batches, name)):
        inputs, targets = runtime.format(batch[0]), batch[1]
        n = inputs.shape[0]
        if step is not None and step.skip_single and n == 1:
            continue  # BatchNorm can't train on one sample; see fit's drop_last
        if step is not None and step.buffers is not None:
            step.buffers.save()
        with runtime.autocast():
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
        if step is not None:
            _update(model, loss, step, index + 1, history or History())
            if step.callbacks and step.state is not None:
                step.state.batch, step.state.logs = index, {"loss": loss.detach()}
                for callback in step.callbacks:
                    callback.on_batch_end(step.state)
        with torch.no_grad():
            if counted is not None and ignore_index is not None and not targets.is_floating_point():
                valid = torch.ne(targets, ignore_index).sum()
                loss_sum.add_(loss.detach() * valid)
                counted.add_(valid)
            else:
                loss_sum.add_(loss.detach(), alpha=n)
                if counted is not None:
                    counted.add_(n)
            batch_stats = metrics.batch_totals(outputs.detach().float(), targets, dtype)
            if metrics.size:
                stats.add_(batch_stats)
        count += n
        if bar is not None:
            bar.update(1)
            now = time.perf_counter()
            if now - last_refresh >= POSTFIX_INTERVAL_S:
                last_refresh = now
                weight = counted.item() if counted is not None else count
                running = loss_sum.item() / weight if weight else float("nan")
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        # distributed, a stop is agreed on by every rank at the end of the epoch instead
        stop = step is not None and step.state is not None and step.state.stop_training
        if step is not None and (step.interrupt.raised or (stop and not all_reduce)):
            break
    return _reduce(loss_sum, counted, stats, count, metrics, name, all_reduce)


def _batches(
    batches: TensorBatches | LoaderBatches, name: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        if batch.targets is None:
            raise ValueError(
                f"Invalid data in `{name}`: batches hold inputs but no targets; pass "
                "(inputs, targets) pairs."
            )
        yield batch.inputs, batch.targets


def _reduce(
    loss_sum: torch.Tensor,
    counted: torch.Tensor | None,
    stats: torch.Tensor,
    count: int,
    metrics: MetricSet,
    name: str,
    all_reduce: bool,
) -> dict[str, float]:
    """One all-reduce and one host read of ``[loss total, loss weight, samples, *stats]``."""
    samples = loss_sum.new_tensor([float(count)])
    weight = counted.reshape(1) if counted is not None else samples
    totals = torch.cat([loss_sum.reshape(1), weight, samples, stats])
    if all_reduce:
        import torch.distributed as dist

        dist.all_reduce(totals)
    values = totals.tolist()  # the one host sync of the epoch
    if values[2] == 0:
        raise ValueError(f"Invalid value for argument `{name}`: it yielded no batches.")
    # every target ignored: no loss to average (cross-entropy itself gives NaN then)
    loss = values[0] / values[1] if values[1] else float("nan")
    return {"loss": loss, **metrics.compute(values[3:])}
