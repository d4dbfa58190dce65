"""Atomic, durable file writes, and a check that a path can be written at all.

A file is written under one fixed temporary name next to its target, flushed and
fsynced, renamed over the target with ``os.replace``, and then the directory is fsynced
so the rename itself survives a power failure (POSIX). A process killed mid-write
leaves the previous target intact and at most one temporary file, which the next write
of the same target replaces. New files get the permissions ``open`` gives under the
process umask (``0o644`` for the usual umask ``022``), like ``torch.save``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "temp_path", "unwritable_reason"]

_DEFAULT_NAME_MAX = 255


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no such dir yet
        return _DEFAULT_NAME_MAX


def temp_path(target: Path) -> Path:
    """The one temporary file used while writing ``target``: ``.<name>.tmp`` next to it.

    When that name would be longer than the file system allows, a short name derived
    from a hash of ``target``'s name is used instead, so any valid target name works.
    """
    name = f".{target.name}.tmp"
    if len(os.fsencode(name)) > _name_max(target.parent):
        digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]
        name = f".{digest}.convkit.tmp"
    return target.with_name(name)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":  # Windows can't open a directory; its renames are metadata-journaled
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path) -> int:
    path.unlink(missing_ok=True)  # a temp file left by a killed write, possibly other permissions
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


@contextlib.contextmanager
def atomic_write(target: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``target`` atomically when the block succeeds.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with os.fdopen(_create(tmp), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def unwritable_reason(target: Path) -> str | None:
    """Why ``target`` can't be written by ``atomic_write``, or ``None`` if it can.

    Creates missing parent directories (as writing would) and a temporary file that it
    removes again, so permissions, read-only file systems and name limits are all met
    for real rather than predicted.
    """
    if target.is_dir():
        return "it is an existing directory; give a file name inside it"
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, where a directory is needed"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(_create(tmp := temp_path(target)))
        tmp.unlink()
    except OSError as err:
        return f"it can't be created ({err.strerror or err})"
    return None
