"""Capturing training state, and loading a checkpoint's state into live objects safely.

Every ``check_*`` compares a checkpoint's entries with the objects they will be loaded
into (model, optimizer, scheduler, scaler, RNGs, callbacks) and raises a ``ValueError``
naming the file and the mismatch; the ``apply*`` functions change the objects only after
every check has passed, so a mismatched file leaves them untouched.
"""

from __future__ import annotations

import collections
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

__all__ = [
    "StatefulCallback",
    "apply",
    "apply_resume",
    "callback_states",
    "check_fits",
    "check_resumable",
    "keyed_callbacks",
    "rng_state",
    "set_rng_state",
    "unwrap",
]

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


def _check_scheduler(source: Path, saved: dict[str, Any], scheduler: Any) -> None:
    current = scheduler.state_dict()
    missing = sorted(set(current) - set(saved))
    lengths = len(saved.get("base_lrs", ())), len(current.get("base_lrs", ()))
    if missing or lengths[0] != lengths[1]:
        problem = (
            f"it lacks {missing}" if missing else f"it has {lengths[0]} base_lrs, not {lengths[1]}"
        )
        raise ValueError(
            f"{source} doesn't fit the scheduler ({type(scheduler).__name__}): {problem}, so it "
            "was saved from another kind of scheduler or optimizer. Nothing was loaded."
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
        _check_optimizer(source, payload["optimizer"], optimizer)
    if scheduler is not None and payload["scheduler"] is not None:
        _check_scheduler(source, payload["scheduler"], scheduler)


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
