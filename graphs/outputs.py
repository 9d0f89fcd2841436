"""Run-directory files, written so that a crash never leaves a half-written one visible.

Layout of a run directory::

    manifest.json          config fingerprint, seeds, counts, versions
    config.yaml            the effective config (secrets masked)
    episodes/<id>.json     one finished episode per file (atomic write)
    index.jsonl            one line per finished episode (rebuilt from episodes/ on start)
    failures/<id>.json     reason, traceback and raw model text of a failed episode
    checkpoints.sqlite     LangGraph checkpoints, one thread per episode
    images/<id>/...        images of each episode
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


class RunDir:
    """Paths and small file operations of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def episodes(self) -> Path:
        return self.root / "episodes"

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def index(self) -> Path:
        return self.root / "index.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints.sqlite"

    def create(self) -> None:
        for folder in (self.root, self.episodes, self.failures, self.images):
            folder.mkdir(parents=True, exist_ok=True)

    def episode_path(self, episode_id: str) -> Path:
        return self.episodes / f"{episode_id}.json"

    def is_finished(self, episode_id: str) -> bool:
        return self.episode_path(episode_id).is_file()

    def finished_ids(self) -> list[str]:
        return sorted(p.stem for p in self.episodes.glob("*.json"))

    def failed_ids(self) -> list[str]:
        return sorted(p.stem for p in self.failures.glob("*.json"))

    def write_episode(self, episode: dict[str, Any]) -> Path:
        """Episode file first (atomic), then its index line; clear any old failure record."""
        episode_id = episode["episode_id"]
        path = self.episode_path(episode_id)
        atomic_write_json(path, episode)
        self.append_index(index_line(episode))
        (self.failures / f"{episode_id}.json").unlink(missing_ok=True)
        return path

    def append_index(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rebuild_index(self) -> int:
        """Recreate index.jsonl from episodes/ (after a crash it may miss the last line)."""
        lines = []
        for episode_id in self.finished_ids():
            data = json.loads(self.episode_path(episode_id).read_text())
            lines.append(json.dumps(index_line(data), sort_keys=True))
        atomic_write_text(self.index, "".join(line + "\n" for line in lines))
        return len(lines)

    def write_failure(self, episode_id: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.failures / f"{episode_id}.json", record)

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest.is_file():
            return None
        return json.loads(self.manifest.read_text())


def index_line(episode: dict[str, Any]) -> dict[str, Any]:
    requests = episode.get("image_requests", [])
    return {
        "episode_id": episode["episode_id"],
        "status": episode.get("status", "complete"),
        "sessions": len(episode.get("sessions", [])),
        "images": sum(1 for r in requests if r.get("status") == "aligned"),
        "image_requests": len(requests),
        "name": episode["demographics"]["name"],
        "file": f"episodes/{episode['episode_id']}.json",
    }
