"""The judge's files in a run directory, appended so that a kill loses at most the
episodes being judged at that moment::

    judge/scores.jsonl          one line per judged episode (scores, justifications, usage)
    judge/failures.jsonl        one line per episode whose answer stayed invalid
    judge/summary.json          means, intervals, STARK's ratings (rewritten atomically)
    judge/versus/<other>/pairs.jsonl, summary.json     the head-to-head comparison

Each line goes out in one ``write`` on a file opened for appending and is fsynced; a line
cut by a power loss is skipped when read, and its episode is judged again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JUDGE_DIR = "judge"


def append_line(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The whole lines of ``path`` (none when it is missing); a cut line is skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            if not raw.endswith("\n"):
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def judge_dir(run_dir: Path) -> Path:
    return Path(run_dir) / JUDGE_DIR


def versus_dir(run_dir: Path, other: Path) -> Path:
    return judge_dir(run_dir) / "versus" / Path(other).resolve().name
