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
from pathlib import Path

from mcu_sim.storage_errors import STORAGE_ERRNOS, storage_failure

__all__ = ["EXIT_CODE", "STORAGE_ERRNOS", "RunStorageError", "storage_error", "storage_failure"]


EXIT_CODE = 5  # ``mcu run`` / ``mcu retry-failed`` exit with it (documented in the CLI)


class RunStorageError(RuntimeError):
    """The run folder (or the LLM cache, or another file the run writes) could not be
    written; the run stopped and kept everything finished. ``path`` is the file or folder
    that failed when known, else the run folder."""

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


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
