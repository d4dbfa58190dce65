"""The task, loss and metrics of a ``fit``/``evaluate`` run, set up from its first batch.

Before any training step the model runs once on the first batch in eval mode under
``no_grad`` (BatchNorm statistics and dropout untouched, every submodule's mode
restored), so that [`infer_task`][convkit._tasks.infer_task] can read the outputs' shape
and every metric can be tried. Peeking at a ``DataLoader`` leaves every random
generator it draws from as it was, so the epochs see the batches they would have seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._data import LoaderBatches, TensorBatches
from ._loop import accumulator_dtype
from ._metrics import MetricSet, Request, bind_metrics
from ._optim import LossFn
from ._probe import eval_mode
from ._runtime import Runtime
from ._tasks import TaskSpec, default_loss, infer_task

__all__ = ["TaskSetup", "first_batch", "setup_task"]


@dataclass(frozen=True)
class TaskSetup:
    """What a run trains and reports: the task, the loss it uses, its metrics."""

    spec: TaskSpec
    loss_fn: LossFn
    metrics: MetricSet
    requests: list[Request] | None  # as asked for (None: the task's defaults)
    inferred: bool  # task="auto"

    def describe(self) -> str:
        """One line for the log: ``task multiclass (10 classes), loss ..., metrics ...``."""
        how = " (inferred from the first batch)" if self.inferred else ""
        names = ", ".join(self.metrics.names) or "none"
        return f"task {self.spec.describe()}{how}, loss {loss_name(self.loss_fn)}, metrics {names}"


def loss_name(loss: Any) -> str:
    """``CrossEntropyLoss()``, ``mse_loss`` or the callable's class name."""
    if isinstance(loss, nn.Module):
        return repr(loss)
    return str(getattr(loss, "__name__", None) or type(loss).__name__)


@contextlib.contextmanager
def _rng_untouched(batches: TensorBatches | LoaderBatches) -> Iterator[None]:
    """Restore the generators a ``DataLoader`` draws its order from (and torch's global one)."""
    loader = getattr(batches, "loader", None)
    generators = [
        g
        for g in (
            getattr(loader, "generator", None),
            getattr(batches, "generator", None),
            getattr(getattr(loader, "sampler", None), "generator", None),
        )
        if isinstance(g, torch.Generator)
    ]
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
        torch.set_rng_state(global_state)


def first_batch(
    batches: TensorBatches | LoaderBatches,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The first batch the data yields (``None`` if it yields none), drawing no randomness.

    In-memory data gives its first ``batch_size`` samples in stored order.
    """
    if isinstance(batches, TensorBatches):
        if int(batches.inputs.shape[0]) == 0:
            return None
        head = batches.head()
        return head.inputs, head.targets
    with _rng_untouched(batches):
        batch = next(iter(batches), None)
    return None if batch is None else (batch.inputs, batch.targets)


def probe_outputs(model: nn.Module, inputs: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The model's float outputs on ``inputs``, changing nothing (eval mode, no_grad)."""
    with eval_mode(model), torch.no_grad(), runtime.autocast():
        outputs = model(runtime.format(inputs))
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"The model must return a tensor; on inputs of shape {tuple(inputs.shape)} it "
            f"returned {type(outputs).__name__}."
        )
    return outputs.float()


def setup_task(
    model: nn.Module,
    batches: TensorBatches | LoaderBatches,
    runtime: Runtime,
    *,
    task: str,
    loss: LossFn | None,
    requests: list[Request] | None,
    name: str,
) -> TaskSetup:
    """Infer or check the task on the first batch, pick the loss, bind the metrics.

    Raises:
        ValueError: For data that yields nothing, or anything ``infer_task`` or
            ``bind_metrics`` refuses; all before any training.
    """
    batch = first_batch(batches)
    if batch is None:
        raise ValueError(f"Invalid value for argument `{name}`: it yielded no batches.")
    inputs, targets = batch
    if targets is None:
        raise ValueError(
            f"Invalid data in `{name}`: batches hold inputs but no targets; pass "
            "(inputs, targets) pairs."
        )
    outputs = probe_outputs(model, inputs, runtime)
    spec = infer_task(task, outputs, targets, loss)
    loss_fn = loss if loss is not None else default_loss(spec)
    metrics = bind_metrics(requests, spec, outputs, targets, accumulator_dtype(runtime.device))
    return TaskSetup(spec, loss_fn, metrics, requests, inferred=task == "auto")
