"""[`ModelCheckpoint`][convkit.ModelCheckpoint]: resumable checkpoints during ``fit``,
with every problem of the path found when training begins rather than epochs later.

The path template is checked when the callback is made (malformed fields, format specs,
misspelt names) and when training begins (fields ``fit`` doesn't log; the first file
can't be written; a later epoch's file name taken by a directory; a disk without room
for one checkpoint, estimated from the weights, buffers and optimizer state).
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoints import save_checkpoint
from ...checkpoints.files import unwritable_reason
from ...utils.validation import check_bool, check_positive_int
from .base import Callback, TrainState, check_path
from .monitor import MonitorCallback

__all__ = ["ModelCheckpoint", "estimate_checkpoint_bytes", "hook_order"]

logger = logging.getLogger("convkit.training")

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

#: The most planned epochs whose file names are checked when training begins.
_CHECKED_EPOCHS = 10_000


def _path_error(path: str, problem: str) -> ValueError:
    return ValueError(f"Invalid value for argument `path` of ModelCheckpoint: {path!r} {problem}.")


def _check_field(path: str, name: str, spec: str, conversion: str | None) -> None:
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
            f"has the unknown field {{{name}}} (did you mean {{{close[0]}}}?). "
            f"Valid fields: {valid}",
        )
    sample = 1 if name == "epoch" else 0.5
    try:
        format(sample, spec or "")
    except ValueError:
        kind = "an int" if name == "epoch" else "a float"
        raise _path_error(
            path, f"formats {name!r} with {spec!r}, which {kind} can't take"
        ) from None


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
        if name is not None:
            _check_field(path, name, spec or "", conversion)
            fields.append(name)
    return tuple(fields)


def _tensor_bytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(_tensor_bytes(value) for value in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(_tensor_bytes(value) for value in tensors)
    return 0


def _moments(optimizer: torch.optim.Optimizer) -> int:
    """Parameter-sized tensors a built-in optimizer keeps per parameter once it has
    stepped (0 where unknown, so that the estimate stays a lower bound)."""
    defaults = optimizer.defaults
    adam_like = (
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.Adamax,
    )
    if isinstance(optimizer, adam_like):  # two moments (Adamax: exp_avg, exp_inf)
        return 2 + bool(defaults.get("amsgrad"))
    if isinstance(optimizer, torch.optim.SGD):
        return int(bool(defaults.get("momentum")))
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + bool(defaults.get("momentum")) + bool(defaults.get("centered"))
    return 0


def estimate_checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """About how many bytes a checkpoint of ``model`` and ``optimizer`` takes.

    The model's parameters and buffers, and the optimizer's state: the tensors it holds,
    or, before its first step (Adam creates its moments then), the moments a built-in
    optimizer will hold. The file adds a few kilobytes (RNG states, History).

    Examples:
        >>> from torch import nn
        >>> model = nn.Linear(1000, 100)  # 100,100 float32 parameters: 400,400 bytes
        >>> estimate_checkpoint_bytes(model, torch.optim.Adam(model.parameters()))
        1201200
    """
    size = _tensor_bytes(model.state_dict())
    if optimizer is None:
        return size
    held = _tensor_bytes(list(optimizer.state.values()))
    if held:
        return size + held
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return size + _moments(optimizer) * _tensor_bytes(params)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _existing_folder(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


class ModelCheckpoint(MonitorCallback):
    """Save a full, resumable checkpoint (see [`save_checkpoint`][convkit.save_checkpoint]).

    Args:
        path: File to write; may contain ``{epoch}`` and any logged metric, e.g.
            ``"ckpt/epoch{epoch:03d}-{val_loss:.3f}.pt"``. Written atomically. The
            fields are checked here (malformed fields, format specs, misspelt names) and
            again when training begins, against the metrics ``fit`` logs.
        monitor: The metric that decides "best" with ``save_best_only`` (unused without).
        save_best_only: Only write when ``monitor`` improved on its best so far.
        every_n_epochs: Write every n-th epoch.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (default): the metric's own direction
            (see [`MonitorCallback`][convkit.MonitorCallback]; a metric of unknown
            direction with ``save_best_only`` needs ``"min"`` or ``"max"``).

    ``fit`` runs ModelCheckpoints after the other callbacks in every hook (as Lightning
    does), so a file holds the other callbacks' state after the same epoch, including an
    ``EarlyStopping`` decision to stop, which a resumed run honours.

    When training begins, before any epoch is spent, it checks that the first file can
    be written (not a file where a directory should be, an existing directory, or a
    read-only directory); that no file the run will write is an existing directory, for
    templates whose only field is ``{epoch}`` (up to 10,000 planned epochs; names that
    hold a metric can't be known in advance); and that the disk has room for one
    checkpoint, estimated with
    [`estimate_checkpoint_bytes`][convkit.train.callbacks.model_checkpoint.estimate_checkpoint_bytes]
    (refused when it hasn't; a warning is logged when the files the run plans to write,
    plus one temporary copy, won't all fit).

    After Ctrl-C it writes the interrupted state to a separate file, the clean name
    with ``.interrupted`` before its suffix (``ep2.pt`` -> ``ep2.interrupted.pt``),
    leaving every end-of-epoch file intact. Such a file keeps what was learned, but
    ``fit(resume_from=...)`` refuses it, naming the clean file to resume from. In a
    distributed run only rank 0 writes. A fresh run forgets the best value and last file
    of an earlier run with the same callback; a resumed run keeps its checkpoint's.

    Attributes:
        last_path: The last end-of-epoch file written (``None`` before the first).
        interrupted_path: The file written after Ctrl-C, if any.
        best: The best ``monitor`` value saved with ``save_best_only``.
        best_epoch: Its epoch.

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
        *,
        mode: str = "auto",
    ) -> None:
        self.path = check_path("ModelCheckpoint", "path", path, "checkpoints/ep{epoch:03d}.pt")
        self._fields = _template_fields(self.path)
        self.save_best_only = check_bool("save_best_only", save_best_only)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.last_path: Path | None = None
        self.interrupted_path: Path | None = None
        super().__init__(monitor, mode=mode)

    @property
    def monitoring(self) -> bool:
        return self.save_best_only

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint({self.path!r})"

    def reset(self) -> None:
        super().reset()
        self.last_path = self.interrupted_path = None

    def _target(self, epoch: int, logs: dict[str, Any]) -> Path:
        nan = float("nan")  # a metric not logged yet (Ctrl-C in the first epoch)
        values = {name: logs.get(name, nan) for name in self._fields if name != "epoch"}
        return Path(self.path.format(**{**values, "epoch": epoch}))

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        logged = ("epoch", *state.log_keys)
        unknown = [name for name in self._fields if state.log_keys and name not in logged]
        if unknown:
            raise _path_error(
                self.path,
                f"has the field {{{unknown[0]}}}, which fit doesn't "
                f"log. Valid fields: {', '.join(map(repr, logged))}",
            )
        if state.is_main:
            first = self._target(state.epoch + 1, {})
            reason = unwritable_reason(first)
            if reason is not None:
                raise _path_error(self.path, f"can't be written: {reason}")
            planned = self._planned_paths(state)
            self._check_planned(planned)
            self._check_space(state, first, planned)

    def _planned_paths(self, state: TrainState) -> list[tuple[int, Path]]:
        """The epochs this run may write at, with their files, when names hold no metric."""
        if any(name != "epoch" for name in self._fields):
            return []
        epochs = range(state.epoch + 1, state.epochs + 1)
        saved = [epoch for epoch in epochs if epoch % self.every_n_epochs == 0]
        return [(epoch, self._target(epoch, {})) for epoch in saved[:_CHECKED_EPOCHS]]

    def _check_planned(self, planned: list[tuple[int, Path]]) -> None:
        for epoch, target in planned:
            if target.is_dir():
                raise _path_error(
                    self.path,
                    f"can't be written at epoch {epoch}: {target} is an existing directory. "
                    "Remove or rename it, or choose another file name",
                )
            folder = _existing_folder(target)
            if not folder.is_dir():
                raise _path_error(
                    self.path,
                    f"can't be written at epoch {epoch}: {folder} is a file, where a "
                    "directory is needed",
                )

    def _check_space(self, state: TrainState, first: Path, planned: list[tuple[int, Path]]) -> None:
        size = estimate_checkpoint_bytes(state.model, state.optimizer)
        free = shutil.disk_usage(_existing_folder(first)).free
        if free < size:
            raise _path_error(
                self.path,
                f"can't be written: the file system holding it has {_megabytes(free)} free, "
                f"and one checkpoint takes about {_megabytes(size)} (weights, buffers and "
                "optimizer state). Free some space, or save to another disk",
            )
        files = len({target for _, target in planned}) or 1
        if free < size * (files + 1):  # each file, and the temporary copy of one
            logger.warning(
                "ModelCheckpoint(%r): the file system has %s free, and the %d file(s) this "
                "run plans to write take about %s each (plus one temporary copy while one "
                "is written); a save will fail when the disk is full",
                self.path,
                _megabytes(free),
                files,
                _megabytes(size),
            )

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
        if state.epoch % self.every_n_epochs:
            return
        if self.save_best_only and not self.update(state):  # every rank keeps the same best
            return
        if not state.is_main:
            return
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
        return {**super().state_dict(), "last_path": last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_path = Path(state["last_path"]) if state["last_path"] else None


def hook_order(callbacks: Sequence[Callback]) -> list[Callback]:
    """The order ``fit`` calls hooks in: as given, but ModelCheckpoints last.

    A checkpoint written at the end of an epoch then holds every other callback's
    state after that epoch (Lightning orders its checkpoint callbacks the same way).

    Examples:
        >>> from convkit import EarlyStopping
        >>> stop, save = EarlyStopping(), ModelCheckpoint("m.pt")
        >>> hook_order([save, stop]) == [stop, save]
        True
    """
    return sorted(callbacks, key=lambda callback: isinstance(callback, ModelCheckpoint))
