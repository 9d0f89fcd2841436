"""Files that appear whole: a stream of lines written under a temporary name and renamed,
a folder built beside its target and moved into place, images hard-linked (or copied)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_lines(target: Path, lines: Iterator[str]) -> int:
    """Stream lines into a temp file beside ``target``, fsync, rename. Returns the count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def replace_dir(built: Path, target: Path) -> None:
    """Move a finished folder into place; an older export there is removed afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_file(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (copy across file systems); an existing ``dest`` or
    a missing ``source`` is left alone."""
    if not source.is_file() or dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
