"""Capturing training state, and loading a checkpoint's state into live objects safely.

Every ``check_*`` compares a checkpoint's entries with the objects they will be loaded
into (model, optimizer, scheduler, scaler, RNGs, callbacks) and raises a ``ValueError``
naming the file and the mismatch; the ``apply*`` functions change the objects only after
every check has passed, so a mismatched file leaves them untouched.
"""

from __future__ import annotations

import collections
import logging
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ..utils.stack import user_stacklevel

__all__ = [
    "StatefulCallback",
    "apply",
    "apply_resume",
    "callback_states",
    "check_fits",
    "check_resumable",
    "data_generator",
    "keyed_callbacks",
    "loader_generators",
    "report_resume",
    "rng_state",
    "scheduler_kind",
    "set_rng_state",
    "settings",
    "unwrap",
]

logger = logging.getLogger(__name__)

# Optimizer state entries shaped like their parameter (Adam, AdamW, SGD, RMSprop, Adagrad...).
_PARAM_SHAPED = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "momentum_buffer",
    "sum",
    "square_avg",
    "grad_avg",
    "acc_delta",
    "ax",
    "prev",
}
_SHOWN = 4  # mismatches listed in one message
# Scheduler entries that hold one value per parameter group.
_PER_GROUP = frozenset(
    ("base_lrs", "min_lrs", "max_lrs", "_last_lr", "lr_lambdas", "base_momentums", "max_momentums")
)


class StatefulCallback(Protocol):
    """What a checkpoint needs from a callback: a stable key and its state."""

    @property
    def state_key(self) -> str: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``DistributedDataParallel``, ``DataParallel`` and
    ``torch.compile`` wrappers (recognised by type; any other module is returned as is).
    """
    wrappers: tuple[type, ...] = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # imported by any torch.compile
    if eval_frame is not None:
        wrappers += (eval_frame.OptimizedModule,)
    while isinstance(model, wrappers):
        inner = model._orig_mod if hasattr(model, "_orig_mod") else model.module
        model = cast(nn.Module, inner)
    return model


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state as tensors and plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - legacy RNG
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def numpy_state(state: dict[str, Any]) -> tuple[Any, ...]:
    """The tuple ``np.random.set_state`` takes, from ``rng_state()["numpy"]``."""
    return (
        state["kind"],
        state["keys"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["gauss"],
    )


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(numpy_state(state["numpy"]))  # noqa: NPY002 - legacy RNG
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def callback_states(callbacks: Sequence[StatefulCallback]) -> dict[str, dict[str, Any]]:
    """Each stateful callback's state under its ``state_key`` (``#2``, ``#3``... on repeats)."""
    return {key: callback.state_dict() for key, callback in keyed_callbacks(callbacks).items()}


def keyed_callbacks(callbacks: Sequence[StatefulCallback]) -> dict[str, StatefulCallback]:
    """The callbacks that have state, by the key their state is stored under."""
    keyed: dict[str, StatefulCallback] = {}
    seen: collections.Counter[str] = collections.Counter()
    for callback in callbacks:
        if not callback.state_dict():
            continue
        seen[callback.state_key] += 1
        count = seen[callback.state_key]
        keyed[callback.state_key + (f"#{count}" if count > 1 else "")] = callback
    return keyed


def _shape(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def _check_model(
    source: Path, stored: dict[str, torch.Tensor], model: nn.Module, strict: bool
) -> None:
    current = unwrap(model).state_dict()
    problems = [
        f"{key!r} is {_shape(stored[key])} in the file but {_shape(value)} in the model"
        for key, value in current.items()
        if key in stored and (stored[key].shape != value.shape or stored[key].dtype != value.dtype)
    ]
    if strict:
        missing = [key for key in current if key not in stored]
        unexpected = [key for key in stored if key not in current]
        if missing:
            problems.append(f"the file lacks {missing[:_SHOWN]}")
        if unexpected:
            problems.append(f"the model has no {unexpected[:_SHOWN]}")
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise ValueError(
            f"{source} doesn't fit the model: {'; '.join(problems[:_SHOWN])}{more}. Nothing "
            "was loaded. Build the model the checkpoint was saved from (same architecture "
            "and dtype), or pass strict=False to load only keys both have."
        )


def _check_optimizer(source: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    def refuse(problem: str) -> ValueError:
        return ValueError(
            f"{source} doesn't fit the optimizer: {problem}. Nothing was loaded; build the "
            "optimizer the checkpoint was saved with, over the same parameters."
        )

    groups, state = saved.get("param_groups"), saved.get("state")
    if (
        not isinstance(groups, list)
        or not isinstance(state, dict)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise refuse("its optimizer entry has no valid 'param_groups' and 'state'")
    ours = optimizer.param_groups
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in ours]:
        raise refuse(
            f"parameters per group are {[len(g['params']) for g in groups]} in the file but "
            f"{[len(g['params']) for g in ours]} in the optimizer"
        )
    for theirs, mine in zip(groups, ours, strict=True):
        foreign = sorted(set(theirs) - set(mine))
        if foreign:
            raise refuse(
                f"its parameter groups have {foreign}, which {type(optimizer).__name__}'s don't: "
                "it was saved from another kind of optimizer"
            )
    params = dict(
        zip(
            (i for g in groups for i in g["params"]),
            (p for g in ours for p in g["params"]),
            strict=True,
        )
    )
    for index, entry in state.items():
        if index not in params or not isinstance(entry, dict):
            raise refuse(f"its state names parameter {index!r}, which no group holds")
        for name, value in entry.items():
            shaped = name in _PARAM_SHAPED and isinstance(value, torch.Tensor)
            if shaped and value.shape != params[index].shape:
                raise refuse(
                    f"{name!r} of parameter {index} is {tuple(value.shape)} in the file but "
                    f"the parameter is {tuple(params[index].shape)}"
                )


def scheduler_kind(scheduler: Any) -> str:
    """The scheduler's class, with those of the schedulers it chains:
    ``"SequentialLR(LinearLR, StepLR)"``."""
    name = type(scheduler).__qualname__
    children = getattr(scheduler, "_schedulers", None)
    if isinstance(children, (list, tuple)):
        name += f"({', '.join(scheduler_kind(child) for child in children)})"
    return name


def _scheduler_problem(saved: Any, scheduler: Any, where: str) -> str | None:
    """What in ``saved`` doesn't fit ``scheduler`` (recursively for the schedulers a
    ``SequentialLR`` or ``ChainedScheduler`` holds), or ``None``."""
    if not isinstance(saved, dict):
        return f"{where}'s state is {type(saved).__name__}, not a dict"
    current = scheduler.state_dict()
    missing = sorted(set(current) - set(saved))
    if missing:
        return f"{where}'s state lacks {missing}"
    for key in sorted(_PER_GROUP & set(current), key=lambda k: (k.startswith("_"), k)):
        theirs, ours = saved[key], current[key]
        if isinstance(ours, list) and (not isinstance(theirs, list) or len(theirs) != len(ours)):
            count = len(theirs) if isinstance(theirs, list) else type(theirs).__name__
            return (
                f"{where}'s {key} has {count} entries (one per parameter group), but the "
                f"optimizer here has {len(ours)} groups"
            )
    children = getattr(scheduler, "_schedulers", None)
    if not isinstance(children, (list, tuple)):
        return None
    theirs = saved["_schedulers"]
    if not isinstance(theirs, list) or len(theirs) != len(children):
        count = len(theirs) if isinstance(theirs, list) else type(theirs).__name__
        return f"{where} holds {count} schedulers in the file but {len(children)} here"
    if "_milestones" in current and (
        not isinstance(saved["_milestones"], list) or len(saved["_milestones"]) != len(theirs) - 1
    ):
        return f"{where}'s milestones don't match its {len(theirs)} schedulers"
    for index, (child, state) in enumerate(zip(children, theirs, strict=True)):
        problem = _scheduler_problem(state, child, f"{where}'s scheduler {index + 1}")
        if problem is not None:
            return problem
    return None


def _check_scheduler(source: Path, saved: dict[str, Any], kind: Any, scheduler: Any) -> None:
    ours = scheduler_kind(scheduler)
    if isinstance(kind, str) and kind != ours:
        raise ValueError(
            f"{source} was saved with scheduler {kind}, and the scheduler here is {ours}: the "
            "saved settings and progress would mean something else in it. Nothing was loaded. "
            f"Build {kind} as the saved run did, or load only the weights with "
            "load_checkpoint(path, model) and start a new schedule."
        )
    problem = _scheduler_problem(saved, scheduler, type(scheduler).__name__)
    if problem is not None:
        raise ValueError(
            f"{source} doesn't fit the scheduler ({ours}): {problem}, so it was saved from "
            "another kind of scheduler or optimizer. Nothing was loaded."
        )


def _check_optimizer_kind(source: Path, kind: Any, optimizer: torch.optim.Optimizer) -> None:
    ours = type(optimizer).__qualname__
    if isinstance(kind, str) and kind != ours:
        raise ValueError(
            f"{source} was saved with optimizer {kind}, and the optimizer here is {ours}: the "
            "saved settings and moments would mean something else in it. Nothing was loaded. "
            f"Resume with {kind} (e.g. fit(optimizer=torch.optim.{kind}, ...)), or load only "
            f"the weights with load_checkpoint(path, model) and start a new {ours}."
        )


def check_fits(
    source: Path,
    payload: dict[str, Any],
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    strict: bool,
) -> None:
    """Raise a ``ValueError`` unless every state in ``payload`` fits the objects given."""
    if model is not None:
        _check_model(source, payload["model"], model, strict)
    if optimizer is not None and payload["optimizer"] is not None:
        _check_optimizer_kind(source, payload.get("optimizer_class"), optimizer)
        _check_optimizer(source, payload["optimizer"], optimizer)
    if scheduler is not None and payload["scheduler"] is not None:
        _check_scheduler(source, payload["scheduler"], payload.get("scheduler_class"), scheduler)


def apply(
    payload: dict[str, Any],
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    strict: bool,
) -> None:
    """Load ``payload``'s states into the objects given (after ``check_fits``)."""
    if model is not None:
        unwrap(model).load_state_dict(payload["model"], strict=strict)
    if optimizer is not None and payload["optimizer"] is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])


def _check_rng(source: Path, rng: dict[str, Any], generator: torch.Generator | None) -> None:
    """Load each saved RNG state into a throw-away generator: the real ones stay untouched."""
    try:
        version, internal, gauss = rng["python"]
        random.Random().setstate((version, tuple(internal), gauss))
        np.random.RandomState().set_state(numpy_state(rng["numpy"]))
        torch.Generator().set_state(rng["torch"])
        if not all(isinstance(s, torch.Tensor) for s in rng["cuda"]):
            raise TypeError("CUDA states must be tensors")
        if generator is not None and "generator" in rng:
            torch.Generator(device=generator.device).set_state(rng["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise ValueError(
            f"{source} is not a convkit checkpoint: its random-number-generator states are "
            f"damaged ({type(err).__name__}: {err})."
        ) from None


def _check_history(source: Path, history: Any) -> None:
    valid = (
        isinstance(history, dict)
        and isinstance(history.get("history"), dict)
        and isinstance(history.get("epochs"), list)
        and all(
            isinstance(e, dict) and isinstance(e.get("metrics"), dict) for e in history["epochs"]
        )
    )
    if not valid:
        raise ValueError(f"{source} is not a convkit checkpoint: its History entry is damaged.")


def _check_callbacks(source: Path, saved: Any, callbacks: Sequence[StatefulCallback]) -> None:
    ours = keyed_callbacks(callbacks)  # saved states of callbacks not passed again are unused
    if isinstance(saved, list):  # format version 1 stored states by position
        if any(saved) and ours:
            raise ValueError(
                f"{source} was written by convkit 0.1, which stored callback states by position, "
                "so they can't be matched to callbacks safely. Resume without stateful callbacks."
            )
        return
    missing = sorted(set(ours) - set(saved))
    if missing:
        raise ValueError(
            f"Invalid value for argument `callbacks`: {source} holds no state for {missing}; it "
            f"holds the state of {sorted(saved)}. Resume with the callbacks of the saved run "
            "(a callback's state is matched by its state_key: its class and path or monitor). "
            "Nothing was loaded."
        )
    for key, callback in ours.items():
        expected = sorted(callback.state_dict())
        if not isinstance(saved[key], dict) or sorted(saved[key]) != expected:
            raise ValueError(
                f"{source} is not a convkit checkpoint: the state of callback {key} should have "
                f"{expected}."
            )


def check_resumable(
    source: Path,
    payload: dict[str, Any],
    *,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator | None,
    callbacks: Sequence[StatefulCallback],
) -> None:
    """Raise a ``ValueError`` unless the rest of a run's state (beyond ``check_fits``) fits."""
    if scaler is not None and payload["scaler"] is not None:
        current = scaler.state_dict()
        if current and sorted(set(current) - set(payload["scaler"])):
            raise ValueError(
                f"{source} doesn't fit the GradScaler: its scaler state is incomplete."
            )
    if payload["history"] is not None:
        _check_history(source, payload["history"])
    _check_rng(source, payload["rng"], generator)
    _check_callbacks(source, payload["callbacks"], callbacks)


def apply_resume(
    payload: dict[str, Any],
    *,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator | None,
    callbacks: Sequence[StatefulCallback],
) -> None:
    """Load the scaler, callback and RNG states (after ``check_resumable``)."""
    if scaler is not None and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    if isinstance(payload["callbacks"], dict):
        for key, callback in keyed_callbacks(callbacks).items():
            callback.load_state_dict(payload["callbacks"][key])
    set_rng_state(payload["rng"], generator)


# ---- what a resume takes from the file instead of the caller

# Optimizer entries that choose an implementation, not the algorithm's settings.
_IMPLEMENTATION = frozenset(
    ("params", "initial_lr", "foreach", "fused", "capturable", "differentiable")
)
# Public scheduler entries that record progress through the schedule, not a setting.
_PROGRESS = frozenset(
    (
        "last_epoch",
        "base_lrs",
        "best",
        "num_bad_epochs",
        "cooldown_counter",
        "mode_worse",
        "verbose",
    )
)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _optimizer_settings(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    groups = optimizer.param_groups
    settings: dict[str, Any] = {}
    for index, group in enumerate(groups):
        suffix = f" (group {index + 1})" if len(groups) > 1 else ""
        for key, value in group.items():
            if key in _IMPLEMENTATION or (isinstance(value, torch.Tensor) and value.numel() > 1):
                continue
            if key in ("momentum", "betas") and "max_momentum" in group:
                continue  # cycled by OneCycleLR/CyclicLR: progress, set from max_momentum
            if key == "lr":
                if "initial_lr" in group:  # what the schedule started from
                    value = group["initial_lr"]
                elif isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    continue  # lowered on plateaus: progress, the start isn't recorded
            settings[key + suffix] = _plain(value)
    return settings


def _scheduler_settings(scheduler: Any, where: str) -> dict[str, Any]:
    settings = {
        f"{where}.{key}": value
        for key, value in scheduler.state_dict().items()
        if not key.startswith("_") and key not in _PROGRESS and not isinstance(value, torch.Tensor)
    }
    for index, child in enumerate(getattr(scheduler, "_schedulers", None) or ()):
        settings.update(_scheduler_settings(child, f"{where}[{index + 1}] {type(child).__name__}"))
    return settings


def settings(optimizer: torch.optim.Optimizer | None, scheduler: Any) -> dict[str, Any]:
    """The optimizer's and scheduler's settings, by name (``lr``, ``weight_decay``,
    ``StepLR.gamma``...): what a caller chooses, not the progress a run makes."""
    found = _optimizer_settings(optimizer, scheduler) if optimizer is not None else {}
    if scheduler is not None:
        found.update(_scheduler_settings(scheduler, type(scheduler).__name__))
    return found


def report_resume(
    source: Path,
    payload: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    callbacks: Sequence[StatefulCallback],
) -> None:
    """Log one line: what a resume took from ``source``, and which of the caller's
    settings (``before``) the file's (``after``) replaced (then as a warning)."""
    taken = ["the weights"]
    taken += [
        f"the {payload[k]} state" for k in ("optimizer_class", "scheduler_class") if payload.get(k)
    ]
    taken += ["the History", "every RNG state"]
    keys = sorted(keyed_callbacks(callbacks))
    taken += [f"the state of {', '.join(keys)}"] if keys else []
    line = f"Resumed from {source} after epoch {payload['epoch'] or 0}: {', '.join(taken)}."
    changed = [
        f"{name} {before[name]!r} -> {after[name]!r}"
        for name in before
        if name in after and before[name] != after[name]
    ]
    if not changed:
        logger.info(line)
        return
    logger.warning(
        "%s The saved run's settings replace these passed for this run: %s (a resumed run "
        "continues the saved one; to change a setting, see 'Resume rules' in the Training in "
        "depth guide).",
        line,
        ", ".join(changed),
    )


# ---- which shuffling generator a checkpoint saves for the training data

_EXACT_SAMPLERS = (
    SequentialSampler,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
    DistributedSampler,
)


def _inexact(loader: DataLoader[Any], generators: list[torch.Generator]) -> str | None:
    """Why a resumed run may not see ``loader``'s batches in the uninterrupted order."""
    sampler = loader.sampler
    if isinstance(loader.dataset, IterableDataset):
        return "its IterableDataset keeps its own position, which a checkpoint can't hold"
    if not isinstance(sampler, _EXACT_SAMPLERS):
        return f"its sampler {type(sampler).__name__} may keep state a checkpoint can't hold"
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        return f"its batch sampler {type(loader.batch_sampler).__name__} may keep state"
    if len(generators) > 1:
        return "it draws from two generators (the DataLoader's and its sampler's)"
    if loader.num_workers and loader.persistent_workers:
        return "its persistent workers drew their seeds once, when the first epoch began"
    return None


def loader_generators(loader: DataLoader[Any]) -> list[torch.Generator]:
    """The generators ``loader`` draws from, each once: its own (the workers' seeds), its
    sampler's, and the sampler's inside its batch sampler."""
    generators: list[torch.Generator] = []
    for owner in (loader, loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        found = getattr(owner, "generator", None)
        if isinstance(found, torch.Generator) and all(found is not g for g in generators):
            generators.append(found)
    return generators


def data_generator(data: Any, default: torch.Generator, *, resuming: bool) -> torch.Generator:
    """The generator that shuffles ``data``, whose state checkpoints save and restore.

    ``default`` (``fit``'s own generator, which batches in-memory data and Datasets)
    unless ``data`` is a ``DataLoader`` drawing its order from a generator of its own
    (``DataLoader(shuffle=True, generator=g)`` or ``sampler=RandomSampler(...,
    generator=g)``): then that one. A ``DataLoader`` without one draws from torch's
    global generator, which checkpoints restore too. For the loaders whose order a
    resumed run can't reproduce (see ``_inexact``), ``resuming`` warns.
    """
    if not isinstance(data, DataLoader):
        return default
    generators = loader_generators(data)
    reason = _inexact(data, generators)
    if resuming and reason is not None:
        warnings.warn(
            f"Resuming with this train_data DataLoader may not be exact: {reason}. The resumed "
            "epochs can see the batches in another order than the uninterrupted run; in-memory "
            "data, Datasets, and DataLoaders with a standard sampler and at most one generator "
            "resume exactly (see 'Exact resume' in the Training in depth guide).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return generators[0] if generators else default
