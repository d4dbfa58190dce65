"""The learning-rate range test: [`lr_find`][convkit.lr_find].

Leslie N. Smith's range test ("Cyclical Learning Rates for Training Neural Networks",
arXiv:1506.01186, 2015), run as fastai's ``Learner.lr_find`` and Lightning's
``Tuner.lr_find`` run it: train for ``num_iter`` batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``, record the loss smoothed by an exponential
moving average with bias correction, stop when it diverges, and read a learning rate off
the curve. Afterwards the model, the optimizer and every random generator are as they
were.

The sweep is a [`fit`][convkit.fit] run with an exponential ``LambdaLR`` stepped after
every batch and a callback that records the losses, so the batching, the task inference,
the task's loss, the optimizer, the precision and the memory format are ``fit``'s own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoints.restore import loader_generators, rng_state, set_rng_state
from ..utils.figures import new_figure
from ..utils.probe import preserved_modes
from ..utils.typing import DeviceLike
from ..utils.validation import (
    check_finite_float,
    check_module,
    check_positive_int,
)
from .callbacks import Callback, TrainState
from .loops import fit
from .run import HardInterrupt, NonFiniteLossError, OptimizerSpec
from .tasks import LossFn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LRFinderResult", "lr_find"]

#: The fewest batches a range test may run: fewer leave no curve to read.
MIN_ITER = 10

#: Batches left out at the end of the curve before a suggestion is read (fastai's 5):
#: the last ones are where the loss starts to diverge.
SKIP_END = 5


@dataclass(frozen=True)
class LRFinderResult:
    """What [`lr_find`][convkit.lr_find] measured, and the learning rates it suggests.

    Attributes:
        lrs: The learning rate of each batch of the sweep.
        losses: The smoothed training loss after each batch (exponential moving average
            with bias correction, as fastai and Lightning smooth it).
        raw_losses: Each batch's loss as computed.
        suggestion: fastai's "valley": in the longest stretch over which the smoothed
            loss keeps falling, the learning rate about halfway between its middle and
            its lower third's end (fastai's default suggestion since 2.5), read off the
            curve without its first ``num_iter // 10`` and last 5 batches. ``None``
            when the sweep stopped before there was enough curve to read.
        steepest: The learning rate where the smoothed loss falls fastest per decade of
            learning rate (fastai's ``steep``, Lightning's suggestion), over the same part
            of the curve; ``None`` as for ``suggestion``.
        stop: Why the sweep ended: ``"num_iter"`` (all batches ran), ``"diverged"``
            (the smoothed loss rose above ``early_stop_threshold`` times its minimum;
            for a negative minimum ``m``, above ``m + (early_stop_threshold - 1) * |m|``) or
            ``"non-finite"`` (a NaN or infinite loss or gradient).

    Examples:
        >>> LRFinderResult([1e-4, 1e-3], [2.3, 2.2], [2.3, 2.1], 1e-4, 1e-4, "num_iter")
        ... # doctest: +NORMALIZE_WHITESPACE
        LRFinderResult(suggestion=1.00e-04 (valley), steepest=1.00e-04, 2 batches,
                       lr 1e-04 to 1e-03)
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    steepest: float | None
    stop: str

    def __repr__(self) -> str:
        reach = f"lr {self.lrs[0]:.0e} to {self.lrs[-1]:.0e}" if self.lrs else "no batch"
        stopped = {
            "num_iter": "",
            "diverged": ", stopped: diverged",
            "non-finite": ", stopped: non-finite loss",
        }[self.stop]
        if self.suggestion is None:
            advice = "no suggestion: the curve is too short; lower start_lr or raise num_iter"
            return f"LRFinderResult({len(self.lrs)} batches, {reach}{stopped}; {advice})"
        return (
            f"LRFinderResult(suggestion={self.suggestion:.2e} (valley), "
            f"steepest={self.steepest:.2e}, {len(self.lrs)} batches, {reach}{stopped})"
        )

    def plot(self) -> Figure:
        """The smoothed loss against the learning rate (log scale), suggestions marked.

        Needs matplotlib (``pip install "torch-convkit[plot]"``).

        Returns:
            A ``matplotlib.figure.Figure`` managed by pyplot (``plt.show()`` shows it,
            ``plt.close(fig)`` closes it); save it with ``fig.savefig("lr.png")``.

        Raises:
            ImportError: If matplotlib isn't installed (the message names the extra).
        """
        fig = new_figure("LRFinderResult.plot()", (5.5, 3.6))
        ax = fig.subplots()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        marks = (("valley", self.suggestion, "o", "C3"), ("steepest", self.steepest, "^", "C1"))
        for name, lr, marker, color in marks:
            if lr is not None:
                loss = self.losses[self.lrs.index(lr)]
                ax.plot([lr], [loss], marker, color=color, markersize=8, label=f"{name}: {lr:.1e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        return fig


def valley_index(losses: list[float]) -> int:
    """fastai's "valley": an index into ``losses`` inside its longest descent.

    The longest strictly decreasing subsequence of the losses spans ``start..end``; the
    index is ``start + s + s // 2`` with ``s`` a third of that span (fastai's
    ``valley``, after Zachary Mueller's proposal), kept inside the list.

    Examples:
        >>> valley_index([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 2.0, 9.0])
        2
    """
    n = len(losses)
    lengths = [1] * n  # the longest decreasing subsequence ending at each index
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[end] < lengths[i]:
            end, start = i, i - lengths[i]
    section = (end - start) / 3
    return min(max(start + int(section) + int(section / 2), 0), n - 1)


def steepest_index(lrs: list[float], losses: list[float]) -> int:
    """The index where the loss falls fastest per unit of ``log(lr)``.

    Examples:
        >>> steepest_index([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.9, 1.0, 3.0])
        1
    """
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(len(lrs) - 1)
    ]
    return min(range(len(slopes)), key=slopes.__getitem__)


def suggestions(
    lrs: list[float], losses: list[float], num_iter: int
) -> tuple[float | None, float | None]:
    """``(valley, steepest)`` read off the curve without its ends (``None``: too short)."""
    first, last = num_iter // 10, len(lrs) - SKIP_END
    if last - first < 3:
        return None, None
    lrs, losses = lrs[first:last], losses[first:last]
    return lrs[valley_index(losses)], lrs[steepest_index(lrs, losses)]


@dataclass
class _Sweep(Callback):
    """Records each batch's learning rate and loss; stops at ``num_iter`` or divergence."""

    start_lr: float
    factor: Callable[[int], float]
    num_iter: int
    beta: float
    threshold: float | None
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    stop: str = "num_iter"
    _average: float = 0.0
    _best: float = math.inf

    def on_batch_end(self, state: TrainState) -> None:
        loss = float(state.logs["loss"])
        step = len(self.raw)
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** (step + 1))  # bias-corrected
        self.lrs.append(self.start_lr * self.factor(step))  # as LambdaLR sets it
        self.raw.append(loss)
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        # threshold x the minimum, measured from the minimum by its magnitude, so that a
        # loss that goes negative (a log-likelihood, a shifted loss) doesn't count as
        # diverging as soon as it is above threshold x a negative number
        rise = None if self.threshold is None else (self.threshold - 1) * abs(self._best)
        if rise is not None and step > 0 and smoothed > self._best + rise:
            self.stop, state.stop_training = "diverged", True
        elif step + 1 >= self.num_iter:
            state.stop_training = True
        if state.stop_training and state.history is not None:
            state.history.record_stop(state.epoch, by="lr_find")  # no message: it's the sweep's


class _Snapshot:
    """Everything a sweep changes, copied before it and put back afterwards.

    Parameters and buffers keep their identity: each gets its saved values back, on its
    original device, in its original dtype and memory layout, and its ``.grad`` too.
    """

    def __init__(self, model: nn.Module, optimizer: Any, data: Any) -> None:
        self.tensors: list[tuple[dict[str, Any], str, torch.Tensor, torch.Tensor, Any]] = []
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is not None:
                        grad = tensor.grad.detach().clone() if tensor.grad is not None else None
                        saved = tensor.detach().clone(memory_format=torch.preserve_format)
                        self.tensors.append((table, name, tensor, saved, grad))
        self.optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        if self.optimizer is not None:
            self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())
            self.optimizer_attributes = set(vars(self.optimizer))
        self.generators = loader_generators(data) if isinstance(data, DataLoader) else []
        self.generator_states = [g.get_state() for g in self.generators]
        self.rngs = rng_state()

    def restore(self) -> None:
        with torch.no_grad():
            for table, name, tensor, saved, grad in self.tensors:
                tensor.grad = None
                tensor.data = saved
                tensor.grad = grad
                table[name] = tensor
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
            for added in set(vars(self.optimizer)) - self.optimizer_attributes:
                delattr(self.optimizer, added)  # the scheduler's wrapper of step()
        for generator, state in zip(self.generators, self.generator_states, strict=True):
            generator.set_state(state)
        set_rng_state(self.rngs)


def _broken_from_the_start(err: NonFiniteLossError) -> NonFiniteLossError:
    """The error for a loss or gradient that is NaN or infinite before the first step."""
    what = str(err).split(" at epoch")[0]  # "The loss is nan" or "A gradient is not finite"
    return NonFiniteLossError(
        f"lr_find: {what} at the sweep's first batch, before any step, so no learning "
        "rate is the cause and none can be read off. Check the data for NaN/inf "
        "(torch.isfinite(x).all()), the model's forward and the loss; the model is as "
        "it was.",
        history=err.history,
        epoch=err.epoch,
        batch=err.batch,
    )


def _check_sweep(
    start_lr: Any, end_lr: Any, num_iter: Any, beta: Any, early_stop_threshold: Any
) -> None:
    start = check_finite_float("start_lr", start_lr, strict=True)
    end = check_finite_float("end_lr", end_lr, strict=True)
    if end <= start:
        raise ValueError(
            f"Invalid value for argument `end_lr`: the sweep grows the learning rate from "
            f"start_lr to end_lr, so end_lr must be larger. Received start_lr={start_lr!r}, "
            f"end_lr={end_lr!r}; e.g. start_lr=1e-7, end_lr=10."
        )
    if check_positive_int("num_iter", num_iter) < MIN_ITER:
        raise ValueError(
            f"Invalid value for argument `num_iter`. Expected at least {MIN_ITER} batches "
            f"(fastai and Lightning run 100). Received num_iter={num_iter!r}."
        )
    if check_finite_float("beta", beta) >= 1:
        raise ValueError(
            "Invalid value for argument `beta`. Expected a smoothing factor in [0, 1), e.g. "
            f"0.98 (0: no smoothing). Received beta={beta!r}."
        )
    if (
        early_stop_threshold is not None
        and check_finite_float("early_stop_threshold", early_stop_threshold) <= 1
    ):
        raise ValueError(
            "Invalid value for argument `early_stop_threshold`. Expected None (never stop "
            "early) or a factor above 1, e.g. 4.0. Received "
            f"early_stop_threshold={early_stop_threshold!r}."
        )


def lr_find(
    model: nn.Module,
    train_data: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    beta: float = 0.98,
    early_stop_threshold: float | None = 4.0,
    batch_size: int = 128,
    drop_last: bool | None = None,
    num_workers: int = 0,
    optimizer: OptimizerSpec = "adam",
    weight_decay: float = 0.0,
    loss: LossFn | None = None,
    task: str = "auto",
    device: DeviceLike = "auto",
    seed: int | None = None,
    precision: str = "32",
    memory_format: str = "auto",
    data_on_device: bool | None = None,
) -> LRFinderResult:
    """Find a learning rate with the range test: train briefly at growing rates, then undo.

    Trains for ``num_iter`` batches (cycling through ``train_data`` when it is shorter)
    with the learning rate of batch ``i`` set to ``start_lr * (end_lr / start_lr) **
    (i / (num_iter - 1))``, and records the training loss, smoothed as
    ``a = beta * a + (1 - beta) * loss`` and divided by ``1 - beta ** (i + 1)``. The sweep
    stops early once the smoothed loss exceeds ``early_stop_threshold`` times its
    minimum ``m`` (in general: ``m + (early_stop_threshold - 1) * |m|``, which is the same
    for a positive loss and stays above ``m`` for one that goes negative), or when a loss
    or gradient is NaN or infinite.

    Afterwards everything is as it was: the model's parameters and buffers (BatchNorm
    statistics) bit for bit, on their device and in their memory layout, with their
    ``.grad``; every submodule's train/eval flag; an optimizer instance's state and
    learning rates; and Python's, NumPy's, torch's and CUDA's random generators (and a
    ``DataLoader``'s own). Only the result is new. The same holds after an error and
    after Ctrl-C, which ends the sweep with ``KeyboardInterrupt`` as it ends ``fit``.

    Read the plot (``result.plot()``) rather than trusting a number blindly: a good
    learning rate lies where the loss still falls steeply, well before its minimum.
    ``result.suggestion`` is fastai's "valley" rule, ``result.steepest`` the steepest
    descent; see [`LRFinderResult`][convkit.train.lr_finder.LRFinderResult].

    Args:
        model: The network, as it would be given to [`fit`][convkit.fit].
        train_data: Training data in any form ``fit`` takes.
        start_lr: The learning rate of the first batch.
        end_lr: The learning rate of batch ``num_iter`` (larger than ``start_lr``).
        num_iter: Batches in the sweep, at least 10 (fastai and Lightning: 100).
        beta: Smoothing factor of the loss's moving average, in ``[0, 1)``.
        early_stop_threshold: Stop when the smoothed loss exceeds this many times its
            minimum (Lightning's name; fastai's ``stop_div`` stops at 4 too); ``None``
            runs all ``num_iter`` batches.
        batch_size: As in ``fit``: use the batch size you will train with, since the
            best learning rate depends on it.
        drop_last: As in ``fit``.
        num_workers: As in ``fit``.
        optimizer: As in ``fit``. An optimizer instance is stepped during the sweep
            (every parameter group at the sweep's learning rate) and then restored.
        weight_decay: As in ``fit``.
        loss: As in ``fit``.
        task: As in ``fit``.
        device: As in ``fit``; the model ends on the device it started on.
        seed: As in ``fit``: seeds the shuffling and dropout of the sweep.
        precision: As in ``fit``.
        memory_format: As in ``fit``.
        data_on_device: As in ``fit``.

    Returns:
        The learning rates, smoothed and raw losses, and the suggestions.

    Raises:
        NonFiniteLossError: When the loss or a gradient of the first batch, before any
            step, is NaN or infinite: the model, the data or the loss is broken.
        TypeError: For arguments of the wrong type.
        ValueError: For values ``fit`` would refuse, ``end_lr <= start_lr``,
            ``num_iter < 10``, ``beta`` outside ``[0, 1)`` or ``early_stop_threshold <= 1``;
            all before the model changes.

    Examples:
        >>> import torch
        >>> from convkit import build_cnn, lr_find, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> before = {k: v.clone() for k, v in model.state_dict().items()}
        >>> result = lr_find(model, mnist_sample(), num_iter=30, batch_size=64, device="cpu")
        >>> result.lrs[0], len(result.lrs) <= 30, result.suggestion is not None
        (1e-07, True, True)
        >>> all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        True
    """
    check_module("model", model, needs_weights=True)
    _check_sweep(start_lr, end_lr, num_iter, beta, early_stop_threshold)
    ratio = end_lr / start_lr

    def factor(step: int) -> float:
        return float(ratio ** (step / (num_iter - 1)))

    def exponential(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        for group in opt.param_groups:
            # LambdaLR multiplies each group's base rate by factor(step), and takes that
            # rate from `initial_lr` where an earlier scheduler on the optimizer left one
            group["lr"] = group["initial_lr"] = start_lr
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    sweep = _Sweep(float(start_lr), factor, num_iter, float(beta), early_stop_threshold)
    snapshot = _Snapshot(model, optimizer, train_data)
    try:
        with preserved_modes(model):
            fit(
                model,
                train_data,
                epochs=num_iter,  # an upper bound: the sweep stops after num_iter batches
                batch_size=batch_size,
                drop_last=drop_last,
                num_workers=num_workers,
                optimizer=optimizer,
                lr=start_lr,
                weight_decay=weight_decay,
                loss=loss,
                task=task,
                device=device,
                progress=False,
                seed=seed,
                precision=precision,
                memory_format=memory_format,
                data_on_device=data_on_device,
                callbacks=[sweep],
                scheduler=exponential,
                scheduler_interval="step",
            )
    except NonFiniteLossError as err:
        if not sweep.raw:
            raise _broken_from_the_start(err) from err
        sweep.stop = "non-finite"
    except HardInterrupt:
        raise
    except KeyboardInterrupt:
        # fit's message would say the model keeps what it learned and offer its
        # on_interrupt=; the sweep puts everything back and has no such option
        raise KeyboardInterrupt(
            f"lr_find was interrupted (Ctrl-C) after {len(sweep.raw)} of {num_iter} batches; "
            "the model, the optimizer and the random generators are as they were before it."
        ) from None
    finally:
        snapshot.restore()
    valley, steepest = suggestions(sweep.lrs, sweep.losses, num_iter)
    return LRFinderResult(sweep.lrs, sweep.losses, sweep.raw, valley, steepest, sweep.stop)
