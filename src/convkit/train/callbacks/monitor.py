"""[`MonitorCallback`][convkit.MonitorCallback]: the base of callbacks that act on one
logged metric (after Keras 3's ``MonitorCallback``).

It owns what ``EarlyStopping`` and ``ModelCheckpoint(save_best_only=True)`` share: the
checked ``monitor``, ``mode`` and ``min_delta``; the direction that ``mode="auto"``
reads from the metric's definition (``convkit.train.tasks.metric_direction``);
the best value and its epoch; and a reset when a fresh run begins, so that a callback
passed to a second ``fit`` starts from nothing while a resumed run keeps the state its
checkpoint restored.
"""

from __future__ import annotations

import math
from typing import Any

from ...utils.validation import check_choice, check_non_negative_float, closest_name
from ..tasks import known_metric_names, metric_direction
from .base import Callback, TrainState

__all__ = ["MonitorCallback"]

MODES = ("auto", "min", "max")


def _check_monitor(owner: str, monitor: Any) -> str:
    if not isinstance(monitor, str):
        raise TypeError(
            f"Invalid type for argument `monitor` of {owner}. Expected the name of a logged "
            f"metric (a str), e.g. 'val_loss' or 'val_accuracy'. Received monitor={monitor!r}."
        )
    if not monitor:
        raise ValueError(
            f"Invalid value for argument `monitor` of {owner}: the name is empty. Pass a "
            "logged metric, e.g. 'val_loss' or 'val_accuracy'."
        )
    return monitor


def resolve_mode(owner: str, mode: Any, monitor: str, *, required: bool = True) -> str:
    """``"min"`` or ``"max"`` for ``mode`` and ``monitor`` (``"auto"``: the metric's direction).

    With ``required=False`` a monitor of unknown direction keeps ``mode="auto"`` instead
    of being refused (a callback that doesn't act on its monitor).

    Examples:
        >>> resolve_mode("EarlyStopping", "auto", "val_f1")
        'max'
        >>> resolve_mode("EarlyStopping", "auto", "val_dice")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... direction of 'val_dice' is unknown ... pass mode='min' or mode='max'.
    """
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return str(mode)
    direction = metric_direction(monitor)
    if direction is not None:
        return direction
    if not required:
        return "auto"
    meant = closest_name(monitor, known_metric_names())
    if meant is not None:  # a misspelt or Keras-style name (val_acc) of a built-in metric
        raise ValueError(
            f"Invalid value for argument `monitor` of {owner}: {monitor!r} is not a name "
            f"fit logs; did you mean {meant!r}? Pass monitor={meant!r}, or mode='min' or "
            "mode='max' for a metric of your own of that name."
        )
    raise ValueError(
        f"Invalid value for argument `mode` of {owner}: mode='auto' reads the direction of "
        f"the monitored metric, and the direction of {monitor!r} is unknown (it is not "
        "'loss' or one of convkit's built-in metrics). Say whether larger is better: pass "
        "mode='min' or mode='max'."
    )


class MonitorCallback(Callback):
    """Base for callbacks that watch one logged metric: its best value and epoch.

    Subclasses call
    [`update`][convkit.train.callbacks.monitor.MonitorCallback.update] in
    ``on_epoch_end``, which records an improvement; they extend
    [`reset`][convkit.train.callbacks.monitor.MonitorCallback.reset] and ``state_dict``
    with counters of their own, and call ``super().on_train_begin(state)``.

    Args:
        monitor: A logged metric, e.g. ``"val_loss"``, ``"accuracy"``, ``"val_f1"``;
            when training begins it must be one of the names ``fit`` logs.
        mode: ``"min"`` (smaller is better), ``"max"``, or ``"auto"``: the metric's
            declared direction (``"max"`` for accuracies, f1, precision, recall and iou,
            ``"min"`` for the loss, mae, mse and rmse). A metric of unknown direction (a
            callable's or torchmetrics Metric's name) needs ``"min"`` or ``"max"``.
        min_delta: How much better than the best a value must be to count as an
            improvement.

    Attributes:
        monitor: The watched metric.
        mode: ``"min"`` or ``"max"``.
        min_delta: The smallest improvement.
        best: The best value so far (``inf`` for ``"min"``, ``-inf`` for ``"max"``
            before the first epoch).
        best_epoch: Its epoch (0: none yet).

    When training begins, a fresh run resets ``best`` and ``best_epoch`` (and whatever
    [`reset`][convkit.train.callbacks.monitor.MonitorCallback.reset] clears); a run resumed with
    ``fit(resume_from=...)`` keeps the state restored from its checkpoint.

    Examples:
        A callback that reports each new best accuracy:

        >>> import torch
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> class SayBest(MonitorCallback):
        ...     def on_epoch_end(self, state):
        ...         if self.update(state):
        ...             print(f"epoch {state.epoch}: best {self.monitor} so far")
        >>> inputs, targets = mnist_sample().tensors
        >>> say = SayBest("accuracy")
        >>> say.mode
        'max'
        >>> _ = torch.manual_seed(0)
        >>> _ = fit(build_cnn((1, 28, 28), 10, channels=(4,), hidden=()),
        ...         (inputs[:256], targets[:256]), epochs=2, device="cpu", progress=False,
        ...         seed=0, callbacks=[say])
        epoch 1: best accuracy so far
        epoch 2: best accuracy so far
    """

    def __init__(self, monitor: str = "val_loss", *, mode: str = "auto", min_delta: float = 0.0):
        owner = type(self).__name__
        self.monitor = _check_monitor(owner, monitor)
        self.mode = resolve_mode(owner, mode, self.monitor, required=self.monitoring)
        self.min_delta = check_non_negative_float("min_delta", min_delta)
        self.best = math.nan
        self.best_epoch = 0
        self.reset()

    @property
    def monitoring(self) -> bool:
        """Whether this callback acts on ``monitor`` (``ModelCheckpoint``: only with
        ``save_best_only``); one that doesn't needs neither a logged monitor nor its
        direction."""
        return True

    def reset(self) -> None:
        """Forget the best value: what a fresh run starts from."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0

    def is_better(self, value: float) -> bool:
        """Whether ``value`` improves on ``best`` by more than ``min_delta`` (NaN never does)."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, state: TrainState) -> bool:
        """Read the monitored value of this epoch; record it if it is better. Whether it was."""
        value = float(state.logs[self.monitor])
        if not self.is_better(value):
            return False
        self.best, self.best_epoch = value, state.epoch
        return True

    def on_train_begin(self, state: TrainState) -> None:
        """Check that the monitored metric is logged; reset unless the run is resumed."""
        if self.monitoring and state.log_keys and self.monitor not in state.log_keys:
            meant = closest_name(self.monitor, state.log_keys)
            hint = ""
            if self.monitor[:4] == "val_" and not any(k[:4] == "val_" for k in state.log_keys):
                hint = " (pass val_data or validation_split to fit)"
            elif meant is not None:
                hint = f" (did you mean {meant!r}?)"
            raise ValueError(
                f"Invalid value for argument `monitor` of {type(self).__name__}: "
                f"{self.monitor!r} is not logged{hint}. Logged: {', '.join(state.log_keys)}."
            )
        if state.epoch == 0:
            self.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
