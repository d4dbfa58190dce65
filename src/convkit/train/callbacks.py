"""Callbacks for [`fit`][convkit.fit]: hooks into the training loop, after Keras'.

A callback subclasses [`Callback`][convkit.Callback] and overrides the hooks it needs.
Every hook receives the [`TrainState`][convkit.TrainState]: the model, optimizer,
epoch, latest logs and History; setting ``state.stop_training = True`` ends training
after the current epoch (or batch, from ``on_batch_end``).
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import math
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import save_checkpoint
from ..checkpoints.files import atomic_write, unwritable_reason
from ..utils.validation import check_bool, check_non_negative_float, check_positive_int

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "ModelCheckpoint", "TrainState", "hook_order"]


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

    Examples:
        A callback that reads the state after every epoch:

        >>> import torch
        >>> from convkit import Callback, build_cnn, fit, mnist_sample
        >>> class PrintLR(Callback):
        ...     def on_epoch_end(self, state):
        ...         lr = state.optimizer.param_groups[0]["lr"]
        ...         print(f"epoch {state.epoch}/{state.epochs}: lr={lr:g}")
        >>> inputs, targets = mnist_sample().tensors
        >>> _ = fit(build_cnn((1, 28, 28), 10, channels=(4,), hidden=()),
        ...         (inputs[:128], targets[:128]), epochs=2, device="cpu", progress=False,
        ...         callbacks=[PrintLR()])
        epoch 1/2: lr=0.001
        epoch 2/2: lr=0.001
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
    so that a resumed run behaves as the uninterrupted one would. Each state is stored
    under the callback's ``state_key`` (by default its class name), so the order of the
    callbacks doesn't matter; a resumed run must pass callbacks with the same keys.

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

    @property
    def state_key(self) -> str:
        """The stable name this callback's state is stored under in checkpoints.

        Subclasses whose instances can appear together include what tells them apart
        (``ModelCheckpoint`` its path, ``EarlyStopping`` its monitor); repeats of the
        same key get ``#2``, ``#3``... in the order given.
        """
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        """The callback's resumable state, as plain data and tensors (empty: none)."""
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

    A checkpoint written after the epoch it stops in records the stop, and a run resumed
    from it trains no further epoch.

    Attributes:
        best: The best value seen. best_epoch: Its epoch. stopped_epoch: When it stopped (0: never).

    Examples:
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> data = mnist_sample().tensors[0][:64], mnist_sample().tensors[1][:64]
        >>> stopper = EarlyStopping(monitor="loss", patience=0, min_delta=100.0)
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> history = fit(model, data, epochs=5, callbacks=[stopper], progress=False, device="cpu")
        >>> len(history), stopper.stopped_epoch  # no epoch improved the loss by 100
        (2, 2)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        check_positive_int("patience", patience, allow_zero=True)
        min_delta = check_non_negative_float("min_delta", min_delta)
        check_bool("restore_best", restore_best)
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = _resolve_mode("EarlyStopping", mode, monitor)
        self.restore_best = restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping({self.monitor!r})"

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


# Names fit commonly logs: a template field close to one of them is a misspelling.
_COMMON = (
    "loss",
    "accuracy",
    "binary_accuracy",
    "f1",
    "precision",
    "recall",
    "iou",
    "mae",
    "mse",
    "rmse",
)
_KNOWN_FIELDS = ("epoch", *_COMMON, *(f"val_{name}" for name in _COMMON))


def _path_error(path: str, problem: str) -> ValueError:
    return ValueError(f"Invalid value for argument `path` of ModelCheckpoint: {path!r} {problem}.")


def _template_fields(path: str) -> tuple[str, ...]:
    """The named fields of a ``str.format`` template, each checked as far as it can be."""
    try:
        parsed = list(string.Formatter().parse(path))
    except ValueError as err:
        raise _path_error(
            path, f"is not a valid template ({err}); write a literal brace as '{{{{' or '}}}}'"
        ) from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or conversion:
            raise _path_error(
                path,
                f"has the field {{{name}}}: only named fields such as "
                "{epoch:03d} or {val_loss:.3f} are filled in",
            )
        close = difflib.get_close_matches(name, _KNOWN_FIELDS, n=1, cutoff=0.8)
        if name not in _KNOWN_FIELDS and close:
            valid = "'epoch' and the names of the metrics fit logs, e.g. 'loss', 'val_accuracy'"
            raise _path_error(
                path,
                f"has the unknown field {{{name}}} (did you mean "
                f"{{{close[0]}}}?). Valid fields: {valid}",
            )
        sample = 1 if name == "epoch" else 0.5
        try:
            format(sample, spec or "")
        except ValueError:
            kind = "an int" if name == "epoch" else "a float"
            raise _path_error(
                path, f"formats {name!r} with {spec!r}, which {kind} can't take"
            ) from None
        fields.append(name)
    return tuple(fields)


class ModelCheckpoint(Callback):
    """Save a full, resumable checkpoint (see [`save_checkpoint`][convkit.save_checkpoint]).

    Args:
        path: File to write; may contain ``{epoch}`` and any logged metric, e.g.
            ``"ckpt/epoch{epoch:03d}-{val_loss:.3f}.pt"``. Written atomically. The
            fields are checked here (malformed fields, format specs, misspelt names) and
            again when training begins, against the metrics ``fit`` logs.
        monitor: The metric that decides "best" with ``save_best_only``.
        save_best_only: Only write when ``monitor`` improved (lower loss, higher accuracy).
        every_n_epochs: Write every n-th epoch.

    ``fit`` runs ModelCheckpoints after the other callbacks in every hook (as Lightning
    does), so a file holds the other callbacks' state after the same epoch, including an
    ``EarlyStopping`` decision to stop, which a resumed run honours. When training
    begins, the path is checked for being writable (a file where a directory should be,
    an existing directory, a read-only directory), before any epoch is spent.

    After Ctrl-C it writes the interrupted state to a separate file, the clean name
    with ``.interrupted`` before its suffix (``ep2.pt`` -> ``ep2.interrupted.pt``),
    leaving every end-of-epoch file intact. Such a file keeps what was learned, but
    ``fit(resume_from=...)`` refuses it, naming the clean file to resume from. In a
    distributed run only rank 0 writes.

    Attributes:
        last_path: The last end-of-epoch file written (``None`` before the first).
        interrupted_path: The file written after Ctrl-C, if any.

    Examples:
        >>> import os, tempfile
        >>> from convkit import build_cnn, fit, load_checkpoint, mnist_sample
        >>> folder = tempfile.mkdtemp()
        >>> checkpoint = ModelCheckpoint(os.path.join(folder, "ep{epoch}.pt"))
        >>> data = mnist_sample().tensors[0][:64], mnist_sample().tensors[1][:64]
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> _ = fit(model, data, epochs=2, callbacks=[checkpoint], progress=False, device="cpu")
        >>> sorted(os.listdir(folder)), load_checkpoint(checkpoint.last_path)["epoch"]
        (['ep1.pt', 'ep2.pt'], 2)
        >>> ModelCheckpoint("e{epoh:02d}.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... has the unknown field {epoh} (did you mean {epoch}?). Valid fields: ...
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
        self._fields = _template_fields(self.path)
        self.monitor, self.save_best_only = monitor, save_best_only
        self.every_n_epochs = every_n_epochs
        self.mode = _resolve_mode("ModelCheckpoint", "auto", monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last_path: Path | None = None
        self.interrupted_path: Path | None = None

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint({self.path!r})"

    def _target(self, epoch: int, logs: dict[str, Any]) -> Path:
        nan = float("nan")  # a metric not logged yet (Ctrl-C in the first epoch)
        values = {name: logs.get(name, nan) for name in self._fields if name != "epoch"}
        return Path(self.path.format(**{**values, "epoch": epoch}))

    def on_train_begin(self, state: TrainState) -> None:
        if self.save_best_only:
            _check_monitor("ModelCheckpoint", self.monitor, state)
        logged = ("epoch", *state.log_keys)
        unknown = [name for name in self._fields if state.log_keys and name not in logged]
        if unknown:
            raise _path_error(
                self.path,
                f"has the field {{{unknown[0]}}}, which fit doesn't "
                f"log. Valid fields: {', '.join(map(repr, logged))}",
            )
        if state.is_main:
            reason = unwritable_reason(self._target(state.epoch + 1, {}))
            if reason is not None:
                raise _path_error(self.path, f"can't be written: {reason}")

    def _save(self, state: TrainState, target: Path, *, interrupted: bool = False) -> Path:
        return save_checkpoint(
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
            stopped=state.stop_training,
            clean_checkpoint=self.last_path if interrupted else None,
        )

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every_n_epochs or not state.is_main:
            return
        if self.save_best_only:
            value = float(state.logs[self.monitor])
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        previous, self.last_path = self.last_path, self._target(state.epoch, state.logs)
        try:  # last_path is part of the saved state: it names the file being written
            self._save(state, self.last_path)
        except BaseException:
            self.last_path = previous
            raise

    def on_train_end(self, state: TrainState) -> None:
        if state.interrupted and state.is_main:
            clean = self._target(state.epoch, state.logs)
            target = clean.with_name(f"{clean.stem}.interrupted{clean.suffix}")
            self.interrupted_path = self._save(state, target, interrupted=True)

    def state_dict(self) -> dict[str, Any]:
        last = os.fspath(self.last_path) if self.last_path is not None else None
        return {"best": self.best, "last_path": last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.last_path = Path(state["last_path"]) if state["last_path"] else None


class CSVLogger(Callback):
    """Append one row per epoch (epoch, every logged metric, seconds) to a CSV file.

    Args:
        path: The CSV file; a fresh run overwrites it, a resumed run appends after
            dropping any rows past the checkpoint's epoch (written after that
            checkpoint, by the run that was interrupted).

    Examples:
        >>> import csv, os, tempfile
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
        >>> data = mnist_sample().tensors[0][:64], mnist_sample().tensors[1][:64]
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> logger = CSVLogger(path)
        >>> _ = fit(model, data, epochs=2, callbacks=[logger], progress=False, device="cpu")
        >>> with open(path) as f:
        ...     [row["epoch"] for row in csv.DictReader(f)]
        ['1', '2']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None

    @property
    def state_key(self) -> str:
        return f"CSVLogger({os.fspath(self.path)!r})"

    def on_train_begin(self, state: TrainState) -> None:
        if not state.is_main:
            return
        self._fields = ["epoch", *state.log_keys, "seconds"]
        if state.epoch > 0 and self.path.exists():
            self._drop_rows_after(state.epoch)
            return
        self._rewrite([self._fields])

    def _drop_rows_after(self, epoch: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [
            row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= epoch
        ]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def _rewrite(self, rows: list[list[str]]) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        with atomic_write(self.path) as f:
            f.write(text.getvalue().encode())

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.is_main or self._fields is None:
            return
        seconds = state.history.epochs[-1]["seconds"] if state.history.epochs else ""
        row = {"epoch": state.epoch, **state.logs, "seconds": seconds}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._fields])


def hook_order(callbacks: Sequence[Callback]) -> list[Callback]:
    """The order ``fit`` calls hooks in: as given, but ModelCheckpoints last.

    A checkpoint written at the end of an epoch then holds every other callback's
    state after that epoch (Lightning orders its checkpoint callbacks the same way).

    Examples:
        >>> stop, save = EarlyStopping(), ModelCheckpoint("m.pt")
        >>> hook_order([save, stop]) == [stop, save]
        True
    """
    return sorted(callbacks, key=lambda callback: isinstance(callback, ModelCheckpoint))
