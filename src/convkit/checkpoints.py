"""Checkpoints that are atomic, safe to load, and carry everything needed to resume.

One file holds the model, optimizer, LR-scheduler and AMP-scaler state, the epoch, the
History, every random-number-generator state (Python, NumPy, torch CPU and CUDA, the
shuffling generator) and, for models from [`build_cnn`][convkit.build_cnn], the
architecture as plain data, so that [`load_model`][convkit.load_model] rebuilds it
without the code that made it.

Files are written to a temporary file in the same directory, flushed to disk, then
renamed over the target (``os.replace``), so a process killed mid-write leaves the
previous checkpoint intact. They are read with ``torch.load(..., weights_only=True)``:
a file that carries pickled code is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "convkit-checkpoint"
VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


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


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what [`rng_state`][convkit.checkpoints.rng_state] captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - legacy RNG
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    history: Any = None,
    *,
    epoch: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
    generator: torch.Generator | None = None,
    callbacks: Sequence[Any] = (),
    interrupted: bool = False,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: Target file; its directory is created if missing.
        model: The model (a DDP or compiled wrapper is unwrapped).
        optimizer: Its state is saved if given.
        scheduler: An LR scheduler whose ``state_dict`` is saved.
        history: A [`History`][convkit.History] (saved as plain data).
        epoch: The last completed epoch.
        scaler: A ``GradScaler`` (``precision="16-mixed"``).
        generator: The data-shuffling generator.
        callbacks: Callbacks whose ``state_dict()`` is saved, in order.
        interrupted: Whether the epoch after ``epoch`` was cut short.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, os
        >>> from convkit import build_cnn, load_model
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), model)
        >>> load_model(path).feature_shape
        (4, 14, 14)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": inner.state_dict(),
        "model_config": config,
        "model_class": type(inner).__qualname__,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "interrupted": interrupted,
        "history": history.to_dict() if history is not None else None,
        "rng": rng_state(generator),
        "callbacks": [cb.state_dict() for cb in callbacks],
    }
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint safely and load its states into the objects given.

    Uses ``torch.load(..., weights_only=True)``: only tensors and plain data are read,
    and a file carrying other pickled objects is refused before any of it runs.

    Args:
        path: The checkpoint file.
        model: Receives the weights (a DDP or compiled wrapper is unwrapped).
        optimizer: Receives the optimizer state, if the file has one.
        scheduler: Receives the LR-scheduler state, if the file has one.
        map_location: Where tensors are loaded (default: the CPU; ``load_state_dict``
            then copies them to wherever the model lives).
        strict: Passed to ``model.load_state_dict``.

    Returns:
        The checkpoint's contents as a dict (``"epoch"``, ``"history"``, ``"rng"``...).

    Raises:
        FileNotFoundError: If ``path`` doesn't exist.
        ValueError: If the file isn't a convkit checkpoint, or carries objects other than
            tensors and plain data (refused unread).
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No checkpoint at {source}.")
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refused to load {source}: it holds pickled objects other than tensors and plain "
            "data, which could run code when unpickled. convkit reads checkpoints with "
            "torch.load(weights_only=True) and executed nothing from it. Only load such a "
            f"file with torch.load(weights_only=False) if you trust its origin. ({err})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{source} is not a convkit checkpoint (no 'format': {FORMAT!r} entry); for a bare "
            "state_dict use model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if model is not None:
        unwrap(model).load_state_dict(payload["model"], strict=strict)
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload


def load_model(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild a [`build_cnn`][convkit.build_cnn] model and its weights from a checkpoint.

    The architecture is stored in the checkpoint as ``build_cnn``'s arguments (plain
    JSON-able data), so no code of yours is needed, and none is unpickled.

    Args:
        path: A checkpoint written by [`save_checkpoint`][convkit.save_checkpoint] or
            [`ModelCheckpoint`][convkit.ModelCheckpoint].
        map_location: Where the weights are loaded.

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: If the model wasn't built by ``build_cnn`` from plain arguments (for
            example with custom ``features``): build it yourself and call
            ``load_checkpoint(path, model)``.
    """
    from .factory import build_cnn

    payload = load_checkpoint(path, map_location=map_location)
    config = payload.get("model_config")
    if not isinstance(config, dict):
        raise ValueError(
            f"The model in {path} ({payload.get('model_class')}) can't be rebuilt from the "
            "checkpoint alone: only build_cnn models made from plain arguments (names, numbers) "
            "store their architecture, and this one used custom `features` or layer factories, "
            "or was not made by build_cnn. Build the model yourself, then call "
            "convkit.load_checkpoint(path, model) to load its weights."
        )
    model = build_cnn(**config)
    model.load_state_dict(payload["model"])
    return model.eval()
