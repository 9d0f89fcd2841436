"""Telling a storage failure (a full disk, a quota, a read-only or failing file system)
from any other error, at every layer: the runner stops the run on one
(:mod:`mcu_sim.runner.write_errors`), and a step that records a tool's error as a failed try
(the aligner, the web search's download workers) lets this one through instead, so a full
disk is never recorded as an image that could not be found."""

from __future__ import annotations

import errno
import sqlite3

# The errors of the storage, not of the data: disk full, quota, file too large for the
# file system or a limit, read-only file system, I/O error.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
# SQLite's primary result codes for the same: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL
# (an extended code keeps its primary code in the low byte).
SQLITE_STORAGE_CODES = frozenset({8, 10, 13})


def exception_chain(exc: BaseException) -> list[BaseException]:
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
    for error in exception_chain(exc):
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
