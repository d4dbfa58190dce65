"""Atomic, durable file writes that several writers can share, and a writability check.

Each write goes to a temporary file of its own next to the target, named after the
target, the host, the process and a random suffix (``.<name>.<host>-<pid>-<random>.tmp``),
is flushed and fsynced, renamed over the target with ``os.replace``, and the directory
is then fsynced so the rename itself survives a power failure (POSIX). The target is
therefore always one complete file: the previous one, or the last one renamed into
place, even when two processes write it at once (two runs pointed at the same path, or
a restarted job whose old process still runs), since neither touches the other's
temporary file.

A process killed mid-write leaves its temporary file behind. The next write of the
same target removes such files once they are stale: their process, on this host, no
longer runs, or (any host) they haven't changed for ``STALE_AFTER_S``. A live writer's
file is never removed. A write that runs out of disk space (or into a file-size limit)
removes its temporary file and raises an ``OSError`` that says so, leaving the target as
it was. New files get the permissions ``open`` gives under the process umask (``0o644``
for the usual umask ``022``), like ``torch.save``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["atomic_write", "stale_temp_paths", "temp_path", "unwritable_reason"]

_DEFAULT_NAME_MAX = 255
#: A temporary file unchanged this long is stale whoever owns it (a day: far longer
#: than any write, short enough that a reused process id can't keep one forever).
STALE_AFTER_S = 24 * 3600
_FULL = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file reached the process's file-size limit (ulimit -f)",
}
if hasattr(errno, "EDQUOT"):
    _FULL[errno.EDQUOT] = "the disk quota is used up"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}(?:\.convkit)?\.tmp")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no such dir yet
        return _DEFAULT_NAME_MAX


def _stems(target: Path) -> tuple[str, str]:
    """The two name stems of ``target``'s temporary files: its name, and a hash of it for
    names too long to extend."""
    return target.name, hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]


def temp_path(target: Path) -> Path:
    """A new temporary file name for one write of ``target``, next to it.

    ``.<name>.<host>-<pid>-<random>.tmp``: no other write, in this process or another,
    gets the same name. When that name would be longer than the file system allows,
    ``.<hash of name>.<host>-<pid>-<random>.convkit.tmp`` is used instead, so any valid
    target name works.
    """
    name, short = _stems(target)
    owner = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    full = f".{name}.{owner}.tmp"
    if len(os.fsencode(full)) <= _name_max(target.parent):
        return target.with_name(full)
    return target.with_name(f".{short}.{owner}.convkit.tmp")


def _owner_runs(host: str, pid: int) -> bool:
    if host != _HOST or os.name != "posix":  # (Windows' os.kill(pid, 0) would end it)
        return True  # can't tell: only the age rule applies
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def stale_temp_paths(target: Path) -> list[Path]:
    """The temporary files of ``target`` left by writes that can't finish any more.

    A file is stale when the process that writes it, on this host, no longer runs, or
    when it hasn't changed for ``STALE_AFTER_S``. The files of live writers (this
    process included) are not listed.
    """
    stems = [f".{stem}" for stem in _stems(target)]
    stale = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    for entry in entries:
        stem = next((s for s in stems if entry.name.startswith(s)), None)
        found = _OWNER.fullmatch(entry.name[len(stem) :]) if stem is not None else None
        if found is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:  # removed meanwhile (by its writer's rename, or another cleaner)
            continue
        if age > STALE_AFTER_S or not _owner_runs(found["host"], int(found["pid"])):
            stale.append(Path(entry.path))
    return stale


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":  # Windows can't open a directory; its renames are metadata-journaled
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


class _TempFile(io.FileIO):
    """The raw temporary file: counts what reached it and keeps what stopped a write.

    ``torch.save`` turns any exception from a write (a full disk, a Ctrl-C) into its own
    ``RuntimeError`` ("unexpected pos"); the original is kept here to be raised instead.
    """

    written = 0
    failure: BaseException | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            count = super().write(data)
        except BaseException as err:
            self.failure = self.failure or err
            raise
        self.written += count or 0
        return count or 0


def _out_of_space(target: Path, kind: str, err: OSError, written: int) -> OSError:
    before = (
        f"The last good {kind} at {target} is intact"
        if target.exists()
        else f"Nothing was written at {target} (no earlier {kind} was there)"
    )
    return OSError(
        err.errno,
        f"Couldn't write {target}: {_FULL[err.errno or 0]} ({err.strerror}) after "
        f"{written:,} bytes. {before}, and the partial temporary file was removed. Free "
        "some space (or raise the limit) and save again.",
    )


@contextlib.contextmanager
def atomic_write(target: Path, *, kind: str = "file") -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``target`` atomically when the block succeeds.

    Stale temporary files of ``target`` are removed first (see ``stale_temp_paths``).
    On an exception the temporary file is removed and ``target`` is left as it was; a
    full disk, quota or file-size limit raises an ``OSError`` saying so, which calls
    the previous file ``the last good <kind>``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_paths(target):
        stale.unlink(missing_ok=True)
    tmp = temp_path(target)
    raw: _TempFile | None = None
    try:
        raw = _TempFile(_create(tmp), "wb")
        with io.BufferedWriter(raw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if raw is not None:
            raw.close()
        tmp.unlink(missing_ok=True)
        cause = raw.failure if raw is not None and raw.failure is not None else err
        if isinstance(cause, OSError) and cause.errno in _FULL:
            raise _out_of_space(target, kind, cause, raw.written if raw else 0) from None
        if cause is not err:  # what torch reported as "unexpected pos": a Ctrl-C, an I/O error
            raise cause from None
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
