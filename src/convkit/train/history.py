"""``History``: the per-epoch record that ``fit`` returns, and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..utils.display import html_table
from ..utils.figures import new_figure

__all__ = ["History"]


class History:
    """Per-epoch losses and metrics returned by [`fit`][convkit.fit].

    ``history["loss"]``, ``history["accuracy"]``, ``history["val_loss"]``,
    ``history["val_accuracy"]`` are lists of floats, one per epoch, as in Keras.

    Attributes:
        history: ``{name: [value per epoch]}``.
        epochs: One dict per epoch: ``{"epoch": 1, "metrics": {...}, "seconds": 2.1,
            "lr": 0.001}`` (``lr``: the first parameter group's learning rate at the
            start of that epoch).
        seed: The ``seed`` given to ``fit`` (``None`` if none).
        device: The device trained on, e.g. ``"cpu"`` or ``"cuda:0"``.
        interrupted: Whether training stopped before its last epoch.
        task: The task trained, e.g. ``"multiclass"`` or ``"regression"`` (inferred by
            ``fit(task="auto")`` from the first batch).
        loss: The loss trained with, e.g. ``"MSELoss()"``.
        metrics: The metric names reported.
        setup: What [`evaluate`][convkit.evaluate] and [`predict`][convkit.predict]
            reuse from ``history=``: the task, the loss object and the metrics as given
            (kept in memory only; ``to_dict`` keeps the names above).
        monitor: The metric an [`EarlyStopping`][convkit.EarlyStopping] watched, e.g.
            ``"val_loss"`` (``None``: none did).
        best: Its best value. best_epoch: The epoch of that value (whose weights
            ``restore_best_weights`` gives back).
        stopped_epoch: The epoch after which a callback stopped training (``None``: it
            ran to its last epoch, or was interrupted). stopped_by: That callback's
            class name, e.g. ``"EarlyStopping"``.

    Examples:
        >>> history = History(device="cpu")
        >>> history.append(1, {"loss": 0.9, "accuracy": 0.7}, seconds=1.5, lr=1e-3)
        >>> history.append(2, {"loss": 0.5, "accuracy": 0.8}, seconds=1.4, lr=1e-3)
        >>> history["loss"], history.learning_rates, len(history)
        ([0.9, 0.5], [0.001, 0.001], 2)
        >>> history.record_best("loss", 0.5, epoch=2)
        >>> history.record_stop(2, by="EarlyStopping")
        >>> history  # doctest: +ELLIPSIS
        History(epochs=2, ...; best loss=0.5 at epoch 2; stopped after epoch 2 by EarlyStopping)
    """

    def __init__(self, *, seed: int | None = None, device: str | None = None) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[dict[str, Any]] = []
        self.seed = seed
        self.device = device
        self.interrupted = False
        self.task: str | None = None
        self.loss: str | None = None
        self.metrics: list[str] = []
        self.setup: Any = None
        self.monitor: str | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stopped_by: str | None = None

    def append(
        self, epoch: int, metrics: dict[str, float], seconds: float, lr: float | None = None
    ) -> None:
        """Record one finished epoch."""
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        self.epochs.append({"epoch": epoch, "metrics": dict(metrics), "seconds": seconds, "lr": lr})

    def record_best(self, monitor: str, best: float, epoch: int) -> None:
        """Record the best value of the metric a callback watches, and its epoch."""
        self.monitor, self.best, self.best_epoch = monitor, float(best), int(epoch)

    def record_stop(self, epoch: int, by: str) -> None:
        """Record that callback ``by`` (a class name) stopped training after ``epoch``."""
        self.stopped_epoch, self.stopped_by = int(epoch), by

    @property
    def learning_rates(self) -> list[float | None]:
        """The learning rate of each recorded epoch (``None`` where it wasn't recorded)."""
        return [e.get("lr") for e in self.epochs]

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
            "task": self.task,
            "loss": self.loss,
            "metrics": list(self.metrics),
            "monitor": self.monitor,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "stopped_by": self.stopped_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a History from [`to_dict`][convkit.train.history.History.to_dict]'s output."""
        history = cls(seed=data.get("seed"), device=data.get("device"))
        history.history = {k: list(v) for k, v in data["history"].items()}
        history.epochs = [dict(e, metrics=dict(e["metrics"])) for e in data["epochs"]]
        history.interrupted = bool(data.get("interrupted", False))
        history.task, history.loss = data.get("task"), data.get("loss")
        history.metrics = list(data.get("metrics", []))
        history.monitor, history.best = data.get("monitor"), data.get("best")
        history.best_epoch = data.get("best_epoch")
        history.stopped_epoch, history.stopped_by = (
            data.get("stopped_epoch"),
            data.get("stopped_by"),
        )
        return history

    def plot(self, keys: Sequence[str] | None = None) -> Any:
        """Draw the training curves, one panel per metric, train and validation together.

        The loss and each metric get their own axes (their scales differ); the epoch
        axis has integer ticks. Needs matplotlib (``pip install "torch-convkit[plot]"``).

        Args:
            keys: Metrics to draw (without the ``val_`` prefix); default: all.

        Returns:
            A ``matplotlib.figure.Figure`` managed by pyplot (``plt.show()`` shows it,
            ``plt.close(fig)`` closes it); save it with ``fig.savefig("curves.png")``.

        Raises:
            ImportError: If matplotlib isn't installed (the message names the extra).
        """
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
        fig = new_figure("History.plot()", (4.5 * max(len(names), 1), 3.5))
        from matplotlib.ticker import MaxNLocator

        axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
        epochs = [e["epoch"] for e in self.epochs]
        for ax, name in zip(axes, names, strict=False):
            ax.plot(epochs, self.history[name], marker="o", label="train")
            if f"val_{name}" in self.history:
                ax.plot(epochs, self.history[f"val_{name}"], marker="o", label="validation")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        return fig

    def _repr_html_(self) -> str:
        names = list(self.history)
        rows = [
            (
                e["epoch"],
                *(f"{e['metrics'][k]:.4g}" if k in e["metrics"] else "" for k in names),
                "" if e.get("lr") is None else f"{e['lr']:.3g}",
                f"{e['seconds']:.1f}",
            )
            for e in self.epochs
        ]
        caption = f"History: {len(self)} epochs on {self.device or 'an unknown device'}"
        footer = ["Training was interrupted."] if self.interrupted else []
        footer += [f"{line[0].upper()}{line[1:]}." for line in self._outcome()]
        return html_table(("epoch", *names, "lr", "seconds"), rows, caption=caption, footer=footer)

    def _outcome(self) -> list[str]:
        """How the run went, beyond its epochs: the best monitored value, a stop."""
        lines = []
        if self.monitor is not None and self.best is not None:
            lines.append(f"best {self.monitor}={self.best:.4g} at epoch {self.best_epoch}")
        if self.stopped_epoch is not None:
            lines.append(f"stopped after epoch {self.stopped_epoch} by {self.stopped_by}")
        return lines

    def __repr__(self) -> str:
        last = self.epochs[-1]["metrics"] if self.epochs else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        outcome = "".join(f"; {line}" for line in self._outcome())
        return f"History(epochs={len(self)}, device={self.device!r}, last: {shown or '-'}{outcome})"
