"""MERGED

How a loop runs on its device: numeric precision and memory format.

Both are levers measured in ``benchmarks/`` (see the Performance page for the figures).


One pass over the data: a training or an evaluation epoch.

Losses and metric totals add up on the device and are read back once per epoch; the
only other host read is the NaN guard's single flag per training batch (and the
progress bar's rate-limited running loss, only when a bar is shown).


The task, loss and metrics of a ``fit``/``evaluate`` run, set up from its first batch.

Before any training step the model runs once on the first batch in eval mode under
``no_grad`` (BatchNorm statistics and dropout untouched, every submodule's mode
restored), so that [`infer_task`][convkit.train.tasks.infer_task] can read the outputs' shape
and every metric can be tried. Peeking at a ``DataLoader`` leaves every random
generator it draws from as it was, so the epochs see the batches they would have seen.


``fit``'s epoch loop: callbacks, validation, the LR schedule, the History and Ctrl-C.

Ctrl-C is a flag checked between batches, so training stops on a consistent state:
the model, optimizer and scheduler all stand after the same batch, and the callbacks'
``on_train_end`` sees the last *completed* epoch.


What ``fit``, ``evaluate`` and ``predict`` set up before the loop runs: checked data,
the seeds, the run's state, and a resumed checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence, Sized
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.std import tqdm

from ..checkpoints import resume
from ..checkpoints.restore import data_generator
from ..utils.probe import eval_mode, preserved_modes
from ..utils.validation import (
    check_bool,
    check_finite_float,
    check_optional_bool,
)
from . import distributed as _distributed
from .callbacks import Callback, TrainState, hook_order
from .data import Batching, DataCheck, LoaderBatches, Shard, TensorBatches, make_batches, split_rows
from .distributed import any_rank, sync_buffers
from .history import History
from .metrics import MetricSet, Request, bind_metrics
from .optim import (
    LossFn,
    current_lr,
    steps_per_batch,
)
from .tasks import TaskSpec, default_loss, infer_task

# -------------------- _runtime --------------------
PRECISIONS = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_precision(precision: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32)."""
    if isinstance(precision, int) and not isinstance(precision, bool) and precision in (16, 32):
        precision = "32" if precision == 32 else "16-mixed"  # Lightning's int spellings
    if not isinstance(precision, (str, int)) or isinstance(precision, bool):
        raise TypeError(
            "Invalid type for argument `precision`. Expected '32' (float32), 'bf16' "
            "(bfloat16 autocast) or '16-mixed' (float16 autocast with loss scaling, CUDA "
            f"only). Received precision={precision!r} of type {type(precision).__name__}."
        )
    if precision not in PRECISIONS:
        raise ValueError(
            "Invalid value for argument `precision`. Expected '32' (float32), 'bf16' "
            "(bfloat16 autocast) or '16-mixed' (float16 autocast with loss scaling, CUDA "
            f"only). Received precision={precision!r}."
        )
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(
            f"Invalid value for argument `precision`: '16-mixed' needs a CUDA device (it uses "
            f"a GradScaler); the device is {device}. Use precision='bf16' on {device.type}, "
            "or '32'."
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"Invalid value for argument `precision`: {device} does not support bfloat16. "
            "Use precision='16-mixed' or '32'."
        )
    return dtype


def resolve_memory_format(
    memory_format: Any, model: nn.Module, device: torch.device
) -> torch.memory_format:
    """``"auto"``: ``channels_last`` for models with 2-D convolutions on CPU and CUDA."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            "Invalid value for argument `memory_format`. Expected 'auto', 'channels_last' or "
            f"'contiguous'. Received memory_format={memory_format!r}."
        )
    if memory_format == "channels_last":
        return torch.channels_last
    if memory_format == "contiguous":
        return torch.contiguous_format
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    use_cl = has_conv and device.type in ("cpu", "cuda")
    return torch.channels_last if use_cl else torch.contiguous_format


@dataclass
class Runtime:
    """Device, memory format and precision of one ``fit``/``evaluate``/``predict`` call."""

    device: torch.device
    memory_format: torch.memory_format
    autocast_dtype: torch.dtype | None

    @classmethod
    def create(
        cls, model: nn.Module, device: torch.device, precision: Any, memory_format: Any
    ) -> Runtime:
        return cls(
            device,
            resolve_memory_format(memory_format, model, device),
            check_precision(precision, device),
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.autocast_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def format(self, inputs: torch.Tensor) -> torch.Tensor:
        """Inputs in the run's memory format (a no-op when they already are)."""
        if inputs.dim() == 4 and self.memory_format is torch.channels_last:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def place(self, model: nn.Module, *, memory_format: bool = True) -> None:
        """Move the model to the device (in place, like ``model.to``), and to the memory
        format too unless ``memory_format=False`` (inference keeps the model's layout and
        formats only the inputs)."""
        model.to(self.device)
        if memory_format:
            model.to(memory_format=self.memory_format)


# -------------------- _loop --------------------
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
        # distributed, a stop and a Ctrl-C are agreed on by every rank at the end of the
        # epoch instead: a rank that left the epoch early would leave the others waiting
        stop = step is not None and step.state is not None and step.state.stop_training
        if step is not None and not all_reduce and (step.interrupt.raised or stop):
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


# -------------------- _task_setup --------------------
__all__ = ["TaskSetup", "first_batch", "setup_task"]


@dataclass(frozen=True)
class TaskSetup:
    """What a run trains and reports: the task, the loss it uses, its metrics."""

    spec: TaskSpec
    loss_fn: LossFn
    metrics: MetricSet
    requests: list[Request] | None  # as asked for (None: the task's defaults)
    inferred: bool  # task="auto"

    def describe(self) -> str:
        """One line for the log: ``task multiclass (10 classes), loss ..., metrics ...``."""
        how = " (inferred from the first batch)" if self.inferred else ""
        names = ", ".join(self.metrics.names) or "none"
        return f"task {self.spec.describe()}{how}, loss {loss_name(self.loss_fn)}, metrics {names}"


def loss_name(loss: Any) -> str:
    """``CrossEntropyLoss()``, ``mse_loss`` or the callable's class name."""
    if isinstance(loss, nn.Module):
        return repr(loss)
    return str(getattr(loss, "__name__", None) or type(loss).__name__)


@contextlib.contextmanager
def _rng_untouched(batches: TensorBatches | LoaderBatches) -> Iterator[None]:
    """Restore the generators a ``DataLoader`` draws its order from (and torch's global one)."""
    loader = getattr(batches, "loader", None)
    generators = [
        g
        for g in (
            getattr(loader, "generator", None),
            getattr(batches, "generator", None),
            getattr(getattr(loader, "sampler", None), "generator", None),
        )
        if isinstance(g, torch.Generator)
    ]
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
        torch.set_rng_state(global_state)


def first_batch(
    batches: TensorBatches | LoaderBatches,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The first batch the data yields (``None`` if it yields none), drawing no randomness.

    In-memory data gives its first ``batch_size`` samples in stored order.
    """
    if isinstance(batches, TensorBatches):
        if int(batches.inputs.shape[0]) == 0:
            return None
        head = batches.head()
        return head.inputs, head.targets
    with _rng_untouched(batches):
        batch = next(iter(batches), None)
    return None if batch is None else (batch.inputs, batch.targets)


def probe_outputs(model: nn.Module, inputs: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The model's float outputs on ``inputs``, changing nothing (eval mode, no_grad)."""
    with eval_mode(model), torch.no_grad(), runtime.autocast():
        outputs = model(runtime.format(inputs))
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"The model must return a tensor; on inputs of shape {tuple(inputs.shape)} it "
            f"returned {type(outputs).__name__}."
        )
    return outputs.float()


def setup_task(
    model: nn.Module,
    batches: TensorBatches | LoaderBatches,
    runtime: Runtime,
    *,
    task: str,
    loss: LossFn | None,
    requests: list[Request] | None,
    name: str,
) -> TaskSetup:
    """Infer or check the task on the first batch, pick the loss, bind the metrics.

    Raises:
        ValueError: For data that yields nothing, or anything ``infer_task`` or
            ``bind_metrics`` refuses; all before any training.
    """
    batch = first_batch(batches)
    if batch is None:
        raise ValueError(f"Invalid value for argument `{name}`: it yielded no batches.")
    inputs, targets = batch
    if targets is None:
        raise ValueError(
            f"Invalid data in `{name}`: batches hold inputs but no targets; pass "
            "(inputs, targets) pairs."
        )
    outputs = probe_outputs(model, inputs, runtime)
    try:
        spec = infer_task(task, outputs, targets, loss)
    except ValueError as err:
        given = batches.targets if isinstance(batches, TensorBatches) else None
        if given is None or given.dtype == targets.dtype:
            raise
        raise ValueError(  # the message names the converted dtype; say what was passed
            f"{err} (The targets were passed as {given.dtype}; fit converts float targets "
            f"to the model's {targets.dtype}.)"
        ) from None
    loss_fn = loss if loss is not None else default_loss(spec)
    _check_loss_runs(loss_fn, outputs, targets)
    metrics = bind_metrics(requests, spec, outputs, targets, accumulator_dtype(runtime.device))
    return TaskSetup(spec, loss_fn, metrics, requests, inferred=task == "auto")


def _check_loss_runs(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse a loss that can't score the first batch or doesn't give one number for it."""
    name = loss_name(loss_fn)
    try:
        with torch.no_grad():
            value = loss_fn(outputs, targets)
    except (TypeError, RuntimeError, ValueError, IndexError) as err:
        raise ValueError(
            f"Invalid value for argument `loss`: {name} fails on the first batch as "
            f"loss(outputs, targets) with outputs {tuple(outputs.shape)} and targets "
            f"{tuple(targets.shape)} ({type(err).__name__}: {err}). Pass a loss such as "
            "nn.CrossEntropyLoss() or a callable (outputs, targets) -> the batch mean."
        ) from err
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"Invalid value for argument `loss`: {name} returns {got} for a batch, not one "
            "number. A loss returns the batch mean: use reduction='mean' (the default) for "
            "a torch loss, or .mean() in your own."
        )


# -------------------- _epochs --------------------
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
    on_interrupt: str = "raise"


def _bar_class() -> type[tqdm[Any]]:
    """tqdm's widget in a Jupyter kernel that has ipywidgets, else the text bar.

    ``tqdm.auto`` would warn ("IProgress not found") in a kernel without ipywidgets.
    """
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget

        return widget
    return tqdm


def batches_per_epoch(batches: Batches) -> int | None:
    """How many batches an epoch has (``None``: an ``IterableDataset`` without a length)."""
    try:
        return len(batches)
    except TypeError:
        return None


def _bar(run: Run, epoch: int) -> Any:
    if not run.show:
        return nullcontext(None)
    total = batches_per_epoch(run.train)
    epochs = run.state.epochs
    return _bar_class()(
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
    if run.step.interrupt.raised and not run.distributed:  # distributed: the epoch ends
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
        if run.distributed:  # a Ctrl-C on any rank stops every rank, after this epoch
            interrupt.raised = any_rank(interrupt.raised, run.runtime.device)
        elif interrupt.raised:  # mid-epoch: the epoch is not recorded
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
            # Ctrl-C: stop at this batch and keep everything learned; the callbacks save
            # the interrupted state before the interrupt goes on to the caller.
            history.interrupted = state.interrupted = True
            state.epoch = history.epochs[-1]["epoch"] if history.epochs else start_epoch - 1
            logger.info("fit interrupted by the user during epoch %d", state.epoch + 1)
        for callback in run.step.callbacks:
            callback.on_train_end(state)
    if history.interrupted:
        _after_interrupt(run)


def _after_interrupt(run: Run) -> None:
    """Say what happened to an interrupted run, then end ``fit`` as ``on_interrupt`` says."""
    epoch = run.state.epoch + 1
    if run.on_interrupt == "return":
        if run.show:
            tqdm.write(f"Interrupted during epoch {epoch}; returning the History so far.")
        return
    # Exactly KeyboardInterrupt (a subclass would make Python exit with status 1, not 130)
    interrupt = KeyboardInterrupt(
        f"Training was interrupted (Ctrl-C) during epoch {epoch}; {run.state.epoch} epoch(s) "
        "finished and the model keeps what it learned. The exception's .history holds "
        'their History; pass fit(on_interrupt="return") to get it returned instead.'
    )
    interrupt.history = run.state.history  # type: ignore[attr-defined]
    raise interrupt


# -------------------- _setup --------------------


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


def resume_run(
    path: Any, run: Run, generator: torch.Generator, *, require_digest: bool = False
) -> int:
    """Restore everything a checkpoint holds into the run (none for ``path=None``); the
    first epoch to train."""
    if path is None:
        return 1
    state = run.state
    payload = resume(
        path,
        model=run.model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        generator=generator,
        callbacks=state.callbacks,
        epochs=state.epochs,
        require_digest=require_digest,
    )
    if payload["history"] is not None:
        state.history = History.from_dict(payload["history"])
        state.history.device = str(run.runtime.device)
    state.history.interrupted = False
    state.stop_training = payload.get("stopped", False)
    if state.stop_training:
        logger.info("fit: the run in %s was stopped by a callback; no epoch to train", path)
    return int(payload["epoch"] or 0) + 1


def _check_trains_something(
    model: nn.Module, train: Batches, batch_size: int, drop_last: bool | None
) -> None:
    """Refuse training data that would leave no batch to train on, saying why."""
    samples: int | None = None
    if isinstance(train, TensorBatches):
        samples = train.num_samples
    elif isinstance(train.loader.dataset, Sized):
        samples = len(train.loader.dataset)
    if samples == 1 and has_batchnorm(model) and drop_last is not False:
        raise ValueError(
            "Invalid value for argument `train_data`: it holds 1 sample, and the model's "
            "BatchNorm layers can't train on a batch of one sample, so fit skips that batch "
            "and nothing is left to train on. To overfit one sample, repeat it: "
            "(torch.cat([x, x]), torch.cat([y, y])); or build the model without BatchNorm "
            "(build_cnn(..., norm=None, head_norm=None))."
        )
    if isinstance(train, TensorBatches) and len(train) == 0:
        raise ValueError(
            f"Invalid value for argument `drop_last`: drop_last=True drops every incomplete "
            f"batch, and train_data's {samples} samples make no full batch of "
            f"batch_size={batch_size}. Pass drop_last=None or a batch_size of at most {samples}."
        )


def _sample_count(data: Any) -> int:
    """The number of samples of any form of ``data``; -1 where it has no length."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = data[0]
    try:
        return len(data)
    except TypeError:  # an IterableDataset
        return -1


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
    if ctx is not None:  # before any collective that a rank with other data would skip
        _distributed.check_same_length("train_data", _sample_count(train_data), dev)
        if val_data is not None:
            _distributed.check_same_length("val_data", _sample_count(val_data), dev)
    # A resumed run's generator state comes from the checkpoint: drawing a seed from the
    # global RNG would change it before the checkpoint is checked.
    shuffle_seed = draw_shuffle_seed(0 if seed is None and resuming else seed, ctx, dev)
    generator = torch.Generator().manual_seed(shuffle_seed)
    shard: Shard | None = (ctx.rank, ctx.world_size) if ctx is not None else None
    train_spec = Batching(
        "train_data",
        batch_size,
        shuffle=True,
        generator=generator,
        device=dev,
        need_targets=True,
        on_device=data_on_device,
        memory_format=runtime.memory_format,
        shard=shard,
        seed=shuffle_seed,
        drop_last=drop_last is True,
        num_workers=num_workers,
    )
    # validation never shuffles; its own generator keeps the training RNG untouched
    val_spec = dataclasses.replace(
        train_spec,
        name="val_data",
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        seed=0,
        drop_last=False,
    )
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
    _check_trains_something(model, train, batch_size, drop_last)
    val = make_checked_batches(model, val_data, val_spec, loss) if val_data is not None else None
    if isinstance(val, LoaderBatches):
        first_batch(val)  # checked now, not after the first epoch (drawing no randomness)
    if isinstance(train, LoaderBatches):  # checkpoints save the generator the order comes from
        generator = data_generator(train.loader, generator, resuming=resuming)
    return generator, train, val


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """``fit``'s arguments that only the loop reads."""

    grad_clip: float | None
    nan_guard: bool
    drop_last: bool | None
    scheduler_interval: str | None
    progress: bool
    on_interrupt: str = "raise"


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
        model=model,
        optimizer=opt,
        epochs=epochs,
        history=history,
        log_keys=tuple(log_keys),
        is_main=ctx is None or ctx.is_main,
        progress=options.progress and (ctx is None or ctx.is_main),
        steps_per_epoch=batches_per_epoch(train_batches),
        scheduler=sched,
        scaler=runtime.grad_scaler(),
        generator=generator,
        callbacks=callbacks,
    )
    per_batch = steps_per_batch(sched, options.scheduler_interval)
    guard = options.nan_guard and any(True for _ in model.buffers())
    hooked = hook_order(callbacks)  # ModelCheckpoints last: their files hold the others' state
    step = Step(
        opt,
        state.scaler,
        options.grad_clip,
        sched if per_batch else None,
        options.nan_guard,
        state,
        hooked,
        skip_single=options.drop_last is None and has_batchnorm(model),
        buffers=BufferGuard(model) if guard else None,
    )
    return Run(
        model,
        net,
        train_batches,
        val,
        loss_fn,
        metric_list,
        runtime,
        step,
        state,
        sched,
        per_batch,
        options.progress and state.is_main,
        ctx is not None,
        options.on_interrupt,
    )


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
