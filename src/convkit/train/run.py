"""One training run, from its checked arguments to its last epoch: what ``fit`` runs.

A ``Run`` (``convkit.train.run``) owns everything a ``fit`` call trains with: the checked
arguments ([`Options`][convkit.train.run.Options]), the batches, the task with its loss
and metrics, the model with its optimizer, scheduler and DDP/compile wrapper, and the
History. It is read top to bottom after fastai's ``Learner``: ``Run.__init__`` sets up
(every check before any work), ``Run.fit`` runs the epochs, and each epoch goes
``one_epoch -> all_batches -> one_batch -> step``.

Losses and metrics are exact means over the samples of an epoch: a
[`Tally`][convkit.train.run.Tally] adds each batch's loss sum and count (as the task
defines them) and its metric statistics on the device and reads them back once per
epoch. The only other host read is the NaN guard's single flag per training batch (and
the progress bar's rate-limited running loss, only when a bar is shown).

Ctrl-C is a flag checked between batches, so training stops on a consistent state: the
model, optimizer and scheduler all stand after the same batch, and the callbacks'
``on_train_end`` sees the last *completed* epoch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence, Sized
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, cast

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
    check_choice,
    check_finite_float,
    check_optional_bool,
    check_positive_int,
    check_seed,
)
from . import distributed
from .callbacks import Callback, TrainState, hook_order
from .data import Batching, LoaderBatches, TensorBatches, make_batches, split_rows
from .devices import Runtime, launched
from .history import History
from .tasks import (
    LossFn,
    MetricSet,
    bind_metrics,
    check_loss,
    check_task,
    infer_task,
    loss_name,
    parse_metrics,
)

logger = logging.getLogger("convkit.training")

Batches = TensorBatches | LoaderBatches

#: ``optimizer=``: a name, an ``Optimizer`` class, a callable ``params -> optimizer``,
#: or an optimizer built on the model's parameters.
OptimizerSpec = (
    str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer
)

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, **kw),
}

#: Schedulers whose schedule counts optimizer steps: stepped after every batch unless
#: ``scheduler_interval="epoch"`` says otherwise.
STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)

SCHEDULER_INTERVALS = ("epoch", "step")

# How often a shown progress bar's running loss is refreshed; reading it is a
# host-device sync, so it is rate-limited.
POSTFIX_INTERVAL_S = 0.5


# ------------------------------------------------------------------ errors and interrupts


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
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        with torch.no_grad():
            for saved, buffer in zip(self.saved, self.buffers, strict=True):
                saved.copy_(buffer)

    def restore(self) -> None:
        with torch.no_grad():
            for saved, buffer in zip(self.saved, self.buffers, strict=True):
                buffer.copy_(saved)


# ------------------------------------------------------------------ the optimizer and scheduler


def check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse an optimizer that holds parameters of another model."""
    owned = {id(p) for p in model.parameters()}
    foreign = sum(
        1 for group in optimizer.param_groups for p in group["params"] if id(p) not in owned
    )
    if foreign:
        raise ValueError(
            f"Invalid value for argument `optimizer`: it holds {foreign} parameter tensor(s) that "
            "don't belong to `model`. Build it on model.parameters(), or pass a name or class "
            "and let fit build it."
        )


def named_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build a named optimizer, with PyTorch's fused kernel where the parameters allow it.

    ``fused=True`` is the same algorithm in one kernel per step instead of a dozen small
    ops per parameter tensor. It is used for real floating-point parameters on the CPU or
    CUDA only, since PyTorch checks the parameters only at the first step, too late to
    fall back; a version without a fused CPU kernel refuses it when the optimizer is
    built, and the regular implementation is used then.
    """
    factory = OPTIMIZERS[name]
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return factory(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            pass
    return factory(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(
    optimizer: OptimizerSpec, model: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer ``fit`` steps, built on the model's trainable parameters if needed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer  # checked against the model up front
    if isinstance(optimizer, str):
        return named_optimizer(optimizer, params, lr, weight_decay)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = cast(Callable[..., torch.optim.Optimizer], optimizer)  # takes lr=, weight_decay=
        return cls(params, lr=lr, weight_decay=weight_decay)
    built = cast(Callable[..., Any], optimizer)(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            f"Invalid value for argument `optimizer`: calling {optimizer!r} on the "
            f"parameters returned {type(built).__name__}, not a torch.optim.Optimizer."
        )
    check_optimizer_params(built, model)
    return built


def check_trainable(model: nn.Module, optimizer: Any) -> None:
    """Refuse a model with nothing to train (unless an optimizer instance says otherwise),
    or an optimizer instance over parameters of another model."""
    if isinstance(optimizer, torch.optim.Optimizer):
        check_optimizer_params(optimizer, model)
        return
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        state = (
            f"all {len(params)} parameter tensors are frozen (requires_grad=False)"
            if params
            else "it has no parameters"
        )
        raise ValueError(
            f"Invalid value for argument `model`: {state}, so there is nothing to train. "
            "Unfreeze what should learn (p.requires_grad_(True) for p in "
            "model.parameters()), or use evaluate/predict for a model that only infers."
        )


def _check_optimizer(optimizer: Any) -> None:
    """Refuse an unknown optimizer name or an argument of the wrong type."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Invalid value for argument `optimizer`: unknown name {optimizer!r}. Valid names "
                f"are {', '.join(map(repr, OPTIMIZERS))}, or pass a torch.optim.Optimizer "
                "subclass, a callable params -> optimizer, or an optimizer instance."
            )
    elif not callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "Invalid type for argument `optimizer`. Expected a name ('adam', 'adamw', 'sgd'), a "
            "torch.optim.Optimizer subclass or instance, or a callable params -> optimizer. "
            f"Received optimizer={optimizer!r}."
        )


def _is_scheduler(obj: Any) -> bool:
    return isinstance(
        obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    ) or (not isinstance(obj, type) and callable(getattr(obj, "step", None)))


def _check_plateau_interval(scheduler: Any, interval: str | None) -> None:
    """``ReduceLROnPlateau`` steps on a monitored value, which exists once per epoch."""
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    is_plateau = isinstance(scheduler, plateau) or (
        isinstance(scheduler, type) and issubclass(scheduler, plateau)
    )
    if is_plateau and interval == "step":
        raise ValueError(
            "Invalid value for argument `scheduler_interval`: ReduceLROnPlateau steps on the "
            "monitored loss (val_loss, else loss), which is measured once per epoch, and "
            "scheduler_interval='step' would step it after every batch. Pass "
            "scheduler_interval='epoch' (or None)."
        )


def check_scheduler(scheduler: Any, optimizer: Any, interval: Any) -> None:
    """Refuse, before any work, a scheduler ``fit`` could not step correctly.

    A scheduler *class* is accepted when the optimizer is its only required argument
    (``ReduceLROnPlateau``); a class that needs more (``StepLR``'s ``step_size``) is
    refused, naming what to pass. An instance must be built on ``fit``'s optimizer.
    """
    if interval is not None:
        check_choice("scheduler_interval", interval, SCHEDULER_INTERVALS)
    _check_plateau_interval(scheduler, interval)
    if scheduler is None:
        return
    if isinstance(scheduler, type):
        required = [
            p.name
            for p in list(inspect.signature(scheduler).parameters.values())[1:]
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if required:
            raise TypeError(
                f"Invalid value for argument `scheduler`: the class {scheduler.__name__} needs "
                f"{', '.join(required)}. Pass a function optimizer -> scheduler, e.g. "
                f"scheduler=lambda opt: {scheduler.__name__}(opt, {required[0]}=...)."
            )
    elif _is_scheduler(scheduler):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                "Invalid value for argument `scheduler`: a scheduler instance is built on an "
                "optimizer, but fit builds its own from optimizer="
                f"{optimizer!r}, so the scheduler would never change its learning rate. Pass "
                f"a function instead: scheduler=lambda opt: {type(scheduler).__name__}(opt, ...)."
            )
        _check_scheduler_optimizer(scheduler, optimizer)
    elif not callable(scheduler):
        raise TypeError(
            "Invalid type for argument `scheduler`. Expected a torch LR scheduler built on the "
            "optimizer, or a callable optimizer -> scheduler. "
            f"Received scheduler={scheduler!r}."
        )


def _check_scheduler_optimizer(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    owner = getattr(scheduler, "optimizer", optimizer)
    if owner is not optimizer:
        raise ValueError(
            f"Invalid value for argument `scheduler`: {type(scheduler).__name__} is built on "
            "another optimizer than the one fit steps, so it would never change the learning "
            "rate. Build it on the same optimizer, or pass a function optimizer -> scheduler."
        )


def build_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, interval: Any) -> Any:
    """The scheduler instance for ``optimizer`` (``scheduler`` already checked)."""
    if scheduler is None or _is_scheduler(scheduler):
        return scheduler
    built = scheduler(optimizer)  # a class or a function optimizer -> scheduler
    if not _is_scheduler(built):
        raise TypeError(
            f"Invalid value for argument `scheduler`: calling it on the optimizer returned "
            f"{type(built).__name__}, which has no step() method."
        )
    _check_scheduler_optimizer(built, optimizer)
    _check_plateau_interval(built, interval)
    return built


def steps_per_batch(scheduler: Any, interval: str | None) -> bool:
    """Whether ``scheduler`` is stepped after every batch (else after every epoch)."""
    if scheduler is None:
        return False
    if interval is None:
        return isinstance(scheduler, STEP_SCHEDULERS)
    return interval == "step"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    torch.manual_seed(seed)  # also seeds every CUDA device


# ------------------------------------------------------------------ checked arguments


@dataclasses.dataclass
class Options:
    """``fit``'s arguments besides the model and the training data, checked on creation.

    Every argument is checked (and normalised: NumPy integers become ints, a loss class
    an instance, metrics a list of requests) before any work; see
    [`fit`][convkit.fit] for what each one means.
    """

    epochs: Any
    val_data: Any
    validation_split: Any
    batch_size: Any
    drop_last: Any
    num_workers: Any
    optimizer: Any
    lr: Any
    weight_decay: Any
    loss: Any
    task: Any
    metrics: Any
    device: Any
    progress: Any
    seed: Any
    precision: Any
    memory_format: Any
    compile: Any
    data_on_device: Any
    callbacks: Any
    scheduler: Any
    scheduler_interval: Any
    grad_clip: Any
    resume_from: Any
    require_digest: Any
    nan_guard: Any
    sync_batchnorm: Any
    on_interrupt: Any

    def __post_init__(self) -> None:
        check_choice("on_interrupt", self.on_interrupt, ("raise", "return"))
        self.epochs = check_positive_int("epochs", self.epochs)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        check_finite_float("lr", self.lr, strict=True)
        check_finite_float("weight_decay", self.weight_decay)
        if self.grad_clip is not None:
            check_finite_float("grad_clip", self.grad_clip, strict=True)
        _check_optimizer(self.optimizer)
        check_scheduler(self.scheduler, self.optimizer, self.scheduler_interval)
        self.loss = check_loss(self.loss)
        check_task(self.task)
        self.metrics = parse_metrics(self.metrics)
        for name in ("progress", "compile", "nan_guard", "sync_batchnorm", "require_digest"):
            check_bool(name, getattr(self, name))
        check_optional_bool("drop_last", self.drop_last, "drop a last batch of one for BatchNorm")
        check_optional_bool("data_on_device", self.data_on_device, "decide by size")
        self.seed = check_seed(self.seed)
        self.num_workers = check_positive_int("num_workers", self.num_workers, allow_zero=True)
        self._check_validation_split()
        if isinstance(self.callbacks, Callback):
            self.callbacks = [self.callbacks]
        if not isinstance(self.callbacks, Sequence) or not all(
            isinstance(c, Callback) for c in self.callbacks
        ):
            raise TypeError(
                "Invalid type for argument `callbacks`. Expected a sequence of convkit.Callback "
                f"instances, e.g. [EarlyStopping()]. Received callbacks={self.callbacks!r}."
            )
        if self.resume_from is not None and not Path(self.resume_from).is_file():
            raise FileNotFoundError(
                f"Invalid value for argument `resume_from`: no checkpoint at {self.resume_from}."
            )

    def _check_validation_split(self) -> None:
        if self.validation_split is None:
            return
        check_finite_float("validation_split", self.validation_split, strict=True)
        if self.validation_split >= 1:
            raise ValueError(
                "Invalid value for argument `validation_split`. Expected a fraction in (0, 1), "
                f"e.g. 0.1. Received validation_split={self.validation_split!r}."
            )
        if self.val_data is not None:
            raise ValueError(
                "Invalid value for argument `validation_split`: val_data is given too. Pass "
                "either val_data or validation_split, not both."
            )


# ------------------------------------------------------------------ exact epoch totals


class Tally:
    """An epoch's exact totals on the device, read back once: the loss's sum and count
    (as the task defines them), the samples, and every metric's statistics.

    Each total is updated by a single in-place kernel per batch: a small model on a GPU
    is bound by kernel launches, so every launch counts.
    """

    def __init__(self, metrics: MetricSet, runtime: Runtime, name: str) -> None:
        self.metrics, self.task, self.name = metrics, metrics.spec, name
        self.dtype, device = runtime.accumulator, runtime.device
        self.loss = torch.zeros(2, dtype=self.dtype, device=device)  # [sum, count]
        self.stats = torch.zeros(metrics.size, dtype=self.dtype, device=device)
        self.samples = 0
        metrics.reset(device)

    def add(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor,
        count: torch.Tensor,
        real: int | None = None,
    ) -> None:
        """Add a batch, its loss and the loss's count (``TaskSpec.loss_count``).

        ``real``: count only the batch's first ``real`` samples; the rest is a distributed
        sampler's padding, and the loss of the real ones is computed again without it.
        """
        if real == 0:
            return
        with torch.no_grad():
            if real is not None:
                outputs, targets = outputs[:real], targets[:real]
                loss = self.task.loss(outputs, targets)
                count = self.task.loss_count(targets, self.dtype)
            self.loss.add_(torch.stack(self.task.loss_total(loss, count)))
            totals = self.metrics.batch_totals(outputs.detach().float(), targets, self.dtype)
            if self.metrics.size:
                self.stats.add_(totals)
        self.samples += int(outputs.shape[0])

    def running_loss(self) -> float:
        """The mean loss so far (a host read)."""
        total, count = self.loss.tolist()
        return total / count if count else math.nan

    def result(self, all_reduce: bool) -> dict[str, float]:
        """The epoch's exact means: one all-reduce and one host read."""
        samples = self.loss.new_tensor([float(self.samples)])
        totals = torch.cat([self.loss, samples, self.stats])
        if all_reduce:
            torch.distributed.all_reduce(totals)
        values = totals.tolist()  # the one host sync of the epoch
        if values[2] == 0:
            raise ValueError(f"Invalid value for argument `{self.name}`: it yielded no batches.")
        # every target ignored: no loss to average (cross-entropy itself gives NaN then)
        loss = values[0] / values[1] if values[1] else math.nan
        return {"loss": loss, **self.metrics.compute(values[3:])}


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


def _targets(targets: torch.Tensor | None, name: str) -> torch.Tensor:
    if targets is None:
        raise ValueError(
            f"Invalid data in `{name}`: batches hold inputs but no targets; pass "
            "(inputs, targets) pairs."
        )
    return targets


def score(
    model: nn.Module,
    batches: Batches,
    metrics: MetricSet,
    runtime: Runtime,
    name: str,
    *,
    all_reduce: bool = False,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``batches``: eval mode, no gradients, exact means."""
    tally = Tally(metrics, runtime, name)
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            targets = _targets(batch.targets, name)
            with runtime.autocast():
                outputs = model(runtime.format(batch.inputs))
                loss = metrics.spec.loss(outputs, targets)
            count = metrics.spec.loss_count(targets, runtime.accumulator)
            tally.add(outputs, targets, loss, count, batch.real)
    return tally.result(all_reduce)


def setup_task(
    model: nn.Module,
    batches: Batches,
    runtime: Runtime,
    *,
    task: str,
    loss: LossFn | None,
    requests: Any,
    name: str,
) -> MetricSet:
    """Read the task from the first batch, check every target against it, bind the metrics.

    The model runs once on the first batch in eval mode under ``no_grad`` (BatchNorm
    statistics and dropout untouched, every submodule's mode restored), so that
    [`infer_task`][convkit.train.tasks.infer_task] can read the outputs' shape and every
    metric can be tried. Peeking at a ``DataLoader`` leaves every random generator it
    draws from as it was, so the epochs see the batches they would have seen.

    Raises:
        ValueError: For data that yields nothing, or anything ``infer_task``,
            ``check_targets`` or ``bind_metrics`` refuses; all before any training.
    """
    batch = batches.first()
    if batch is None:
        raise ValueError(f"Invalid value for argument `{name}`: it yielded no batches.")
    targets = _targets(batch.targets, name)
    with eval_mode(model), torch.no_grad(), runtime.autocast():
        outputs = model(runtime.format(batch.inputs))
    if not isinstance(outputs, torch.Tensor):
        raise not_a_tensor(outputs, batch.inputs)
    outputs = outputs.float()
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
    batches.check_task(spec)
    _check_loss_runs(spec.loss, outputs, targets)
    return bind_metrics(requests, spec, outputs, targets)


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


def not_a_tensor(outputs: Any, inputs: torch.Tensor) -> TypeError:
    """The error for a model whose forward returns something other than one tensor."""
    kind = type(outputs).__name__
    if isinstance(outputs, (tuple, list)):
        kind += f" of {len(outputs)} items"
        pick = "outputs[0]"
    elif isinstance(outputs, Mapping):
        kind += f" with keys {list(outputs)}"
        pick = f"outputs[{next(iter(outputs), 'key')!r}]"
    else:
        pick = "the scores tensor"
    return TypeError(
        f"Invalid value for argument `model`: on inputs of shape {tuple(inputs.shape)} it "
        f"returned a {kind}; convkit needs one tensor of scores (N, ...). Wrap the model so "
        f"that forward returns {pick}, e.g. nn.Sequential(model, Pick()) with a module whose "
        f"forward(outputs) returns {pick}."
    )


# ------------------------------------------------------------------ the run


class Run:
    """One ``fit`` call: set up in ``__init__`` (every check first), trained by ``fit``.

    Args:
        model: The network.
        train_data: The training data, in any form ``fit`` takes.
        options: The other arguments, checked.

    On an error during the set-up, the global RNGs are as they were and a process group
    the run created is destroyed.
    """

    def __init__(self, model: nn.Module, train_data: Any, options: Options) -> None:
        self.model, self.options = model, options
        check_trainable(model, options.optimizer)
        self.runtime = Runtime(model, options.device, options.precision, options.memory_format)
        if options.sync_batchnorm and launched() and self.runtime.device.type != "cuda":
            raise ValueError(
                "Invalid value for argument `sync_batchnorm`: SyncBatchNorm synchronises "
                f"statistics across processes on CUDA only, and the device is "
                f"{self.runtime.device}. Drop sync_batchnorm=True for a distributed run on "
                f"{self.runtime.device.type}."
            )
        self.ctx = distributed.setup_distributed() if launched() else None
        rng = torch.get_rng_state()  # the shuffling seed draws from it
        try:
            self._prepare_data(train_data)
            self._prepare_task()
            self._prepare_training()
            self.start = self._resume() if options.resume_from is not None else 1
        except BaseException:
            torch.set_rng_state(rng)
            distributed.teardown(self.ctx)  # a process group fit created must not outlive it
            raise
        if options.seed is not None and options.resume_from is None:
            seed_everything(options.seed)

    def _prepare_data(self, train_data: Any) -> None:
        """The shuffling generator and the batches, checked against the model."""
        o, ctx = self.options, self.ctx
        if ctx is not None:  # before any collective that a rank with other data would skip
            distributed.check_same_length(
                "train_data", _sample_count(train_data), self.runtime.device
            )
            if o.val_data is not None:
                distributed.check_same_length(
                    "val_data", _sample_count(o.val_data), self.runtime.device
                )
        # A resumed run's generator state comes from the checkpoint: drawing a seed from the
        # global RNG would change it before the checkpoint is checked.
        seed = 0 if o.seed is None and o.resume_from is not None else o.seed
        if seed is None:  # follow the global RNG, so torch.manual_seed() before fit still works
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        if ctx is not None:  # the same on every rank
            seed = distributed.broadcast_int(seed, self.runtime.device)
        self.generator = torch.Generator().manual_seed(seed)
        spec = Batching(
            "train_data",
            o.batch_size,
            shuffle=True,
            generator=self.generator,
            device=self.runtime.device,
            need_targets=True,
            on_device=o.data_on_device,
            memory_format=self.runtime.memory_format,
            shard=(ctx.rank, ctx.world_size) if ctx is not None else None,
            seed=seed,
            drop_last=o.drop_last is True,
            num_workers=o.num_workers,
        )
        # validation never shuffles; its own generator keeps the training RNG untouched
        val_spec = dataclasses.replace(
            spec, name="val_data", shuffle=False, generator=torch.Generator(), drop_last=False
        )
        val_data = o.val_data
        if o.validation_split is not None:  # the same split on every call and every rank
            train_rows, val_rows = split_rows(train_data, o.validation_split, o.seed or 0)
            spec = dataclasses.replace(spec, rows=train_rows)
            val_spec = dataclasses.replace(val_spec, rows=val_rows)
            val_data = train_data
        self.train = make_batches(train_data, spec, model=self.model)
        self._check_last_batch(isinstance(train_data, DataLoader))
        self.val = None
        if val_data is not None:
            self.val = make_batches(val_data, val_spec, model=self.model)
        if isinstance(self.train, LoaderBatches):  # checkpoints save the generator of its order
            self.generator = data_generator(
                self.train.loader, self.generator, resuming=o.resume_from is not None
            )

    def _prepare_task(self) -> None:
        """The task, loss and metrics from the first batch; every target checked against them."""
        o = self.options
        self.runtime.place(self.model)
        self.metrics = setup_task(
            self.model,
            self.train,
            self.runtime,
            task=o.task,
            loss=o.loss,
            requests=o.metrics,
            name="train_data",
        )
        self.task = self.metrics.spec
        if self.val is not None:
            self.val.check_task(self.task)

    def _check_last_batch(self, user_loader: bool) -> None:
        """Refuse training data that leaves no batch to train on, saying why.

        BatchNorm can't train on one sample: ``drop_last=None`` skips a last batch of one
        sample, ``drop_last=False`` keeping one is refused.
        """
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        drop_last, size = self.options.drop_last, self.options.batch_size
        self.skip_single = drop_last is None and has_bn
        train = self.train
        samples: int | None = None
        if isinstance(train, TensorBatches):
            samples = train.num_samples
        elif isinstance(train.loader.dataset, Sized):
            samples = len(train.loader.dataset)
        one_left = isinstance(train, TensorBatches) and samples is not None and samples % size == 1
        if drop_last is False and has_bn and one_left:
            raise ValueError(
                f"Invalid value for argument `drop_last`: drop_last=False keeps a last "
                f"training batch of 1 sample ({samples} samples, batch_size={size}), and "
                "the model's BatchNorm layers can't train on one sample. Use "
                "drop_last=None (skips just that batch), drop_last=True, or another "
                "batch_size."
            )
        if samples == 1 and has_bn and drop_last is not False:
            raise ValueError(
                "Invalid value for argument `train_data`: it holds 1 sample, and the model's "
                "BatchNorm layers can't train on a batch of one sample, so fit skips that "
                "batch and nothing is left to train on. To overfit one sample, repeat it: "
                "(torch.cat([x, x]), torch.cat([y, y])); or build the model without BatchNorm "
                "(build_cnn(..., norm=None, head_norm=None))."
            )
        loader = None if isinstance(train, TensorBatches) else train.loader
        if self.skip_single and (loader.batch_size if loader is not None else size) == 1:
            name, fix = "batch_size", "Pass batch_size=2 or more"
            if user_loader:
                name, fix = "train_data", "Make it with DataLoader(..., batch_size=2) or more"
            raise ValueError(
                f"Invalid value for argument `{name}`: every training batch holds 1 sample "
                "(batch_size=1), and fit skips batches of one sample for the model's "
                f"BatchNorm layers, so nothing is left to train on. {fix}; or "
                "build the model without BatchNorm (build_cnn(..., norm=None, head_norm=None))."
            )
        if isinstance(train, TensorBatches) and len(train) == 0:
            raise ValueError(
                f"Invalid value for argument `drop_last`: drop_last=True drops every incomplete "
                f"batch, and train_data's {samples} samples make no full batch of "
                f"batch_size={size}. Pass drop_last=None or a batch_size of at most {samples}."
            )

    def _prepare_training(self) -> None:
        """The optimizer, scheduler, wrapper, History and the state callbacks see."""
        o, ctx, device = self.options, self.ctx, self.runtime.device
        if o.sync_batchnorm:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # type: ignore[no-untyped-call]
            self.runtime.place(self.model)  # the layers it converted
        self.optimizer = make_optimizer(o.optimizer, self.model, o.lr, o.weight_decay)
        self.scheduler = build_scheduler(o.scheduler, self.optimizer, o.scheduler_interval)
        self.per_batch = steps_per_batch(self.scheduler, o.scheduler_interval)
        self.net: nn.Module = self.model  # what the training batches go through
        if ctx is not None:
            index = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=index)
        if o.compile:
            self.net = cast(nn.Module, torch.compile(self.net))
        log_keys = ["loss", *self.metrics.names]
        log_keys += [f"val_{k}" for k in log_keys] if self.val is not None else []
        self.state = TrainState(
            model=self.model,
            optimizer=self.optimizer,
            epochs=o.epochs,
            history=History(seed=o.seed, device=str(device)),
            log_keys=tuple(log_keys),
            is_main=ctx is None or ctx.is_main,
            progress=o.progress and (ctx is None or ctx.is_main),
            steps_per_epoch=batches_per_epoch(self.train),
            scheduler=self.scheduler,
            scaler=self.runtime.grad_scaler(),
            generator=self.generator,
            callbacks=list(o.callbacks),
        )
        self.callbacks = hook_order(o.callbacks)  # checkpoints last: they save the others
        guard = o.nan_guard and any(True for _ in self.model.buffers())
        self.buffers = BufferGuard(self.model) if guard else None
        self.interrupt = SigintFlag()
        self.show = self.state.progress
        self.stopper: Callback | None = None  # the callback that set stop_training

    def _resume(self) -> int:
        """Restore everything the checkpoint holds into the run; the first epoch to train."""
        state, path = self.state, self.options.resume_from
        payload = resume(
            path,
            model=self.model,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            scaler=state.scaler,
            generator=self.generator,
            callbacks=state.callbacks,
            epochs=state.epochs,
            require_digest=self.options.require_digest,
        )
        if payload["history"] is not None:
            state.history = History.from_dict(payload["history"])
            state.history.device = str(self.runtime.device)
        state.history.interrupted = False
        state.stop_training = payload.get("stopped", False)
        if state.stop_training:
            logger.info("fit: the run in %s was stopped by a callback; no epoch to train", path)
        return int(payload["epoch"] or 0) + 1

    # -------------------------------------------------------------- the loop

    def fit(self) -> History:
        """Train epochs ``start..epochs``; modes restored, callbacks told the end.

        ``on_train_end`` runs after a normal end and after a graceful Ctrl-C (the first
        one), not when an error (or a second Ctrl-C) propagates.
        """
        state = self.state
        state.epoch = self.start - 1
        self._announce()
        with self.interrupt:
            try:
                with preserved_modes(self.model):
                    self._epochs()
            except HardInterrupt:
                raise
            except KeyboardInterrupt:
                # Ctrl-C: stop at this batch and keep everything learned; the callbacks save
                # the interrupted state before the interrupt goes on to the caller.
                done = state.history.epochs
                state.history.interrupted = state.interrupted = True
                state.epoch = done[-1]["epoch"] if done else self.start - 1
                logger.info("fit interrupted by the user during epoch %d", state.epoch + 1)
            for callback in self.callbacks:
                callback.on_train_end(state)
        if state.history.interrupted:
            self._after_interrupt()
        history: History = state.history
        return history

    def _after_interrupt(self) -> None:
        """Say what happened to an interrupted run, then end as ``on_interrupt`` says."""
        epoch = self.state.epoch + 1
        if self.options.on_interrupt == "return":
            if self.show:
                tqdm.write(f"Interrupted during epoch {epoch}; returning the History so far.")
            return
        # Exactly KeyboardInterrupt, which scripts and Jupyter handle as any Ctrl-C
        interrupt = KeyboardInterrupt(
            f"Training was interrupted (Ctrl-C) during epoch {epoch}; {self.state.epoch} "
            "epoch(s) finished and the model keeps what it learned. The exception's .history "
            'holds their History; pass fit(on_interrupt="return") to get it returned instead.'
        )
        interrupt.history = self.state.history  # type: ignore[attr-defined]
        raise interrupt

    def _announce(self) -> None:
        """Record what the run trains in the History; log (and with a bar, print) it."""
        history, task, device = self.state.history, self.task, self.runtime.device
        history.task, history.loss = task.task, loss_name(task.loss)
        history.metrics, history.setup = list(self.metrics.names), self.metrics
        if self.state.stop_training:  # a resumed run that had stopped: _resume said so
            return
        how = " (inferred from the first batch)" if self.options.task == "auto" else ""
        names = ", ".join(self.metrics.names) or "none"
        auto = self.options.device == "auto"
        logger.info(
            "fit: epochs %d-%d on %s%s; task %s%s, loss %s, metrics %s",
            self.start,
            self.state.epochs,
            device,
            " (picked by device='auto')" if auto else "",
            task.describe(),
            how,
            history.loss,
            names,
        )
        if self.show and auto:
            tqdm.write(f"Training on {device} (device='auto'; pass device= to choose).")

    def _epochs(self) -> None:
        state, history = self.state, self.state.history
        for callback in self.callbacks:
            callback.on_train_begin(state)
        for epoch in range(self.start, state.epochs + 1):
            if self.ctx is not None:  # a stop asked for on any rank stops every rank
                state.stop_training = distributed.any_rank(state.stop_training, self.runtime.device)
            if state.stop_training:  # set by a callback, or by a resumed run that had stopped
                break
            state.epoch = epoch
            for callback in self.callbacks:
                callback.on_epoch_begin(state)
            start, lr = time.perf_counter(), float(self.optimizer.param_groups[0]["lr"])
            logs = self.one_epoch(epoch)
            if self.ctx is not None:  # a Ctrl-C on any rank stops every rank, after this epoch
                self.interrupt.raised = distributed.any_rank(
                    self.interrupt.raised, self.runtime.device
                )
            elif self.interrupt.raised:  # mid-epoch: the epoch is not recorded
                raise KeyboardInterrupt
            seconds = time.perf_counter() - start
            history.append(epoch, logs, seconds, lr=lr)
            state.logs = dict(logs)
            line = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            logger.info("epoch %d/%d: %s (%.1fs)", epoch, state.epochs, line, seconds)
            if self.show:
                tqdm.write(f"Epoch {epoch}/{state.epochs} - {line} - {seconds:.1f}s")
            self._record_stop(None)  # one asked for by a callback during the epoch's batches
            for callback in self.callbacks:
                callback.on_epoch_end(state)
                self._record_stop(callback)  # before the checkpoints (last) save the History
            if self.interrupt.raised:
                raise KeyboardInterrupt

    def _record_stop(self, called: Callback | None) -> None:
        """Record in the History and say which callback stopped training, unless it did.

        ``called`` is the callback just told the end of the epoch: the one that stopped
        training if the stop is new.
        """
        state = self.state
        if state.stop_training and self.stopper is None:
            self.stopper = called
        if self.stopper is None or state.history.stopped_epoch is not None:
            return
        name = type(self.stopper).__name__
        state.history.record_stop(state.epoch, by=name)
        state.report(
            f"{name} stopped training after epoch {state.epoch}/{state.epochs} "
            "(it set state.stop_training)."
        )

    def one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch, validate, step the epoch scheduler; the epoch's logs."""
        self.train.set_epoch(epoch)
        self.model.train()
        with self._bar(epoch) as bar:
            logs = self.all_batches(epoch, bar)
        if self.interrupt.raised and self.ctx is None:  # distributed: the epoch ends
            return logs
        if self.ctx is not None:
            distributed.sync_buffers(self.model)  # e.g. BatchNorm: the same model everywhere
        if self.val is not None:
            # the model, not a DDP wrapper: evaluation needs no gradient sync
            val_logs = score(
                self.model,
                self.val,
                self.metrics,
                self.runtime,
                "val_data",
                all_reduce=self.ctx is not None,
            )
            if not math.isfinite(val_logs["loss"]):
                warnings.warn(
                    f"val_loss is {val_logs['loss']} at epoch {epoch}: the validation data "
                    "holds NaN/inf values or the model produces them on it, so callbacks that "
                    "monitor val_loss (EarlyStopping, ModelCheckpoint(save_best_only=True)) "
                    "can't see an improvement. Check val_data with torch.isfinite.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        if self.scheduler is not None and not self.per_batch:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(logs["val_loss" if self.val is not None else "loss"])
            else:
                self.scheduler.step()
        return logs

    def _bar(self, epoch: int) -> Any:
        if not self.show:
            return nullcontext(None)
        return _bar_class()(
            total=self.state.steps_per_epoch,
            desc=f"Epoch {epoch}/{self.state.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )

    def all_batches(self, epoch: int, bar: Any) -> dict[str, float]:
        """One pass over the training batches: the epoch's exact loss and metrics."""
        tally = Tally(self.metrics, self.runtime, "train_data")
        state, last_refresh = self.state, time.perf_counter()
        for index, batch in enumerate(self.train):
            if self.skip_single and batch.inputs.shape[0] == 1:
                continue  # BatchNorm can't train on one sample; see fit's drop_last
            self.one_batch(epoch, index + 1, batch, tally)
            if bar is not None:
                bar.update(1)
                if time.perf_counter() - last_refresh >= POSTFIX_INTERVAL_S:
                    last_refresh = time.perf_counter()
                    bar.set_postfix(loss=f"{tally.running_loss():.4f}", refresh=False)
            # distributed, a stop and a Ctrl-C are agreed on by every rank at the end of the
            # epoch instead: a rank that left the epoch early would leave the others waiting
            if self.ctx is None and (self.interrupt.raised or state.stop_training):
                break
        return tally.result(all_reduce=self.ctx is not None)

    def one_batch(self, epoch: int, index: int, batch: Any, tally: Tally) -> None:
        """Forward, loss, step, callbacks, then the batch's totals (``index`` from 1)."""
        targets = _targets(batch.targets, "train_data")
        if self.buffers is not None:
            self.buffers.save()
        with self.runtime.autocast():
            outputs = self.net(self.runtime.format(batch.inputs))
            loss = self.task.loss(outputs, targets)
        count = self.task.loss_count(targets, self.runtime.accumulator)
        self.step(loss, count, epoch, index)
        if self.callbacks:
            self.state.batch, self.state.logs = index - 1, {"loss": loss.detach()}
            for callback in self.callbacks:
                callback.on_batch_end(self.state)
                if self.state.stop_training and self.stopper is None:
                    self.stopper = callback
        tally.add(outputs, targets, loss, count, batch.real)

    def step(self, loss: torch.Tensor, count: torch.Tensor, epoch: int, index: int) -> None:
        """Backward, NaN guard (one flag read), clip and optimizer step for one batch."""
        opt, scaler, clip = self.optimizer, self.state.scaler, self.options.grad_clip
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss if scaler is None else scaler.scale(loss))
        if scaler is not None and clip is not None:
            scaler.unscale_(opt)
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip) if clip else None
        if self.options.nan_guard:
            # a batch whose targets are all ignore_index has a NaN mean (0/0) and zero
            # gradients: nothing to learn, nothing wrong
            finite = torch.isfinite(loss.detach()) | (count == 0)
            if scaler is None:  # the scaler skips steps with inf/NaN gradients itself
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                if norm is None and grads:
                    norm = nn.utils.get_total_norm(grads)
                if norm is not None:
                    finite = finite & torch.isfinite(norm)
            if not bool(finite):
                self._trip(loss, epoch, index)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        if self.per_batch:
            self.scheduler.step()

    def _trip(self, loss: torch.Tensor, epoch: int, index: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        kept = "parameters"
        if self.buffers is not None:
            self.buffers.restore()
            kept += " and buffers (BatchNorm running statistics)"
        value = loss.item()
        what = "A gradient is not finite" if math.isfinite(value) else f"The loss is {value}"
        if index > 1:
            when = f"after batch {index - 1} of this epoch"
        else:
            when = f"at the end of epoch {epoch - 1}" if epoch > 1 else "before training"
        advice = (
            "Lower the learning rate, clip gradients (grad_clip=1.0) or check the data for NaN/inf"
        )
        if epoch == 1 and index == 1 and self.options.resume_from is None:
            advice = (  # no step yet: the learning rate can't be the cause
                "No step was taken yet, so the learning rate is not the cause: check the "
                "data for NaN/inf (torch.isfinite(x).all()), the model's forward and the loss"
            )
        raise NonFiniteLossError(
            f"{what} at epoch {epoch}, batch {index}: training stopped before the optimizer "
            f"stepped on it, so the model's {kept} are as they were {when}. {advice}; the "
            "History of the completed epochs is in this error's `history`.",
            history=self.state.history,
            epoch=epoch,
            batch=index,
        )


def batches_per_epoch(batches: Batches) -> int | None:
    """How many batches an epoch has (``None``: an ``IterableDataset`` without a length)."""
    try:
        return len(batches)
    except TypeError:
        return None


def _bar_class() -> type[tqdm[Any]]:
    """tqdm's widget in a Jupyter kernel that has ipywidgets, else the text bar.

    ``tqdm.auto`` would warn ("IProgress not found") in a kernel without ipywidgets.
    """
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as widget

        return widget
    return tqdm
