"""Telling a storage failure (a full disk, a quota, a read-only or failing file system) from
an episode's own failure.

An episode that fails is recorded and the run goes on; a run folder that cannot be written
is no episode's fault, and every later episode would fail the same way. The runner stops
starting episodes at the first such error, records no failure for it (there is no room
for one, and the episode did nothing wrong), keeps every finished episode, and raises
:class:`RunStorageError` with one message: which path, what happened, what to do. A re-run
after the cause is fixed resumes: finished episodes are skipped, the others continue from
their last checkpoint (SQLite rolls a failed write back, so the checkpoints stay whole).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

# The errors of the storage, not of the data: disk full, quota, file too large for the
# file system or a limit, read-only file system, I/O error.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# SQLite's primary result codes for the same: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL
# (an extended code keeps its primary code in the low byte).
SQLITE_STORAGE_CODES = frozenset({8, 10, 13})
EXIT_CODE = 5  # ``mcu run`` / ``mcu retry-failed`` exit with it (documented in the CLI)


class RunStorageError(RuntimeError):
    """The run folder (or the LLM cache, or another file the run writes) could not be
    written; the run stopped and kept everything finished. ``path`` is the file or folder
    that failed when known, else the run folder."""

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    return seen


def storage_failure(exc: BaseException) -> BaseException | None:
    """The storage error behind ``exc`` (itself or one it was raised from), or None."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        if isinstance(error, sqlite3.Error):
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in SQLITE_STORAGE_CODES:
                return error
            text = str(error).lower()
            if "disk is full" in text or "disk i/o error" in text or "readonly" in text:
                return error
    return None


def storage_error(error: BaseException, run_dir: Path, retry_command: str) -> RunStorageError:
    """The one message for a storage ``error`` met while writing into ``run_dir``."""
    path = Path(os.fsdecode(error.filename)) if getattr(error, "filename", None) else run_dir
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
    else:
        reason = f"{type(error).__name__}: {error}"
    hint = {
        errno.EROFS: "make it writable",
        errno.EIO: "check the disk",
    }.get(getattr(error, "errno", None), "free some space (or raise the quota)")
    message = (
        f"cannot write to {path} ({reason}). The run stopped; every finished episode is "
        f"kept in {run_dir}. {hint[0].upper()}{hint[1:]}, then run `{retry_command}` to "
        "continue where it stopped (or copy the run folder to a disk with room and resume "
        "there)."
    )
    return RunStorageError(message, path, reason)
