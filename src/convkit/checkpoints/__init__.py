"""Checkpoints that are atomic, safe to load, verified, and carry everything to resume.

One file holds the model, optimizer, LR-scheduler and AMP-scaler state, the epoch, the
History, every random-number-generator state (Python, NumPy, torch CPU and CUDA, the
shuffling generator), each callback's state under a stable key and, for models from
[`build_cnn`][convkit.build_cnn], the architecture as plain data, so that
[`load_model`][convkit.load_model] rebuilds it without the code that made it.

Files are written atomically (see ``convkit.checkpoints.files``). They are read with
``torch.load(..., weights_only=True)``, so a file that carries pickled code is refused
before anything in it runs, and a SHA-256 digest of the whole content, stored in the
file, is verified before any of it is used. Every entry is checked (this module) and
compared with the objects it will be loaded into (``convkit.checkpoints.restore``) before any of
them changes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from ..utils.stack import user_stacklevel
from ..utils.validation import check_bool
from .files import atomic_write
from .plain import plain_payload
from .restore import (
    StatefulCallback,
    apply,
    apply_resume,
    callback_states,
    check_fits,
    check_resumable,
    report_resume,
    rng_state,
    scheduler_kind,
    settings,
    unwrap,
)
from .restore import set_rng_state as set_rng_state

__all__ = ["load_checkpoint", "save_checkpoint"]

FORMAT = "convkit-checkpoint"
VERSION = 2
_READABLE_VERSIONS = (1, 2)
# torch.load(weights_only=True) can be bypassed before torch 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)


def digest(payload: dict[str, Any]) -> str:
    """SHA-256 of everything in ``payload`` but its ``"digest"`` entry, tensors byte for byte."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        h.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        if tensor.numel() and tensor.layout == torch.strided:
            flat = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
            h.update(flat.numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


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
    callbacks: Sequence[StatefulCallback] = (),
    interrupted: bool = False,
    stopped: bool = False,
    clean_checkpoint: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: Target file; its directory is created if missing.
        model: The model (a DDP, DataParallel or compiled wrapper is unwrapped).
        optimizer: Its state is saved if given.
        scheduler: An LR scheduler whose ``state_dict`` is saved.
        history: A [`History`][convkit.History] (saved as plain data).
        epoch: The last completed epoch.
        scaler: A ``GradScaler`` (``precision="16-mixed"``).
        generator: The data-shuffling generator.
        callbacks: Callbacks whose ``state_dict()`` is saved under their ``state_key``.
        interrupted: Whether the epoch after ``epoch`` was cut short (such a file holds
            mid-epoch weights: ``fit(resume_from=...)`` refuses it).
        stopped: Whether a callback had stopped training (a resumed run then trains no
            further epoch).
        clean_checkpoint: For an interrupted file, the last end-of-epoch checkpoint of
            the same run, which the refusal to resume names.

    Returns:
        The path written.

    Raises:
        TypeError: If a state holds something ``load_checkpoint`` could not read back
            (anything but tensors and plain data; paths and NumPy scalars are stored
            as ``str`` and Python scalars), naming where it is, e.g.
            ``model.config['root']``; raised before anything is written.
        OSError: If the disk fills up (or a quota or file-size limit is reached) during
            the write, saying so; the previous file at ``path`` is left intact and the
            temporary file removed.

    Examples:
        >>> import os, tempfile
        >>> from torch import nn
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), nn.Linear(2, 1))
        >>> sorted(load_checkpoint(path)["model"])
        ['bias', 'weight']
    """
    target = Path(path)
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": inner.state_dict(),
        "model_config": config if isinstance(config, dict) else None,
        "model_class": type(inner).__qualname__,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__qualname__ if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": scheduler_kind(scheduler) if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "interrupted": bool(interrupted),
        "stopped": bool(stopped),
        "clean_checkpoint": os.fspath(clean_checkpoint) if clean_checkpoint else None,
        "history": history.to_dict() if history is not None else None,
        "rng": rng_state(generator),
        "callbacks": callback_states(callbacks),
    }
    payload = plain_payload(payload, target)
    payload["digest"] = digest(payload)
    with atomic_write(target, kind="checkpoint") as f:
        torch.save(payload, f)
    return target


def check_torch_version() -> None:
    """Refuse to read checkpoints with a torch whose ``weights_only=True`` can be bypassed."""
    found = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if found is None or (int(found.group(1)), int(found.group(2))) < MIN_TORCH:
        raise RuntimeError(
            f"convkit refuses to load checkpoints with torch {torch.__version__}: before torch "
            f"{'.'.join(map(str, MIN_TORCH))}, torch.load(weights_only=True) can be made to run "
            "code (CVE-2025-32434). Upgrade with: pip install 'torch>=2.6'."
        )


def _not_a_checkpoint(source: Path, reason: str) -> ValueError:
    return ValueError(f"{source} is not a convkit checkpoint: {reason}.")


def _sniff(source: Path, file: IO[bytes]) -> None:
    """Refuse files that aren't the zip archive ``torch.save`` writes, before unpickling."""
    head = file.read(4)
    file.seek(0)
    if not head:
        raise _not_a_checkpoint(source, "the file is empty")
    if not zipfile.is_zipfile(file):
        if head == b"PK\x03\x04":
            raise _not_a_checkpoint(source, "truncated or corrupt (its zip archive is incomplete)")
        raise _not_a_checkpoint(
            source,
            "it is not the zip archive torch.save writes (text, random bytes, or a file "
            "of another kind)",
        )
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise _not_a_checkpoint(source, f"truncated or corrupt ({err})") from None
    if not any(name.endswith("/data.pkl") for name in names):
        raise _not_a_checkpoint(source, "a zip archive, but not one written by torch.save")
    file.seek(0)


def _torch_load(source: Path, file: IO[bytes], map_location: str | torch.device) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch's words for a blocked global
        if found:
            raise ValueError(
                f"Refused to load {source}: it holds a pickled object ({found.group(1)}) other "
                "than tensors and plain data, which could run code when unpickled. convkit reads "
                "checkpoints with torch.load(weights_only=True) and executed nothing from it."
            ) from None
        raise _not_a_checkpoint(source, "truncated or corrupt (its pickle can't be read)") from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError) as err:
        raise _not_a_checkpoint(
            source, f"truncated or corrupt (torch can't read it: {type(err).__name__})"
        ) from None


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _optional(kind: type | tuple[type, ...]) -> Callable[[Any], bool]:
    return lambda value: value is None or isinstance(value, kind)


# Every entry of a version-1 file; version 2 adds the rest. What each must hold.
_ENTRIES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("a dict of tensors", _is_tensor_dict),
    "model_config": ("a dict or None", _optional(dict)),
    "model_class": ("a str", lambda v: isinstance(v, str)),
    "optimizer": ("a dict or None", _optional(dict)),
    "scheduler": ("a dict or None", _optional(dict)),
    "scaler": ("a dict or None", _optional(dict)),
    "epoch": ("an int >= 0 or None", lambda v: v is None or (type(v) is int and v >= 0)),
    "interrupted": ("a bool", lambda v: isinstance(v, bool)),
    "history": ("a dict or None", _optional(dict)),
    "rng": ("a dict", lambda v: isinstance(v, dict)),
    "callbacks": ("callback states", lambda v: isinstance(v, (list, dict))),
}
_ENTRIES_V2: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "stopped": ("a bool", lambda v: isinstance(v, bool)),
    "clean_checkpoint": ("a str or None", _optional(str)),
    "callbacks": ("a dict of callback states", lambda v: isinstance(v, dict)),
    "digest": ("a str", lambda v: isinstance(v, str)),
}
# Entries later files of version 2 add; checked when present.
_OPTIONAL: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "optimizer_class": ("a str or None", _optional(str)),
    "scheduler_class": ("a str or None", _optional(str)),
}
# Version-1 files already warned about, by path: once per process and file.
_UNVERIFIED_WARNED: set[str] = set()


def _check_entries(source: Path, payload: dict[str, Any], version: int) -> None:
    entries = {**_ENTRIES, **(_ENTRIES_V2 if version >= 2 else {})}
    missing = next((key for key in entries if key not in payload), None)
    if missing is not None:
        raise _not_a_checkpoint(source, f"its {missing!r} entry is missing")
    for key, (expected, valid) in {**entries, **_OPTIONAL}.items():
        if key in payload and not valid(payload[key]):
            raise _not_a_checkpoint(
                source, f"its {key!r} entry should be {expected}, not {type(payload[key]).__name__}"
            )


def _unverified(source: Path, require_digest: bool) -> None:
    """A version-1 file carries no digest: refuse it, or warn once per process and file."""
    if require_digest:
        raise ValueError(
            f"{source} has no digest (format version 1, written by convkit 0.1), so its content "
            "can't be verified, and require_digest=True. Nothing was loaded. If you trust the "
            "file, load it with require_digest=False and save it again with save_checkpoint, "
            "which adds one."
        )
    key = os.path.realpath(source)
    if key not in _UNVERIFIED_WARNED:
        _UNVERIFIED_WARNED.add(key)
        warnings.warn(
            f"{source} is a format-version-1 checkpoint (convkit 0.1): it has no digest, so "
            "damage or edits to it can't be detected, and it is loaded unverified. Save it again "
            "with save_checkpoint to add one, or pass require_digest=True to refuse such files.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _check_payload(source: Path, payload: Any, require_digest: bool) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _not_a_checkpoint(
            source,
            f"it has no 'format': {FORMAT!r} entry; for a bare state_dict use "
            "model.load_state_dict(torch.load(path, weights_only=True))",
        )
    version = payload.get("version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{source} is a convkit checkpoint of format version {version!r}; this convkit "
            f"reads versions {', '.join(map(str, _READABLE_VERSIONS))}. Upgrade convkit to "
            "read it."
        )
    _check_entries(source, payload, version)
    if version < 2:
        _unverified(source, require_digest)
    elif payload["digest"] != digest(payload):
        raise _not_a_checkpoint(
            source,
            "corrupt: its content doesn't match the digest stored in it (the file was "
            "damaged or edited after it was written)",
        )
    return payload


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    require_digest: bool = False,
) -> dict[str, Any]:
    """Read and verify a checkpoint file, without loading it into anything.

    The file is opened once: a write that replaces it meanwhile (``os.replace``) can't
    mix two versions. A version-1 file, which has no digest, is refused with
    ``require_digest=True`` and otherwise read with a warning (once per file).

    Raises:
        RuntimeError: On a torch older than 2.6 (see ``MIN_TORCH``).
        FileNotFoundError: If ``path`` isn't a file.
        ValueError: If the file isn't a complete, intact convkit checkpoint, or carries
            pickled objects other than tensors and plain data (refused unread).
    """
    check_bool("require_digest", require_digest)
    check_torch_version()
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No checkpoint at {source}.")
    with open(source, "rb") as file:
        _sniff(source, file)
        payload = _torch_load(source, file, map_location)
    return _check_payload(source, payload, require_digest)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    require_digest: bool = False,
) -> dict[str, Any]:
    """Read a checkpoint safely and load its states into the objects given.

    Uses ``torch.load(..., weights_only=True)``: only tensors and plain data are read,
    and a file carrying other pickled objects is refused before any of it runs. The
    file's digest is verified, and every entry is compared with the objects given
    (keys, shapes and dtypes of the weights, the optimizer's class and parameter groups,
    the scheduler's class, including those a ``SequentialLR`` or ``ChainedScheduler``
    holds, and its state) before any of them changes: on an error they are untouched.
    Files of format version 1 (convkit 0.1) carry no digest; they load with a warning,
    once per file, unless ``require_digest=True`` refuses them.

    Args:
        path: The checkpoint file.
        model: Receives the weights (a DDP, DataParallel or compiled wrapper is unwrapped).
        optimizer: Receives the optimizer state, if the file has one.
        scheduler: Receives the LR-scheduler state, if the file has one.
        map_location: Where tensors are loaded (default: the CPU; ``load_state_dict``
            then copies them to wherever the model lives).
        strict: Whether the model's keys must match the file's exactly (shapes and
            dtypes of the keys both have must match either way).
        require_digest: Refuse files without a digest (format version 1) instead of
            loading them unverified with a warning.

    Returns:
        The checkpoint's contents as a dict (``"epoch"``, ``"history"``, ``"rng"``...).

    Raises:
        RuntimeError: On a torch older than 2.6, whose ``weights_only=True`` is unsafe.
        FileNotFoundError: If ``path`` doesn't exist.
        ValueError: If the file isn't an intact convkit checkpoint, carries objects other
            than tensors and plain data (refused unread), has no digest while
            ``require_digest=True``, or doesn't fit the objects given (an optimizer or
            scheduler of another class included).
        TypeError: If ``strict`` or ``require_digest`` isn't a bool.

    Examples:
        >>> import os, tempfile, torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2)
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "c.pt"), model, epoch=4)
        >>> other = nn.Linear(3, 2)
        >>> load_checkpoint(path, other)["epoch"]
        4
        >>> torch.equal(other.weight, model.weight)
        True
        >>> load_checkpoint(path, nn.Linear(3, 5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...c.pt doesn't fit the model: 'weight' is (2, 3) float32 in the file ...
    """
    check_bool("strict", strict)
    payload = read_checkpoint(path, map_location=map_location, require_digest=require_digest)
    check_fits(
        Path(path), payload, model=model, optimizer=optimizer, scheduler=scheduler, strict=strict
    )
    apply(payload, model=model, optimizer=optimizer, scheduler=scheduler, strict=strict)
    return payload


def resume(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator | None,
    callbacks: Sequence[StatefulCallback],
    epochs: int,
    require_digest: bool = False,
) -> dict[str, Any]:
    """Check everything ``fit(resume_from=path)`` restores, then restore it.

    Weights, optimizer, scheduler, scaler, callback and RNG states are all compared with
    the live objects first; on any mismatch nothing changes. The saved state is
    restored whole, settings included (as Lightning does): one log line says what came
    from the file, and, as a warning, which of the run's own settings (``lr``,
    ``weight_decay``, a scheduler's ``gamma``...) the saved ones replaced. Returns the
    payload.

    Raises:
        ValueError: For a file cut short by Ctrl-C (naming the run's last end-of-epoch
            checkpoint), a checkpoint past ``epochs``, an optimizer or scheduler of
            another class than the saved one, or any state that doesn't fit.
    """
    source = Path(path)
    payload = read_checkpoint(source, require_digest=require_digest)
    saved_epoch = payload["epoch"] or 0
    if payload["interrupted"]:
        clean = payload.get("clean_checkpoint")
        instead = (
            f"Resume from the run's last end-of-epoch checkpoint, {clean}"
            if clean
            else "No end-of-epoch checkpoint was written before it; start again"
        )
        raise ValueError(
            f"Invalid value for argument `resume_from`: {source} was written when Ctrl-C cut "
            f"epoch {saved_epoch + 1} short, so its weights are from the middle of an epoch and "
            f"the run can't continue exactly from it. {instead}, or load only its weights with "
            "load_checkpoint(path, model)."
        )
    if epochs < saved_epoch:
        raise ValueError(
            f"Invalid value for argument `epochs`: {source} is at epoch {saved_epoch}, past "
            f"epochs={epochs}. Pass epochs > {saved_epoch} to train further (or "
            f"epochs={saved_epoch} to only restore the run)."
        )
    check_fits(source, payload, model=model, optimizer=optimizer, scheduler=scheduler, strict=True)
    check_resumable(source, payload, scaler=scaler, generator=generator, callbacks=callbacks)
    before = settings(optimizer, scheduler)
    apply(payload, model=model, optimizer=optimizer, scheduler=scheduler, strict=True)
    apply_resume(payload, scaler=scaler, generator=generator, callbacks=callbacks)
    report_resume(source, payload, before, settings(optimizer, scheduler), callbacks)
    return payload
