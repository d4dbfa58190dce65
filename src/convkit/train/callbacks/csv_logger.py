"""[`CSVLogger`][convkit.CSVLogger]: one row per epoch in a CSV file (after Keras')."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ...checkpoints.files import atomic_write
from .base import Callback, TrainState, check_path

__all__ = ["CSVLogger"]


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
        self.path = Path(check_path("CSVLogger", "path", path, "logs/train.csv"))
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
