"""Run-directory files, written so that a crash never leaves a half-written one visible.

Layout of a run directory::

    manifest.json              config fingerprint, seeds, counts, versions, invocations
    config.yaml                the effective config (secrets masked)
    episodes/<id>.json         one finished episode per file: the durable unit
    index.jsonl                one line per finished episode (re-synced from episodes/ on start)
    shards/shard-00000.jsonl   finished episodes, N per file, one JSON object per line
    shards/shards.json         which episode is in which shard (a cache of the shard files)
    failures/<id>.json         reason, traceback and raw model text of a failed episode
    checkpoints.sqlite         LangGraph checkpoints, one thread per episode
    images/<id>/...            images of each episode

Every file except ``index.jsonl`` is replaced atomically (temp file, fsync, rename). The
index is appended one whole line per ``write`` call and rebuilt from ``episodes/`` when a
crash may have cut it, so readers that need certainty should read ``episodes/`` or shards.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

SHARD_STATE = "shards.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def index(self) -> Path:
        return self.root / "index.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints.sqlite"

    def create(self) -> None:
        for folder in (self.root, self.episodes, self.failures, self.images, self.shards):
            folder.mkdir(parents=True, exist_ok=True)

    def episode_path(self, episode_id: str) -> Path:
        return self.episodes / f"{episode_id}.json"

    def failure_path(self, episode_id: str) -> Path:
        return self.failures / f"{episode_id}.json"

    def is_finished(self, episode_id: str) -> bool:
        return self.episode_path(episode_id).is_file()

    def finished_ids(self) -> list[str]:
        return sorted(p.stem for p in self.episodes.glob("*.json"))

    def failed_ids(self) -> list[str]:
        return sorted(p.stem for p in self.failures.glob("*.json"))

    def read_episode(self, episode_id: str) -> dict[str, Any]:
        return json.loads(self.episode_path(episode_id).read_text(encoding="utf-8"))

    def write_episode(self, episode: dict[str, Any]) -> Path:
        """Episode file first (atomic), then its index line; clear any old failure record."""
        episode_id = episode["episode_id"]
        path = self.episode_path(episode_id)
        atomic_write_json(path, episode)
        self.append_index(index_line(episode))
        self.failure_path(episode_id).unlink(missing_ok=True)
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
        """Recreate index.jsonl from every episode file (after episodes were rewritten)."""
        lines = [
            json.dumps(index_line(self.read_episode(i)), sort_keys=True)
            for i in self.finished_ids()
        ]
        atomic_write_text(self.index, "".join(line + "\n" for line in lines))
        return len(lines)

    def sync_index(self) -> int:
        """Make index.jsonl list exactly the episode files, reading only episodes it lacks.

        A crash between an episode file and its index line (or mid-line) is repaired here
        without re-reading the whole run, which matters at 100K episodes.
        """
        finished = self.finished_ids()
        known: dict[str, str] = {}
        if self.index.is_file():
            for raw in self.index.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash; rebuilt below from the episode
                known.setdefault(record.get("episode_id", ""), raw)
        lines = []
        for episode_id in finished:
            line = known.get(episode_id)
            if line is None:
                line = json.dumps(index_line(self.read_episode(episode_id)), sort_keys=True)
            lines.append(line)
        if len(known) != len(finished) or set(known) != set(finished):
            atomic_write_text(self.index, "".join(line + "\n" for line in lines))
        return len(lines)

    def write_failure(self, episode_id: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.failure_path(episode_id), record)

    def read_failure(self, episode_id: str) -> dict[str, Any]:
        return json.loads(self.failure_path(episode_id).read_text(encoding="utf-8"))

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest.is_file():
            return None
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def rebuild_shards(self, size: int) -> int:
        """Rewrite every shard from the episode files (after ``mcu filter`` rewrote them)."""
        for path in self.shards.glob("shard-*.jsonl"):
            path.unlink()
        (self.shards / SHARD_STATE).unlink(missing_ok=True)
        writer = ShardWriter(self, size)
        for episode_id in self.finished_ids():
            writer.add(episode_id)
        writer.flush()
        return len(writer.shards)


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


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.jsonl"


class ShardWriter:
    """Groups finished episodes into JSONL shards of ``size`` episodes.

    Shard files are the truth: each is replaced atomically, so a reader sees a whole old
    version or a whole new one, never a cut line. A full shard is never touched again; the
    last, partial shard is rewritten (same name, more lines) when a run ends or resumes.
    ``shards.json`` only caches which ids each file holds; a file it does not describe (a
    crash between the two writes) is read back on :meth:`load`. Thread-safe.
    """

    def __init__(self, run: RunDir, size: int) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1 (got {size})")
        self.run = run
        self.size = size
        self.shards: dict[str, list[str]] = {}  # file name -> episode ids, in shard order
        self.pending: list[str] = []
        self._in_shards: set[str] = set()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- state
    def load(self) -> None:
        """Read the shard state and queue every finished episode not yet in a shard."""
        with self._lock:
            self.run.shards.mkdir(parents=True, exist_ok=True)
            cached = self._read_state()
            self.shards = {}
            for path in sorted(self.run.shards.glob("shard-*.jsonl")):
                entry = cached.get(path.name)
                if entry and entry.get("bytes") == path.stat().st_size:
                    ids = list(entry["ids"])
                else:
                    ids = _ids_in_file(path)
                ids = [i for i in ids if i not in self._in_shards]  # never count one twice
                self._in_shards.update(ids)
                self.shards[path.name] = ids
            self.pending = [i for i in self.run.finished_ids() if i not in self._in_shards]
            self._save_state()

    def _read_state(self) -> dict[str, dict[str, Any]]:
        path = self.run.shards / SHARD_STATE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
        return {item["file"]: item for item in data.get("shards", [])}

    def _save_state(self) -> None:
        items = []
        for name, ids in self.shards.items():
            path = self.run.shards / name
            size = path.stat().st_size if path.is_file() else 0
            items.append({"file": name, "ids": ids, "bytes": size})
        atomic_write_json(self.run.shards / SHARD_STATE, {"shard_size": self.size, "shards": items})

    # -------------------------------------------------------------- writing
    def _open_shard(self) -> tuple[str, list[str]]:
        """The partial last shard (to extend), or a new empty one."""
        if not self.shards:
            return shard_name(0), []
        last = max(self.shards)
        if len(self.shards[last]) < self.size:
            return last, self.shards[last]
        return shard_name(int(last.removeprefix("shard-").removesuffix(".jsonl")) + 1), []

    def _write(self, name: str, ids: list[str]) -> Path:
        lines = []
        for episode_id in ids:
            episode = self.run.read_episode(episode_id)
            lines.append(json.dumps(episode, ensure_ascii=False, separators=(",", ":")))
        path = self.run.shards / name
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        self.shards[name] = list(ids)
        self._in_shards.update(ids)
        self._save_state()
        return path

    def add(self, episode_id: str) -> list[Path]:
        """Queue a finished episode; write every shard that became full. Returns those."""
        written = []
        with self._lock:
            if episode_id in self._in_shards or episode_id in self.pending:
                return []
            self.pending.append(episode_id)
            while True:
                name, ids = self._open_shard()
                room = self.size - len(ids)
                if len(self.pending) < room:
                    break
                take, self.pending = self.pending[:room], self.pending[room:]
                written.append(self._write(name, ids + take))
        return written

    def flush(self) -> Path | None:
        """Write what is pending into the partial last shard (at the end of a run)."""
        with self._lock:
            if not self.pending:
                return None
            name, ids = self._open_shard()
            take, self.pending = self.pending, []
            return self._write(name, ids + take)


def _ids_in_file(path: Path) -> list[str]:
    ids = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                ids.append(json.loads(line)["episode_id"])
    return ids


def seed_ranges(seeds: list[int] | set[int]) -> list[list[int]]:
    """Compress seeds to ``[start, stop)`` ranges (100K consecutive seeds stay one pair)."""
    ranges: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if ranges and ranges[-1][1] == seed:
            ranges[-1][1] = seed + 1
        else:
            ranges.append([seed, seed + 1])
    return ranges


def seeds_of(ranges: list[list[int]]) -> list[int]:
    return [seed for start, stop in ranges for seed in range(start, stop)]
