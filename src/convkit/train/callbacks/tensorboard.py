"""[`TensorBoard`][convkit.TensorBoard]: event files for TensorBoard, written with
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package:
``pip install "torch-convkit[tensorboard]"``).

The layout follows Keras' callback, so that training and validation curves share a
chart: one run folder per split (``train``, ``validation``) with per-epoch tags
(``epoch_loss``, ``epoch_accuracy``, ...), x-axis the epoch. Per-step values go to a
third run, ``steps``, whose x-axis is the optimizer step. Each run has one x-axis, so
that a resumed run can hide what the interrupted one wrote after its checkpoint with
``SummaryWriter(purge_step=...)``: TensorBoard drops every event of that run at or past
the purge step that an earlier file holds.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoints.files import unwritable_reason
from ...utils.probe import probe_tensor
from ...utils.typing import model_input_shape
from ...utils.validation import check_bool, check_positive_int
from .base import Callback, TrainState, check_path

__all__ = ["TensorBoard"]

_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "The TensorBoard callback writes with the tensorboard package, which isn't "
            'installed. Install it with: pip install "torch-convkit[tensorboard]".'
        ) from None
    return SummaryWriter


def _wait_for_a_new_second(folder: Path) -> None:
    """Let a new event file sort after the folder's existing ones.

    TensorBoard reads a folder's event files in name order, and a name starts with the
    second it was created in; a file created in the same second as the last one (a run
    resumed at once by the same program) could sort before it.
    """
    stamps = [
        int(m.group(1))
        for p in folder.glob("events.out.tfevents.*")
        if (m := _EVENT_FILE.match(p.name))
    ]
    now = time.time()
    if stamps and max(stamps) == int(now):
        time.sleep(math.floor(now) + 1 - now)


class TensorBoard(Callback):
    """Log the run to TensorBoard: per-epoch scalars, and per-step, graph and histograms
    when asked.

    Args:
        log_dir: The folder of this run (e.g. ``"runs/mnist"``); view it with
            ``tensorboard --logdir runs``. Its subfolders ``train`` and ``validation``
            hold one value per epoch of every logged metric (tags ``epoch_loss``,
            ``epoch_accuracy``, ...; ``val_accuracy`` is ``epoch_accuracy`` in
            ``validation``) and ``train`` the learning rate of the epoch
            (``epoch_learning_rate``).
        log_every_n_steps: Also log the training loss and the learning rate after every
            n-th optimizer step, in ``steps`` (tags ``batch_loss``,
            ``batch_learning_rate``; the rate is the one the next step uses). Step ``s``
            of the run is batch ``b`` of epoch ``e`` with ``s = (e - 1) *
            steps_per_epoch + b + 1``, so a resumed run continues the count; needs data
            with a length. Reading the loss waits for the device at those steps. ``None``
            (default): per epoch only.
        histogram_freq: Every n-th epoch, a histogram of every parameter (tag: its name
            in ``state_dict``), in ``train``; 0 (default): none.
        log_graph: Write the model's graph when training begins, traced (in eval mode,
            with torch's tracer) on a zero batch of one sample of the model's
            ``input_shape``; a model without one is refused before training.

    A fresh run hides whatever an earlier run wrote to the same folder; a run resumed
    with ``fit(resume_from=...)`` keeps the epochs and steps up to its checkpoint and
    hides what the interrupted run wrote after it, so every step appears once. (The
    files stay on disk; TensorBoard's reader drops the hidden events.) In a distributed
    run only rank 0 writes. Training is the same with or without this callback: it
    draws no random numbers and changes no weights.

    Raises:
        ImportError: When the ``tensorboard`` package isn't installed (made here, before
            any work).

    Examples:
        >>> import os, tempfile
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> folder = tempfile.mkdtemp()
        >>> data = mnist_sample().tensors[0][:64], mnist_sample().tensors[1][:64]
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> history = fit(model, data, epochs=2, val_data=data, progress=False, device="cpu",
        ...               callbacks=[TensorBoard(folder)])
        >>> sorted(os.listdir(folder))
        ['train', 'validation']
        >>> events = EventAccumulator(os.path.join(folder, "validation")).Reload()
        >>> [event.step for event in events.Scalars("epoch_loss")]
        [1, 2]
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        log_every_n_steps: int | None = None,
        histogram_freq: int = 0,
        log_graph: bool = False,
    ) -> None:
        self.log_dir = Path(check_path("TensorBoard", "log_dir", log_dir, "runs/mnist"))
        if log_every_n_steps is not None:
            check_positive_int("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        self.histogram_freq = check_positive_int("histogram_freq", histogram_freq, allow_zero=True)
        self.log_graph = check_bool("log_graph", log_graph)
        self._writer_class = _summary_writer()
        self._writers: dict[str, Any] = {}
        self._purge: dict[str, int] = {}
        self._steps_per_epoch = 0

    def _writer(self, run: str) -> Any:
        """The writer of ``run`` (``train``, ``validation``, ``steps``), made on first use."""
        if run not in self._writers:
            folder = self.log_dir / run
            folder.mkdir(parents=True, exist_ok=True)
            _wait_for_a_new_second(folder)
            self._writers[run] = self._writer_class(os.fspath(folder), purge_step=self._purge[run])
        return self._writers[run]

    def _step(self, epoch: int, batch: int) -> int:
        return (epoch - 1) * self._steps_per_epoch + batch + 1

    def on_train_begin(self, state: TrainState) -> None:
        self._close()
        if self.log_every_n_steps is not None and state.steps_per_epoch is None:
            raise ValueError(
                "Invalid value for argument `log_every_n_steps` of TensorBoard: the training "
                "data has no length (an IterableDataset), so the steps of a run can't be "
                "counted across a resume. Pass log_every_n_steps=None to log per epoch, or "
                "give the dataset a __len__."
            )
        if not state.is_main:
            return
        self._check_log_dir()
        self._steps_per_epoch = state.steps_per_epoch or 0
        first = state.epoch + 1  # 1 for a fresh run: an earlier run's events are hidden
        self._purge = {"train": first, "validation": first, "steps": self._step(first, 0)}
        for run in self._purge:  # hide an earlier run's events in runs this one won't write
            if (self.log_dir / run).is_dir():
                self._writer(run)
        if self.log_graph:
            self._write_graph(state.model)

    def _check_log_dir(self) -> None:
        """Refuse a ``log_dir`` that can't hold event files, before the first batch."""
        reason = unwritable_reason(self.log_dir / "train" / "events.out.tfevents")
        if reason is not None:
            raise ValueError(
                f"Invalid value for argument `log_dir` of TensorBoard: can't write event "
                f"files in {os.fspath(self.log_dir)!r}: {reason}. Pass a folder you can "
                "write to, e.g. 'runs/mnist'."
            )

    def _write_graph(self, model: nn.Module) -> None:
        shape = model_input_shape(model)
        if shape is None:
            raise ValueError(
                "Invalid value for argument `log_graph` of TensorBoard: the graph is traced "
                "on a batch of the model's input_shape, and this model declares none. Set "
                "model.input_shape = (C, H, W) (the shape of one sample), or pass "
                "log_graph=False."
            )
        example = probe_tensor(model, shape)  # one zero sample, the model's dtype and device
        with warnings.catch_warnings():
            # the tracer's deprecation and its warnings about Python-side shape checks
            # concern the traced program, which only draws the picture
            warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            try:
                self._writer("train").add_graph(model, example)
            except Exception as err:
                raise RuntimeError(
                    f"TensorBoard(log_graph=True) could not trace the model "
                    f"({type(err).__name__}: {err}); pass log_graph=False."
                ) from err

    def on_batch_end(self, state: TrainState) -> None:
        if self.log_every_n_steps is None or not state.is_main:
            return
        step = self._step(state.epoch, state.batch)
        if step % self.log_every_n_steps:
            return
        writer = self._writer("steps")
        writer.add_scalar("batch_loss", float(state.logs["loss"]), step)
        writer.add_scalar("batch_learning_rate", state.optimizer.param_groups[0]["lr"], step)

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.is_main:
            return
        for name, value in state.logs.items():
            run = "validation" if name.startswith("val_") else "train"
            self._writer(run).add_scalar(f"epoch_{name.removeprefix('val_')}", value, state.epoch)
        lr = state.history.epochs[-1]["lr"] if state.history and state.history.epochs else None
        if lr is not None:
            self._writer("train").add_scalar("epoch_learning_rate", lr, state.epoch)
        if self.histogram_freq and state.epoch % self.histogram_freq == 0:
            writer = self._writer("train")
            for name, param in state.model.named_parameters():
                writer.add_histogram(name, param.detach().float().cpu(), state.epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        self._close()

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
