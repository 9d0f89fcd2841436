"""Run-directory files, written so that a crash never leaves a half-written one visible.

Layout of a run directory::

    manifest.json              config fingerprint, seeds, counts, versions, invocations
    config.yaml                the effective config (secrets masked)
    episodes/<id>.json         one finished episode per file: the durable unit
    index.jsonl                one line per finished episode (re-synced from episodes/ on start)
    shards/shard-00000.jsonl   finished episodes, N per file, one JSON object per line
    shards/shards.json         the current shard set: its files, in order, and their ids
    failures/<id>.json         reason, traceback and raw model text of a failed episode
    checkpoints.sqlite         LangGraph checkpoints, one thread per episode
    images/<id>/...            images of each episode

Every file except ``index.jsonl`` is replaced atomically (temp file, fsync, rename). The
index is appended one whole line per ``write`` call and rebuilt from ``episodes/`` when a
crash may have cut it, so readers that need certainty should read ``episodes/`` or shards.
Shard readers go through ``shards.json`` (:meth:`RunDir.shard_paths`): a rebuild writes a
whole new generation of files beside the old one and then swaps ``shards.json``, so the
set it lists is always complete, old or new.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

SHARD_STATE = "shards.json"
_ORJSON_DOCUMENT = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
_SHARD_NAME = re.compile(r"^shard-(?:g(\d+)-)?(\d+)\.jsonl$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """:func:`atomic_write_bytes` for data made piece by piece: each chunk goes to the temp
    file as it comes, so a large file (a shard of a thousand episodes) is never held whole
    in memory. If making a chunk fails, the target is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_document(data: Any) -> bytes:
    """``data`` as an indented, key-sorted UTF-8 JSON document ending in a newline.

    orjson writes it in native code: the standard library falls back to its pure-Python
    encoder whenever ``indent`` is set, a measurable share of the framework's CPU per
    episode. The layout is the standard library's
    (``indent=2, sort_keys=True, ensure_ascii=False``); floats in exponent form are written
    without padding (``1e-7``, not ``1e-07``). The standard library is still used for what
    orjson refuses (integers beyond 64 bits, non-string keys).
    """
    try:
        return orjson.dumps(data, option=_ORJSON_DOCUMENT)
    except TypeError:  # orjson.JSONEncodeError
        text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        return text.encode("utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json_document(data))


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
        """Ids of the episode files (regular files only: a temp file or a stray folder is
        not a finished episode)."""
        if not self.episodes.is_dir():
            return []
        with os.scandir(self.episodes) as entries:
            return sorted(
                e.name.removesuffix(".json")
                for e in entries
                if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file()
            )

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
        """One whole line per ``write``. Not fsynced: the episode file is the durable
        record, and :meth:`sync_index` rebuilds a line lost or cut by a crash."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
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

    def replace_index_lines(self, records: list[dict[str, Any]]) -> None:
        """Put these index lines (:func:`index_line` of rewritten episodes) in place of their
        episodes' old ones, leaving the others as they are: no episode file is read."""
        fresh = {r["episode_id"]: json.dumps(r, sort_keys=True) for r in records}
        lines, seen = [], set()
        text = self.index.read_text(encoding="utf-8") if self.index.is_file() else ""
        for raw in text.splitlines():
            try:
                episode_id = json.loads(raw).get("episode_id")
            except json.JSONDecodeError:
                continue  # a cut line: sync_index rebuilds it from the episode
            seen.add(episode_id)
            lines.append(fresh.get(episode_id, raw))
        lines += [line for episode_id, line in fresh.items() if episode_id not in seen]
        atomic_write_text(self.index, "".join(line + "\n" for line in lines))

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

    def shard_state(self) -> dict[str, Any]:
        """``shards.json`` (empty when missing or unreadable)."""
        path = self.shards / SHARD_STATE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def shard_paths(self) -> list[Path]:
        """The files of the current shard set, in order: what readers of shards should use.

        A run directory without ``shards.json`` (an early layout) has the plain files.
        """
        state = self.shard_state()
        if not state:
            return sorted(p for p in self.shards.glob("shard-*.jsonl") if shard_key(p.name))
        return [self.shards / item["file"] for item in state.get("shards", [])]


def index_line(episode: dict[str, Any]) -> dict[str, Any]:
    requests = episode.get("image_requests", [])
    db_images = [(r.get("image") or {}).get("db_id") for r in requests]
    return {
        "db_images": [db_id for db_id in db_images if db_id],  # for run-level filters
        "removals": dict(Counter(r.get("rule", "") for r in episode.get("removals", []))),
        "episode_id": episode["episode_id"],
        "status": episode.get("status", "complete"),
        "sessions": len(episode.get("sessions", [])),
        "images": sum(1 for r in requests if r.get("status") == "aligned"),
        "image_requests": len(requests),
        "name": (episode.get("demographics") or {}).get("name", ""),  # none if augmented
        "file": f"episodes/{episode['episode_id']}.json",
    }


@functools.lru_cache(maxsize=4096)
def shard_key(name: str) -> tuple[int, int] | None:
    """``(generation, number)`` of a shard file name, None for any other name (cached: the
    writer looks up its last shard among all of them for every episode)."""
    match = _SHARD_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1) or 0), int(match.group(2))


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
