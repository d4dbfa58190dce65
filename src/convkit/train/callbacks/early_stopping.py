"""[`EarlyStopping`][convkit.EarlyStopping]: stop when the monitored metric stops
improving, say why, and give back the best epoch's weights (after Keras' callback)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ...utils.validation import check_bool, check_positive_int
from .base import TrainState
from .monitor import MonitorCallback

__all__ = ["EarlyStopping"]


def _restore_switch(restore_best_weights: Any, restore_best: Any) -> bool:
    """The one restore switch, from either of its two names."""
    check_bool("restore_best_weights", restore_best_weights)
    if restore_best is None:
        return bool(restore_best_weights)
    check_bool("restore_best", restore_best)
    if restore_best and not restore_best_weights:
        raise ValueError(
            "Invalid value for argument `restore_best`: restore_best=True contradicts "
            "restore_best_weights=False; they are one switch under two names. Pass only "
            "restore_best_weights."
        )
    return bool(restore_best)


class EarlyStopping(MonitorCallback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor: A logged metric, e.g. ``"val_loss"``, ``"val_accuracy"`` or ``"val_f1"``.
        patience: Epochs without improvement to wait before stopping (0: stop at the
            first epoch that doesn't improve).
        min_delta: The smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (default): the metric's own direction
            (see [`MonitorCallback`][convkit.MonitorCallback]); a metric of unknown
            direction is refused, naming ``mode="min"``/``"max"`` as the fix.
        restore_best_weights: When training ends, load the weights of the best epoch
            (Keras' name; convkit's default is ``True``, Keras' is ``False``). Not after
            Ctrl-C.
        restore_best: Another name of the same switch (``restore_best_weights`` is the
            documented one); give one of the two.

    When it stops training it says so in one line (logged to ``convkit.training`` and,
    with ``progress=True``, printed under the epoch lines): which callback, the monitor,
    its best value and epoch. The [`History`][convkit.History] records ``monitor``,
    ``best``, ``best_epoch`` and, after a stop, ``stopped_epoch``, and so does every
    checkpoint written after it; a run resumed from such a checkpoint trains no further.
    A fresh ``fit`` starts from nothing (a callback passed to a second ``fit`` forgets
    the first), a resumed one from the checkpoint's state.

    Attributes:
        best: The best value seen. best_epoch: Its epoch. stopped_epoch: When it stopped
            (0: never). wait: Epochs since the last improvement.

    Examples:
        >>> import torch
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> data = mnist_sample().tensors[0][:64], mnist_sample().tensors[1][:64]
        >>> stopper = EarlyStopping(monitor="loss", patience=0, min_delta=100.0)
        >>> _ = torch.manual_seed(0)
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> history = fit(model, data, epochs=5, callbacks=[stopper], progress=False,
        ...               device="cpu", seed=0)
        >>> len(history), stopper.stopped_epoch  # no epoch improved the loss by 100
        (2, 2)
        >>> history.stopped_epoch, history.monitor, history.best_epoch
        (2, 'loss', 1)
        >>> EarlyStopping("val_f1").mode
        'max'
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
        *,
        restore_best: bool | None = None,
    ) -> None:
        self.patience = check_positive_int("patience", patience, allow_zero=True)
        self.restore_best_weights = _restore_switch(restore_best_weights, restore_best)
        self.wait = 0
        self.stopped_epoch = 0
        self._best_weights: dict[str, torch.Tensor] | None = None
        super().__init__(monitor, mode=mode, min_delta=min_delta)

    @property
    def restore_best(self) -> bool:
        """``restore_best_weights`` under its other name."""
        return self.restore_best_weights

    @property
    def state_key(self) -> str:
        return f"EarlyStopping({self.monitor!r})"

    def reset(self) -> None:
        super().reset()
        self.wait = 0
        self.stopped_epoch = 0
        self._best_weights = None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.update(state):
            self.wait = 0
            if self.restore_best_weights:
                self._best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()
                }
        else:
            self.wait += 1
        history = state.history
        if history is not None and history.stopped_epoch is None and self.best_epoch:
            history.record_best(self.monitor, self.best, self.best_epoch)
        if self.wait >= self.patience and self.wait > 0:
            self.stopped_epoch = state.epoch
            state.stop_training = True
            if history is not None and history.stopped_epoch is None:
                history.record_stop(state.epoch, by=type(self).__name__)
            state.report(self._stop_message(state))

    def _best_text(self) -> str:
        if not self.best_epoch:
            return f"no epoch improved on {self.monitor}"
        return f"best {self.monitor} {self.best:.4g} at epoch {self.best_epoch}"

    def _stop_message(self, state: TrainState) -> str:
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        epochs = "1 epoch" if self.wait == 1 else f"{self.wait} epochs"
        restore = ""
        if self._best_weights is not None and self.best_epoch != state.epoch:
            restore = f"; restoring the weights of epoch {self.best_epoch}"
        return (
            f"EarlyStopping stopped training after epoch {state.epoch}/{state.epochs}: "
            f"{self.monitor} did not improve{by} for {epochs} ({self._best_text()}{restore})."
        )

    def on_train_end(self, state: TrainState) -> None:
        if not self.restore_best_weights or self._best_weights is None or state.interrupted:
            return
        state.model.load_state_dict(self._best_weights)
        if not self.stopped_epoch and self.best_epoch != state.epoch:  # a stop said it already
            state.report(
                f"EarlyStopping restored the weights of epoch {self.best_epoch} "
                f"({self._best_text()}); the last epoch trained was {state.epoch}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": copy.copy(self._best_weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self._best_weights = state["best_weights"]
