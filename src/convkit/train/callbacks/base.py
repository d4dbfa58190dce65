"""The callback protocol: the [`TrainState`][convkit.TrainState] every hook receives, and
the [`Callback`][convkit.Callback] base class (after Keras' ``keras.callbacks.Callback``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.std import tqdm

__all__ = ["Callback", "TrainState", "check_path"]

logger = logging.getLogger("convkit.training")


@dataclass
class TrainState:
    """What a callback can see and change during [`fit`][convkit.fit].

    Attributes:
        model: The model being trained (the user's module, not a DDP/compile wrapper).
        optimizer: Its optimizer.
        epochs: The last epoch ``fit`` will run.
        epoch: The current epoch (1-based), or the last completed one after training.
            In ``on_train_begin`` it is 0 for a fresh run and the checkpoint's epoch for
            a resumed one.
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
        progress: Whether this process shows ``fit``'s progress display
            (``progress=True``, on rank 0);
            [`report`][convkit.train.callbacks.base.TrainState.report] then prints there
            too.
        steps_per_epoch: Training batches per epoch, ``None`` for data without a length
            (an ``IterableDataset``). Batch ``b`` of epoch ``e`` is optimizer step
            ``(e - 1) * steps_per_epoch + b + 1`` of the run, resumed or not.
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
    progress: bool = False
    steps_per_epoch: int | None = None
    scheduler: Any = None
    scaler: Any = None
    generator: torch.Generator | None = None
    callbacks: list[Callback] = field(default_factory=list)

    def report(self, message: str) -> None:
        """Say ``message`` once: logged (``convkit.training``, INFO) and, when this
        process shows progress, printed under the epoch lines.

        Examples:
            >>> model = nn.Linear(1, 1)
            >>> state = TrainState(model, torch.optim.SGD(model.parameters()), 5, progress=True)
            >>> state.report("Stopped after epoch 3/5.")
            Stopped after epoch 3/5.
        """
        logger.info("%s", message)
        if self.progress:
            tqdm.write(message)


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


def check_path(owner: str, name: str, value: Any, example: str) -> str:
    """``value`` as a ``str`` if it is a non-empty ``str`` or ``os.PathLike`` path, else raise.

    Examples:
        >>> check_path("CSVLogger", "path", None, "log.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Invalid type for argument `path` of CSVLogger. ... Received path=None.
    """
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(
            f"Invalid type for argument `{name}` of {owner}. Expected a file or folder name "
            f"(a str or pathlib.Path), e.g. {example!r}. Received {name}={value!r}."
        )
    if not path:
        raise ValueError(
            f"Invalid value for argument `{name}` of {owner}: the name is empty. Pass a "
            f"file or folder name, e.g. {example!r}."
        )
    return path
