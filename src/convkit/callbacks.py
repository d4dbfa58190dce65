"""Callbacks for [`fit`][convkit.fit]: hooks into the training loop, after Keras'.

A callback subclasses [`Callback`][convkit.Callback] and overrides the hooks it needs.
Every hook receives the [`TrainState`][convkit.TrainState]: the model, optimizer,
epoch, latest logs and History; setting ``state.stop_training = True`` ends training
after the current epoch (or batch, from ``on_batch_end``).
"""

from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "ModelCheckpoint", "TrainState"]


@dataclass
class TrainState:
    """What a callback can see and change during [`fit`][convkit.fit].

    Attributes:
        model: The model being trained (the user's module, not a DDP/compile wrapper).
        optimizer: Its optimizer.
        epochs: The last epoch ``fit`` will run.
        epoch: The current epoch (1-based), or the last completed one after training.
        batch: Index of the last batch within the epoch (``on_batch_end`` only).
        logs: The epoch's metrics in ``on_epoch_end``; in ``on_batch_end``,
            ``{"loss": tensor}`` with the batch loss still on the device (reading it
            forces a device sync).
        history: The [`History`][convkit.History] so far.
        log_keys: Names the epoch logs will have (``loss``, metrics, ``val_*``).
        stop_training: Set it to ``True`` to stop after the current batch/epoch.
        interrupted: ``True`` in ``on_train_end`` when Ctrl-C stopped training.
        is_main: ``False`` on every process of a distributed run but rank 0; callbacks
            that write files should only do so when this is ``True``.
        scheduler: The LR scheduler, if any.
        scaler: The ``GradScaler`` of ``precision="16-mixed"``, if any.
        generator: The generator that shuffles the training data.
        callbacks: All callbacks of the run, in order (for checkpoints).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    epoch: int = 0
    batch: int = 0
    logs: dict[str, Any] = field(default_factory=dict)
    history: Any = None
    log_keys: tuple[str, ...] = ()
    stop_training: bool = False
    interrupted: bool = False
    is_main: bool = True
    scheduler: Any = None
    scaler: Any = None
    generator: torch.Generator | None = None
    callbacks: list[Callback] = field(default_factory=list)


class Callback:
    """Base class: override any of the hooks; each receives the [`TrainState`][convkit.TrainState].

    ``state_dict`` / ``load_state_dict`` let a callback's counters travel in checkpoints,
    so that a resumed run behaves as the uninterrupted one would.

    Examples:
        >>> class PrintLR(Callback):
        ...     def on_epoch_end(self, state):
        ...         print(state.epoch, state.optimizer.param_groups[0]["lr"])
    """

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first epoch (after the model and data are ready)."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """Before each epoch's training batches."""

    def on_batch_end(self, state: TrainState) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each epoch's validation, with ``state.logs`` holding its metrics."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch, after an early stop, and after Ctrl-C (``state.interrupted``)."""

    def state_dict(self) -> dict[str, Any]:
        """The callback's resumable state, as plain data and tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def _check_monitor(owner: str, monitor: str, state: TrainState) -> None:
    if state.log_keys and monitor not in state.log_keys:
        hint = " (pass val_data to fit)" if monitor.startswith("val_") else ""
        raise ValueError(
            f"Invalid value for argument `monitor` of {owner}: {monitor!r} is not logged"
            f"{hint}. Logged: {', '.join(state.log_keys)}."
        )


def _resolve_mode(owner: str, mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(
            f"Invalid value for argument `mode` of {owner}. Expected 'auto', 'min' or 'max'. "
            f"Received mode={mode!r}."
        )
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor: A logged metric, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        patience: Epochs without improvement to wait before stopping.
        min_delta: The smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (``"max"`` for accuracies, else ``"min"``).
        restore_best: When training ends, load the weights of the best epoch.

    Attributes:
        best: The best value seen. best_epoch: Its epoch. stopped_epoch: When it stopped (0: never).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(
                "Invalid value for argument `patience`. Expected a non-negative int. "
                f"Received patience={patience!r}."
            )
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(
                "Invalid value for argument `min_delta`. Expected a non-negative number. "
                f"Received min_delta={min_delta!r}."
            )
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = _resolve_mode("EarlyStopping", mode, monitor)
        self.restore_best = restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, state: TrainState) -> None:
        _check_monitor("EarlyStopping", self.monitor, state)

    def on_epoch_end(self, state: TrainState) -> None:
        value = float(state.logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self._best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()
                }
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = state.epoch
                state.stop_training = True

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self._best_weights is not None and not state.interrupted:
            state.model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": copy.copy(self._best_weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self._best_weights = state["best_weights"]


class ModelCheckpoint(Callback):
    """Save a full, resumable checkpoint (see [`save_checkpoint`][convkit.save_checkpoint]).

    Args:
        path: File to write; may contain ``{epoch}`` and any logged metric, e.g.
            ``"ckpt/epoch{epoch:03d}-{val_loss:.3f}.pt"``. Written atomically.
        monitor: The metric that decides "best" with ``save_best_only``.
        save_best_only: Only write when ``monitor`` improved (lower loss, higher accuracy).
        every_n_epochs: Write every n-th epoch.

    After Ctrl-C it writes the interrupted state too, so nothing learned is lost. In a
    distributed run only rank 0 writes.

    Attributes:
        last_path: The last file written (``None`` before the first).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "val_loss",
        save_best_only: bool = False,
        every_n_epochs: int = 1,
    ) -> None:
        if (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or every_n_epochs < 1
        ):
            raise ValueError(
                "Invalid value for argument `every_n_epochs`. Expected a positive int. "
                f"Received every_n_epochs={every_n_epochs!r}."
            )
        self.path = os.fspath(path)
        self.monitor, self.save_best_only = monitor, save_best_only
        self.every_n_epochs = every_n_epochs
        self.mode = _resolve_mode("ModelCheckpoint", "auto", monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last_path: Path | None = None

    def on_train_begin(self, state: TrainState) -> None:
        if self.save_best_only:
            _check_monitor("ModelCheckpoint", self.monitor, state)

    def _save(self, state: TrainState, *, interrupted: bool = False) -> None:
        from .checkpoints import save_checkpoint

        if not state.is_main:
            return
        fields = {"epoch": state.epoch, **state.logs}
        try:
            target = self.path.format(**fields)
        except (KeyError, ValueError, IndexError):
            target = self.path
        self.last_path = save_checkpoint(
            target,
            state.model,
            state.optimizer,
            state.scheduler,
            state.history,
            epoch=state.epoch,
            scaler=state.scaler,
            generator=state.generator,
            callbacks=state.callbacks,
            interrupted=interrupted,
        )

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every_n_epochs:
            return
        if self.save_best_only:
            value = float(state.logs[self.monitor])
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        self._save(state)

    def on_train_end(self, state: TrainState) -> None:
        if state.interrupted:
            self._save(state, interrupted=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class CSVLogger(Callback):
    """Append one row per epoch (epoch, every logged metric, seconds) to a CSV file.

    Args:
        path: The CSV file; a fresh run overwrites it, a resumed run appends.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None

    def on_train_begin(self, state: TrainState) -> None:
        if not state.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields = ["epoch", *state.log_keys, "seconds"]
        resumed = state.epoch > 0 and self.path.exists()
        if not resumed:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.is_main or self._fields is None:
            return
        seconds = state.history.epochs[-1]["seconds"] if state.history.epochs else ""
        row = {"epoch": state.epoch, **state.logs, "seconds": seconds}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._fields])
