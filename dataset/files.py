"""Files that appear whole: a stream of lines written under a temporary name and renamed,
a folder built beside its target and moved into place, images hard-linked (or copied)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mcu_sim.runner.outputs import atomic_write_chunks


def write_lines(target: Path, lines: Iterator[str]) -> int:
    """Stream lines into ``target`` atomically (temp file, fsync, rename; see
    :func:`~mcu_sim.runner.outputs.atomic_write_chunks`). Returns the count."""
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        for line in lines:
            count += 1
            yield (line + "\n").encode("utf-8")

    atomic_write_chunks(target, chunks())
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
