"""What a checkpoint may hold: tensors and plain data, checked before a byte is written.

Checkpoints are read with ``torch.load(weights_only=True)``, which rebuilds tensors and
plain data (``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``, ``complex``,
lists, tuples, sets and dicts of them, ``torch.dtype``/``device``/``Size``...) and
refuses everything else. A payload is therefore made plain before it is written: a
``pathlib`` path becomes its ``str`` and a NumPy scalar its Python scalar (equal values
of the types NumPy converts them to with ``.item()``); anything else the reader would
refuse is refused now, with a ``TypeError`` naming where it sits in the payload. The
reader itself is the judge: the payload, its tensors left out, makes one round trip
through ``torch.save`` and ``torch.load(weights_only=True)`` in memory.
"""

from __future__ import annotations

import collections
import copy
import io
import os
import pickle
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

__all__ = ["plain_payload"]

_LABELS = {"model_config": "model.config", "callbacks": "callbacks"}
_SCALARS = (str, int, float, bool, type(None))
# Kinds torch.load(weights_only=True) always rebuilds (a subset of its allow-list): a
# payload of only these needs no round trip.
_KNOWN = frozenset((*_SCALARS, torch.Tensor, torch.nn.Parameter, torch.dtype, torch.device))
_CONTAINERS = frozenset((dict, collections.OrderedDict, list, tuple))


def _refuse(target: os.PathLike[str], where: str, value: Any, fix: str) -> TypeError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return TypeError(
        f"Can't save a checkpoint to {os.fspath(target)}: {where} is a {kind} ({shown}), which "
        "load_checkpoint could not read back (a checkpoint holds tensors and plain data: str, "
        f"int, float, bool, None, and lists, tuples and dicts of them). {fix} Nothing was "
        "written."
    )


def _convert(value: Any, where: str, target: os.PathLike[str]) -> Any:
    """``value`` with paths and NumPy scalars made plain; the same object if none were."""
    if isinstance(value, torch.Tensor) or type(value) in _SCALARS:
        return value
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, (np.number, np.bool_, np.str_, np.bytes_)):
        return value.item()
    if isinstance(value, np.ndarray):
        raise _refuse(
            target,
            where,
            value,
            "Store it as a tensor (torch.from_numpy(array)) or as a list (array.tolist()).",
        )
    if isinstance(value, dict):
        items = {k: _convert(v, f"{where}[{k!r}]", target) for k, v in value.items()}
        changed = [k for k, v in items.items() if v is not value[k]]
        if not changed:
            return value
        plain = copy.copy(value)  # the same kind of dict (OrderedDict, Counter...)
        for key in changed:
            plain[key] = items[key]
        return plain
    if type(value) in (list, tuple):
        items_ = [_convert(v, f"{where}[{i}]", target) for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items_, value, strict=True)):
            return value
        return type(value)(items_)
    return value


def _without_tensors(value: Any) -> Any:
    """The structure of ``value`` with every plain tensor as ``None`` (tensors are always
    readable; leaving them out keeps the round trip small)."""
    if type(value) in (torch.Tensor, torch.nn.Parameter):
        return None
    if isinstance(value, dict):
        skeleton = copy.copy(value)
        for key, item in value.items():
            skeleton[key] = _without_tensors(item)
        return skeleton
    if type(value) in (list, tuple):
        return type(value)(_without_tensors(v) for v in value)
    return value


def _known(value: Any) -> bool:
    """Whether ``value`` holds only kinds the reader always rebuilds (no round trip needed)."""
    kind = type(value)
    if kind in _KNOWN:
        return True
    if kind not in _CONTAINERS:
        return False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return all(_known(key) and _known(item) for key, item in items)


def _readable(value: Any) -> bool:
    """Whether ``torch.load(weights_only=True)`` rebuilds what ``torch.save`` writes of it."""
    buffer = io.BytesIO()
    try:
        torch.save(_without_tensors(value), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except (pickle.PickleError, AttributeError, TypeError, RuntimeError, ValueError):
        return False
    return True


def _first_unreadable(value: Any, where: str) -> tuple[str, Any] | None:
    """The innermost place in ``value`` that the reader refuses, and what is there."""
    if type(value) in (torch.Tensor, torch.nn.Parameter, *_SCALARS):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_unreadable(key, f"a key of {where}") or _first_unreadable(
                item, f"{where}[{key!r}]"
            )
            if found is not None:
                return found
        empty = copy.copy(value)
        empty.clear()
        return None if _readable(empty) else (where, value)  # the kind (a defaultdict, say)
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            found = _first_unreadable(item, f"{where}[{index}]")
            if found is not None:
                return found
        return None
    return None if _readable(value) else (where, value)


def plain_payload(payload: dict[str, Any], target: os.PathLike[str]) -> dict[str, Any]:
    """``payload`` made readable by ``torch.load(weights_only=True)``, or a ``TypeError``.

    Paths become ``str`` and NumPy scalars Python scalars; a NumPy array, or any object
    the reader would refuse, raises a ``TypeError`` naming where it is (e.g.
    ``model.config['root']``), before anything is written to ``target``.

    Examples:
        >>> from pathlib import Path
        >>> import numpy as np
        >>> plain_payload({"model_config": {"root": Path("data")}, "best": np.float64(0.5)}, "c.pt")
        {'model_config': {'root': 'data'}, 'best': 0.5}
        >>> plain_payload({"model_config": {"f": print}}, "c.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Can't save a checkpoint to c.pt: model.config['f'] is a ...
    """
    plain = {key: _convert(value, _LABELS.get(key, key), target) for key, value in payload.items()}
    if _known(plain) or _readable(plain):
        return plain
    for key, value in plain.items():
        found = _first_unreadable(value, _LABELS.get(key, key))
        if found is not None:
            raise _refuse(target, *found, "Convert it to one of those (e.g. a str) first.")
    raise _refuse(target, "the checkpoint", plain, "Convert it to plain data first.")
