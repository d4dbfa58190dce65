"""Training and inference loops: ``fit``, ``evaluate``, ``predict`` and ``History``.

The loops know nothing about CNNs (after minGPT's ``trainer.py``): any ``nn.Module``
and any classification-style data work. They fix the teaching notebook's bugs by
construction: losses and metrics are exact means over samples, evaluation restores
each submodule's train/eval mode, and nothing runs a forward pass in train mode except
training itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._data import LoaderBatches, Shard, TensorBatches, make_batches
from ._distributed import broadcast_int, device_for
from ._distributed import setup as setup_distributed
from ._metrics import Metric, resolve_metrics
from ._runtime import Runtime
from ._typing import DeviceLike, MetricFn
from ._validation import check_non_negative_float, check_positive_int
from .callbacks import Callback, TrainState
from .checkpoints import load_checkpoint, set_rng_state
from .devices import resolve_device
from .factory import _infer_output_shape

__all__ = ["History", "evaluate", "fit", "predict"]

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerSpec = (
    str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer
)

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, **kw),
}

# Schedulers whose schedule is counted in optimizer steps: stepped after every batch.
_PER_BATCH_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)

# How often the progress bar's running loss is refreshed; reading it is the only
# host-device sync inside an epoch, so it is rate-limited.
_POSTFIX_INTERVAL_S = 0.5


class History:
    """Per-epoch losses and metrics returned by [`fit`][convkit.fit].

    ``history["loss"]``, ``history["accuracy"]``, ``history["val_loss"]``,
    ``history["val_accuracy"]`` are lists of floats, one per epoch, as in Keras.

    Attributes:
        history: ``{name: [value per epoch]}``.
        epochs: One dict per epoch: ``{"epoch": 1, "metrics": {...}, "seconds": 2.1}``.
        seed: The ``seed`` given to ``fit`` (``None`` if none).
        device: The device trained on, e.g. ``"cpu"`` or ``"cuda:0"``.
        interrupted: Whether training stopped before its last epoch.
    """

    def __init__(self, *, seed: int | None = None, device: str | None = None) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[dict[str, Any]] = []
        self.seed = seed
        self.device = device
        self.interrupted = False

    def append(self, epoch: int, metrics: dict[str, float], seconds: float) -> None:
        """Record one finished epoch."""
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        self.epochs.append({"epoch": epoch, "metrics": dict(metrics), "seconds": seconds})

    def __getitem__(self, key: str) -> list[float]:
        try:
            return self.history[key]
        except KeyError:
            raise KeyError(
                f"No metric {key!r} in this History; recorded: {', '.join(self.history) or 'none'}."
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self) -> list[str]:
        """Names of the recorded series, e.g. ``["loss", "accuracy", "val_loss", ...]``."""
        return list(self.history)

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain, JSON-able data."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "epochs": [dict(e, metrics=dict(e["metrics"])) for e in self.epochs],
            "seed": self.seed,
            "device": self.device,
            "interrupted": self.interrupted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a History from [`to_dict`][convkit.training.History.to_dict]'s output."""
        history = cls(seed=data.get("seed"), device=data.get("device"))
        history.history = {k: list(v) for k, v in data["history"].items()}
        history.epochs = [dict(e, metrics=dict(e["metrics"])) for e in data["epochs"]]
        history.interrupted = bool(data.get("interrupted", False))
        return history

    def plot(self, keys: Sequence[str] | None = None) -> Any:
        """Draw the training curves, one panel per metric, train and validation together.

        Needs matplotlib (``pip install "convkit[plot]"``).

        Args:
            keys: Metrics to draw (without the ``val_`` prefix); default: all.

        Returns:
            A ``matplotlib.figure.Figure``; save it with ``fig.savefig("curves.png")``.

        Raises:
            ImportError: If matplotlib isn't installed (the message names the extra).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                "History.plot() needs matplotlib, which is not installed. Install convkit's "
                "'plot' extra: pip install \"convkit[plot]\"."
            ) from err
        names = (
            list(keys)
            if keys is not None
            else [k for k in self.history if not k.startswith("val_")]
        )
        missing = [k for k in names if k not in self.history]
        if missing:
            raise ValueError(
                f"Invalid value for argument `keys`: {missing} not recorded; recorded: "
                f"{', '.join(self.history)}."
            )
        fig = Figure(figsize=(4.5 * max(len(names), 1), 3.5), layout="constrained")
        axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
        epochs = [e["epoch"] for e in self.epochs]
        for ax, name in zip(axes, names, strict=False):
            ax.plot(epochs, self.history[name], marker="o", label="train")
            if f"val_{name}" in self.history:
                ax.plot(epochs, self.history[f"val_{name}"], marker="o", label="validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        return fig

    def __repr__(self) -> str:
        last = self.epochs[-1]["metrics"] if self.epochs else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        return f"History(epochs={len(self)}, device={self.device!r}, last: {shown or '-'})"


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every submodule's own flag restored (not just the root's)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _resolve_loss(loss: Any) -> LossFn:
    if loss is None:
        return nn.CrossEntropyLoss()
    if not callable(loss):
        raise TypeError(
            "Invalid type for argument `loss`. Expected None (cross-entropy), a loss module such "
            f"as nn.CrossEntropyLoss() or a callable (outputs, targets) -> scalar tensor. "
            f"Received loss={loss!r}."
        )
    return loss  # type: ignore[no-any-return]


def _check_optimizer(optimizer: Any) -> None:
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"Invalid value for argument `optimizer`: unknown name {optimizer!r}. Valid names "
                f"are {', '.join(map(repr, _OPTIMIZERS))}, or pass a torch.optim.Optimizer "
                "subclass, a callable params -> optimizer, or an optimizer instance."
            )
    elif not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
        raise TypeError(
            "Invalid type for argument `optimizer`. Expected a name ('adam', 'adamw', 'sgd'), a "
            "torch.optim.Optimizer subclass or instance, or a callable params -> optimizer. "
            f"Received optimizer={optimizer!r}."
        )


def _check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
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


def _named_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build a named optimizer, with PyTorch's fused kernel where the parameters allow it.

    ``fused=True`` is the same algorithm in one kernel per step instead of a dozen small
    ops per parameter tensor (2.5x faster for the notebook's network on a CPU). It is
    used for real floating-point parameters on the CPU or CUDA only: recent PyTorch
    checks that only at the first step, too late to fall back. Versions without a
    fused CPU kernel refuse it when the optimizer is built; the regular one is used then.
    """
    factory = _OPTIMIZERS[name]
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return factory(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            pass
    return factory(params, lr=lr, weight_decay=weight_decay)


def _make_optimizer(
    optimizer: Any, model: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(optimizer, torch.optim.Optimizer):
        built = optimizer
    elif isinstance(optimizer, str):
        built = _named_optimizer(optimizer, params, lr, weight_decay)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls: Callable[..., torch.optim.Optimizer] = optimizer  # subclasses take lr=, weight_decay=
        built = cls(params, lr=lr, weight_decay=weight_decay)
    else:
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"Invalid value for argument `optimizer`: calling {optimizer!r} on the "
                f"parameters returned {type(built).__name__}, not a torch.optim.Optimizer."
            )
    _check_optimizer_params(built, model)
    return built


class _DataCheck:
    """Checks inputs and targets against the model before they reach it.

    Runs on whole tensors once (in-memory data) or on each batch while it's still on
    the host (``DataLoader`` data), so it never forces a device sync.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model, self.name = model, name
        shape = getattr(model, "input_shape", None)
        self.input_shape: tuple[int, ...] | None = tuple(shape) if shape is not None else None
        classes = getattr(model, "num_classes", None)
        self.num_classes: int | None = classes if isinstance(classes, int) else None
        self._probed = self.num_classes is not None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> None:
        if not inputs.is_floating_point():
            raise TypeError(
                f"Invalid data in `{self.name}`: inputs have dtype {inputs.dtype}; the model "
                "needs floating-point inputs. Convert them, e.g. images.float() / 255."
            )
        if self.input_shape is not None and tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"Invalid data in `{self.name}`: inputs of shape {tuple(inputs.shape)} don't match "
                f"the model's input_shape {self.input_shape}; expected (N, "
                f"{', '.join(map(str, self.input_shape))}). Reshape the data or build the model "
                f"for input_shape={tuple(inputs.shape[1:])}."
            )
        if targets is None or targets.is_floating_point() or targets.dim() != 1:
            return
        if not self._probed:
            # Models without a num_classes attribute: one dry run (eval mode, no_grad,
            # modes restored) to read the number of outputs.
            self._probed = True
            out = _infer_output_shape(self.model, tuple(inputs.shape[1:]))
            self.num_classes = out[0] if len(out) == 1 else None
        if self.num_classes is None or targets.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"Invalid data in `{self.name}`: target {bad} is outside [0, {self.num_classes}) "
                f"for a model with {self.num_classes} outputs. Targets must be class indices "
                f"0..{self.num_classes - 1}; build the model with more classes or fix the labels."
            )


def _prepare(
    model: nn.Module,
    data: Any,
    *,
    name: str,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator,
    runtime: Runtime,
    need_targets: bool,
    data_on_device: bool | None,
    shard: Shard | None = None,
    seed: int = 0,
) -> tuple[TensorBatches | LoaderBatches, _DataCheck]:
    check = _DataCheck(model, name)
    batches = make_batches(
        data,
        name=name,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        device=runtime.device,
        need_targets=need_targets,
        check=check,
        on_device=data_on_device,
        memory_format=runtime.memory_format,
        shard=shard,
        seed=seed,
    )
    return batches, check


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


@dataclass
class _Step:
    """How a training batch updates the model (``None`` in ``_run_epoch``: evaluation)."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    batch_scheduler: Any = None
    nan_guard: bool = True
    state: TrainState | None = None
    callbacks: Sequence[Callback] = ()
    epoch: int = 0


def _run_epoch(
    model: nn.Module,
    batches: TensorBatches | LoaderBatches,
    check: _DataCheck,
    loss_fn: LossFn,
    metrics: list[Metric],
    runtime: Runtime,
    *,
    step: _Step | None,
    bar: Any = None,
    all_reduce: bool = False,
) -> dict[str, float]:
    """One pass over ``batches``: a training epoch if ``step`` is given.

    Nothing in the loop reads a value back to the host (except the NaN guard's one
    flag per training batch): losses and metric totals add up on the device and are
    read once at the end; the progress bar's running loss is read at most every
    ``_POSTFIX_INTERVAL_S`` seconds.
    """
    device = runtime.device
    # One accumulator per value, each updated by a single in-place kernel per batch (a
    # small model on a GPU is bound by kernel launches, so every launch counts).
    sums = [
        torch.zeros((), dtype=_accumulator_dtype(device), device=device)
        for _ in range(1 + len(metrics))
    ]
    count = 0
    last_refresh = time.perf_counter()
    for index, batch in enumerate(batches):
        inputs, targets = runtime.format(batch.inputs), batch.targets
        if targets is None:
            raise ValueError(
                f"Invalid data in `{check.name}`: batches hold inputs but no targets; pass "
                "(inputs, targets) pairs."
            )
        with runtime.autocast():
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
        if step is not None:
            if step.nan_guard and not bool(torch.isfinite(loss.detach()).all()):
                raise FloatingPointError(
                    f"The loss is {loss.item()} at epoch {step.epoch}, batch {index}: training "
                    "stopped before the optimizer stepped on it, so the weights are finite. "
                    "Lower the learning rate, clip gradients (grad_clip=1.0) or check the data "
                    "for NaN/inf; the History so far is in this error's `history`."
                )
            opt = step.optimizer
            opt.zero_grad(set_to_none=True)
            if step.scaler is None:
                torch.autograd.backward(loss)
                if step.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
                opt.step()
            else:
                torch.autograd.backward(step.scaler.scale(loss))
                if step.grad_clip is not None:
                    step.scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
                step.scaler.step(opt)
                step.scaler.update()
            if step.batch_scheduler is not None:
                step.batch_scheduler.step()
            if step.callbacks and step.state is not None:
                step.state.batch, step.state.logs = index, {"loss": loss.detach()}
                for callback in step.callbacks:
                    callback.on_batch_end(step.state)
        n = inputs.shape[0]
        with torch.no_grad():
            detached = outputs.detach().float()
            sums[0].add_(loss.detach(), alpha=n)
            for total, metric in zip(sums[1:], metrics, strict=True):
                total.add_(metric.fn(detached, targets), alpha=1 if metric.is_sum else n)
        count += n
        if bar is not None:
            bar.update(1)
            now = time.perf_counter()
            if now - last_refresh >= _POSTFIX_INTERVAL_S:
                last_refresh = now
                bar.set_postfix(loss=f"{sums[0].item() / count:.4f}", refresh=False)
        if step is not None and step.state is not None and step.state.stop_training:
            break
    totals = torch.stack([*sums, torch.tensor(float(count), dtype=sums[0].dtype, device=device)])
    if all_reduce:
        import torch.distributed as dist

        dist.all_reduce(totals)
    values = totals.tolist()  # the one host sync of the epoch
    count_all = values[-1]
    if count_all == 0:
        raise ValueError(f"Invalid value for argument `{check.name}`: it yielded no batches.")
    result = {"loss": values[0] / count_all}
    for metric, total in zip(metrics, values[1:-1], strict=True):
        result[metric.name] = total / count_all
    return result


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    torch.manual_seed(seed)  # also seeds every CUDA device


def _check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(
            f"Invalid value for argument `seed`. Expected None or a non-negative int. "
            f"Received seed={seed!r}."
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected True or False. "
            f"Received {name}={value!r}."
        )


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Invalid type for argument `model`. Expected a torch.nn.Module. "
            f"Received {type(model).__name__}."
        )


def _check_callbacks(callbacks: Any) -> list[Callback]:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if not isinstance(callbacks, Sequence) or not all(isinstance(c, Callback) for c in callbacks):
        raise TypeError(
            "Invalid type for argument `callbacks`. Expected a sequence of convkit.Callback "
            f"instances, e.g. [EarlyStopping()]. Received callbacks={callbacks!r}."
        )
    return list(callbacks)


def _convert_sync_batchnorm(model: nn.Module) -> None:
    """Swap every BatchNorm submodule for SyncBatchNorm, in place."""
    for name, child in list(model.named_children()):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)  # type: ignore[no-untyped-call]
        if converted is not child:
            setattr(model, name, converted)


def _check_data_on_device(value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            "Invalid type for argument `data_on_device`. Expected None (decide by size), True "
            f"or False. Received data_on_device={value!r}."
        )


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


# ------------------------------------------------------------------------- public API


def fit(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int = 10,
    val_data: Any = None,
    batch_size: int = 128,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: LossFn | None = None,
    metrics: Sequence[str | MetricFn] = ("accuracy",),
    device: DeviceLike = "auto",
    progress: bool = True,
    seed: int | None = None,
    precision: str = "32",
    memory_format: str = "auto",
    compile: bool = False,
    data_on_device: bool | None = None,
    callbacks: Sequence[Callback] = (),
    scheduler: Any = None,
    grad_clip: float | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    nan_guard: bool = True,
    sync_batchnorm: bool = False,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs.

    Works for any ``nn.Module`` with classification-style data. Reported losses and
    metrics are exact means over the samples of each epoch (every batch weighted by its
    size), not the notebook's ``running_loss / i``. Training metrics are measured on
    the training batches as they are trained on (dropout on), as Keras does.

    Args:
        model: The network. It is moved to ``device`` and stays there.
        train_data: A ``DataLoader`` (used as is), a map-style ``Dataset`` (batched with
            ``batch_size`` and shuffled), or an ``(inputs, targets)`` pair of tensors.
            In-memory tensors (a pair or a ``TensorDataset``) are batched by slicing, on
            the device when they fit, in the same order a shuffling ``DataLoader``
            seeded the same way would give.
        epochs: Number of passes over ``train_data``.
        val_data: Optional data in the same forms, evaluated after every epoch
            (in eval mode, without gradients); adds ``val_loss`` and ``val_<metric>``.
        batch_size: Samples per batch, for data that isn't a ``DataLoader`` already.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9; a name gets
            PyTorch's ``fused=True`` implementation where the device supports it), a
            ``torch.optim.Optimizer`` subclass (built with ``lr`` and ``weight_decay``),
            a callable ``params -> optimizer``, or an optimizer instance already built on
            the model's parameters (``lr`` and ``weight_decay`` are then not used).
        lr: Learning rate for an optimizer that ``fit`` builds.
        weight_decay: Weight decay for an optimizer that ``fit`` builds.
        loss: ``None`` for ``nn.CrossEntropyLoss()``, or a callable
            ``(outputs, targets) -> scalar`` returning the batch *mean*.
        metrics: Names (``"accuracy"``) or callables ``(outputs, targets) -> scalar``
            returning the batch mean, recorded under their ``__name__``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"`` or a ``torch.device``. On CUDA, host batches are
            pinned and copied with ``non_blocking=True``.
        progress: Show a tqdm bar per epoch (with the running loss) and one summary line
            per epoch. ``False`` prints nothing.
        seed: Seed Python's, NumPy's and torch's global RNGs (dropout) and the
            shuffling generator, so that a CPU run is repeatable bit for bit. Model
            initialisation happens before ``fit`` and is not covered.
        precision: ``"32"`` (float32, default), ``"bf16"`` (bfloat16 autocast, on CPU
            and CUDA; opt-in since it changes the numerics) or ``"16-mixed"`` (float16
            autocast with a ``GradScaler``, CUDA only).
        memory_format: ``"auto"`` (default: ``channels_last`` for models containing
            ``nn.Conv2d`` on CPU and CUDA, where it is measured faster, ``contiguous``
            otherwise), ``"channels_last"`` or ``"contiguous"``. Applied to the model (it
            keeps that layout) and to every batch.
        compile: Train a ``torch.compile``-d version of the model (it shares the
            parameters). The first epoch then includes compilation time.
        data_on_device: For in-memory tensors: ``None`` (default) moves the whole dataset
            to an accelerator once when it takes at most a quarter of the free device
            memory, else copies each batch; ``True``/``False`` force either way. On the
            CPU nothing is copied.
        callbacks: [`Callback`][convkit.Callback]s, e.g.
            [`EarlyStopping`][convkit.EarlyStopping],
            [`ModelCheckpoint`][convkit.ModelCheckpoint], [`CSVLogger`][convkit.CSVLogger].
        scheduler: A ``torch.optim.lr_scheduler`` instance, or a callable
            ``optimizer -> scheduler`` (needed when ``fit`` builds the optimizer). Stepped
            once per epoch, after validation; ``OneCycleLR`` and ``CyclicLR``, whose
            schedules count optimizer steps, are stepped after every batch;
            ``ReduceLROnPlateau`` is given ``val_loss`` (``loss`` without ``val_data``).
        grad_clip: Clip the global gradient norm to this value before each step.
        resume_from: A checkpoint from [`ModelCheckpoint`][convkit.ModelCheckpoint] (or
            ``save_checkpoint``): restores the weights, optimizer, scheduler, scaler,
            History, callbacks and every RNG, and continues after its epoch up to
            ``epochs``. A CPU run resumed this way ends bit for bit where the
            uninterrupted run would.
        nan_guard: Check every training loss; a NaN or infinite one raises
            ``FloatingPointError`` (naming the epoch and batch) before the optimizer
            steps on it. This reads one flag per batch, which on a GPU waits for that
            batch; ``False`` keeps the loop free of host syncs.
        sync_batchnorm: Convert BatchNorm layers to ``SyncBatchNorm`` (distributed CUDA
            runs), so that statistics are computed over the global batch.

    Distributed training: launched with ``torchrun`` (``WORLD_SIZE`` > 1), ``fit``
    initialises the default process group if needed (NCCL on CUDA, Gloo on the CPU),
    uses ``cuda:LOCAL_RANK`` for ``device="auto"``, trains a
    ``DistributedDataParallel`` wrapper, gives each rank its shard of the data
    (``DistributedSampler``, reshuffled every epoch; validation split without
    padding) and all-reduces the epoch totals, so every rank reports the same means.
    Only rank 0 shows progress and writes files.

    Interrupting (Ctrl-C) stops at the current batch: the progress bar closes,
    callbacks get ``on_train_end`` (a ``ModelCheckpoint`` saves), and the History so far
    is returned with ``history.interrupted = True``.

    Returns:
        The [`History`][convkit.History] of per-epoch losses and metrics; it also records
        ``seed`` and ``device``. Each submodule's train/eval mode is restored at the end.

    Raises:
        ValueError: For a non-positive ``epochs``/``batch_size``/``lr``, an unknown
            optimizer or metric, an unavailable device, empty data, inputs that don't
            match ``model.input_shape``, or targets outside ``[0, num_classes)``; all
            before any training.
        TypeError: For arguments or batches of the wrong type.

    Examples:
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> inputs, targets = mnist_sample().tensors
        >>> history = fit(model, (inputs[:256], targets[:256]), epochs=2,
        ...               device="cpu", progress=False, seed=0)
        >>> len(history["loss"]), history.device
        (2, 'cpu')
    """
    # ---- every check before any work
    _check_model(model)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_non_negative_float("lr", lr, strict=True)
    check_non_negative_float("weight_decay", weight_decay)
    _check_optimizer(optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        _check_optimizer_params(optimizer, model)
    loss_fn = _resolve_loss(loss)
    metric_list = resolve_metrics(metrics)
    ctx = setup_distributed()
    dev = device_for(ctx) if ctx is not None and device == "auto" else resolve_device(device)
    runtime = Runtime.create(model, dev, precision, memory_format)
    for name, flag in (("progress", progress), ("compile", compile), ("nan_guard", nan_guard),
                       ("sync_batchnorm", sync_batchnorm)):  # fmt: skip
        _check_bool(name, flag)
    if sync_batchnorm and dev.type != "cuda":
        raise ValueError(
            f"Invalid value for argument `sync_batchnorm`: SyncBatchNorm runs on CUDA only and "
            f"the device is {dev}. Drop sync_batchnorm=True on the CPU."
        )
    _check_data_on_device(data_on_device)
    _check_seed(seed)
    if grad_clip is not None:
        check_non_negative_float("grad_clip", grad_clip, strict=True)
    callback_list = _check_callbacks(callbacks)
    if scheduler is not None and not callable(scheduler) and not hasattr(scheduler, "step"):
        raise TypeError(
            "Invalid type for argument `scheduler`. Expected a torch LR scheduler or a callable "
            f"optimizer -> scheduler. Received scheduler={scheduler!r}."
        )
    if resume_from is not None and not Path(resume_from).is_file():
        raise FileNotFoundError(
            f"Invalid value for argument `resume_from`: no checkpoint at {resume_from}."
        )
    if seed is None:  # follow the global RNG, so torch.manual_seed() before fit still works
        shuffle_seed = int(torch.empty((), dtype=torch.int64).random_().item())
    else:
        shuffle_seed = seed
    if ctx is not None:  # every rank must shuffle alike
        shuffle_seed = broadcast_int(
            shuffle_seed, dev if dev.type == "cuda" else torch.device("cpu")
        )
    generator = torch.Generator().manual_seed(shuffle_seed)
    shard = (ctx.rank, ctx.world_size) if ctx is not None else None
    train_batches, train_check = _prepare(
        model,
        train_data,
        name="train_data",
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        runtime=runtime,
        need_targets=True,
        data_on_device=data_on_device,
        shard=shard,
        seed=shuffle_seed,
    )
    val = None
    if val_data is not None:
        val = _prepare(
            model,
            val_data,
            name="val_data",
            batch_size=batch_size,
            shuffle=False,
            generator=torch.Generator().manual_seed(0),  # never shuffles; keeps RNGs apart
            runtime=runtime,
            need_targets=True,
            data_on_device=data_on_device,
            shard=shard,
        )
    log_keys = ["loss", *(m.name for m in metric_list)]
    if val is not None:
        log_keys += [f"val_{k}" for k in log_keys]

    # ---- set-up
    if seed is not None:
        _seed_everything(seed)
    if sync_batchnorm:
        _convert_sync_batchnorm(model)
    runtime.place(model)
    opt = _make_optimizer(optimizer, model, lr, weight_decay)
    sched = scheduler(opt) if callable(scheduler) and not hasattr(scheduler, "step") else scheduler
    scaler = runtime.grad_scaler()
    net: nn.Module = model
    if ctx is not None:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    history = History(seed=seed, device=str(dev))
    start_epoch = 1
    if resume_from is not None:
        payload = load_checkpoint(resume_from, model, opt, sched)
        if scaler is not None and payload.get("scaler") is not None:
            scaler.load_state_dict(payload["scaler"])
        if payload.get("history") is not None:
            history = History.from_dict(payload["history"])
        for callback, saved in zip(callback_list, payload.get("callbacks", []), strict=False):
            callback.load_state_dict(saved)
        set_rng_state(payload["rng"], generator)
        start_epoch = int(payload.get("epoch") or 0) + 1
        history.interrupted = False
    is_main = ctx is None or ctx.is_main
    show = progress and is_main
    state = TrainState(
        model=model,
        optimizer=opt,
        epochs=epochs,
        epoch=start_epoch - 1,
        history=history,
        log_keys=tuple(log_keys),
        is_main=is_main,
        scheduler=sched,
        scaler=scaler,
        generator=generator,
        callbacks=callback_list,
    )
    per_batch = isinstance(sched, _PER_BATCH_SCHEDULERS)
    step = _Step(
        optimizer=opt,
        scaler=scaler,
        grad_clip=grad_clip,
        batch_scheduler=sched if per_batch else None,
        nan_guard=nan_guard,
        state=state,
        callbacks=callback_list,
    )
    modes = {module: module.training for module in model.modules()}
    logger.info("fit: epochs %d-%d on %s", start_epoch, epochs, dev)

    # ---- training
    try:
        for callback in callback_list:
            callback.on_train_begin(state)
        for epoch in range(start_epoch, epochs + 1):
            state.epoch = step.epoch = epoch
            for callback in callback_list:
                callback.on_epoch_begin(state)
            start = time.perf_counter()
            train_batches.set_epoch(epoch)
            model.train()
            with tqdm(
                total=len(train_batches),
                desc=f"Epoch {epoch}/{epochs}",
                unit="batch",
                leave=False,
                disable=not show,
                dynamic_ncols=True,
            ) as bar:
                logs = _run_epoch(
                    net,
                    train_batches,
                    train_check,
                    loss_fn,
                    metric_list,
                    runtime,
                    step=step,
                    bar=bar,
                    all_reduce=ctx is not None,
                )
            if val is not None:
                with _eval_mode(model), torch.inference_mode():
                    val_logs = _run_epoch(
                        model,  # not the DDP wrapper: evaluation needs no gradient sync
                        val[0],
                        val[1],
                        loss_fn,
                        metric_list,
                        runtime,
                        step=None,
                        all_reduce=ctx is not None,
                    )
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            if sched is not None and not per_batch:
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(logs["val_loss" if val is not None else "loss"])
                else:
                    sched.step()
            seconds = time.perf_counter() - start
            history.append(epoch, logs, seconds)
            state.logs = dict(logs)
            logger.info("epoch %d/%d: %s (%.1fs)", epoch, epochs, _format_logs(logs), seconds)
            if show:
                tqdm.write(f"Epoch {epoch}/{epochs} - {_format_logs(logs)} - {seconds:.1f}s")
            for callback in callback_list:
                callback.on_epoch_end(state)
            if state.stop_training:
                break
    except KeyboardInterrupt:
        # Ctrl-C: stop at this batch, keep everything learned, and return normally.
        history.interrupted = state.interrupted = True
        logger.info("fit interrupted by the user during epoch %d", state.epoch)
        if show:
            tqdm.write(f"Interrupted during epoch {state.epoch}; returning the History so far.")
    except FloatingPointError as err:
        err.history = history  # type: ignore[attr-defined]
        raise
    finally:
        for module, training in modes.items():
            module.training = training
        if state.interrupted or not sys.exc_info()[0]:
            if state.interrupted:  # the last *completed* epoch, which a resume continues after
                state.epoch = history.epochs[-1]["epoch"] if history.epochs else start_epoch - 1
            for callback in callback_list:
                callback.on_train_end(state)
    return history


def _inference_setup(
    model: nn.Module,
    data: Any,
    device: DeviceLike,
    batch_size: int,
    precision: str,
    memory_format: str,
    data_on_device: bool | None,
    *,
    targets: bool,
) -> tuple[Runtime, TensorBatches | LoaderBatches, _DataCheck]:
    """The checks and set-up ``evaluate`` and ``predict`` share, in that order."""
    _check_model(model)
    check_positive_int("batch_size", batch_size)
    runtime = Runtime.create(model, resolve_device(device), precision, memory_format)
    _check_data_on_device(data_on_device)
    batches, check = _prepare(
        model,
        data,
        name="data",
        batch_size=batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        runtime=runtime,
        need_targets=targets,
        data_on_device=data_on_device,
    )
    runtime.place(model)
    return runtime, batches, check


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    loss: LossFn | None = None,
    metrics: Sequence[str | MetricFn] = ("accuracy",),
    device: DeviceLike = "auto",
    batch_size: int = 256,
    precision: str = "32",
    memory_format: str = "auto",
    data_on_device: bool | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data``, as exact means over samples.

    Runs in eval mode under ``torch.inference_mode``; afterwards every submodule is back
    in the train/eval mode it was in, and no parameter or buffer has changed (unlike the
    notebook's ``eval_net``, which left the model in eval mode).

    Args:
        model: The network; it is moved to ``device``.
        data: Data in any form [`fit`][convkit.fit] takes, with targets.
        loss: As in ``fit``; ``None`` is cross-entropy.
        metrics: As in ``fit``.
        device: As in ``fit``.
        batch_size: Samples per batch for data that isn't a ``DataLoader``.
        precision: As in ``fit``.
        memory_format: As in ``fit``.
        data_on_device: As in ``fit``.

    Returns:
        ``{"loss": ..., "accuracy": ...}`` (one key per metric).

    Raises:
        ValueError: For empty data, data that doesn't match the model, or an unavailable
            device.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> from convkit import build_cnn, evaluate, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> scores = evaluate(model, mnist_sample(train=False), device="cpu")
        >>> sorted(scores), model.training
        (['accuracy', 'loss'], True)
    """
    loss_fn = _resolve_loss(loss)
    metric_list = resolve_metrics(metrics)
    runtime, batches, check = _inference_setup(
        model, data, device, batch_size, precision, memory_format, data_on_device, targets=True
    )
    with _eval_mode(model), torch.inference_mode():
        return _run_epoch(model, batches, check, loss_fn, metric_list, runtime, step=None)


def predict(
    model: nn.Module,
    data: Any,
    *,
    device: DeviceLike = "auto",
    batch_size: int = 256,
    precision: str = "32",
    memory_format: str = "auto",
    data_on_device: bool | None = None,
) -> torch.Tensor:
    """Outputs (logits) of ``model`` for every sample of ``data``, in order.

    Runs like [`evaluate`][convkit.evaluate]: eval mode, ``torch.inference_mode``, modes
    restored afterwards.

    Args:
        model: The network; it is moved to ``device``.
        data: A tensor of inputs, an ``(inputs, targets)`` pair, a ``Dataset`` or a
            ``DataLoader`` (targets, if present, are ignored).
        device: As in ``fit``.
        batch_size: Samples per batch for data that isn't a ``DataLoader``.
        precision: As in ``fit``; the outputs are returned as float32 either way.
        memory_format: As in ``fit``.
        data_on_device: As in ``fit``.

    Returns:
        A CPU tensor of shape ``(N, num_classes)``; ``.argmax(1)`` gives the classes.

    Examples:
        >>> from convkit import build_cnn, predict
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> predict(model, torch.zeros(5, 1, 28, 28), device="cpu").shape
        torch.Size([5, 10])
    """
    runtime, batches, _ = _inference_setup(
        model, data, device, batch_size, precision, memory_format, data_on_device, targets=False
    )
    outputs = []
    with _eval_mode(model), torch.inference_mode():
        for batch in batches:
            with runtime.autocast():
                outputs.append(model(runtime.format(batch.inputs)))
    return torch.cat(outputs).float().cpu()
