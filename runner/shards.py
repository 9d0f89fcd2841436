"""Finished episodes grouped into JSONL shards (``shards/shard-00000.jsonl``, ...).

``shards/shards.json`` names the current set; readers go through
:meth:`~mcu_sim.runner.outputs.RunDir.shard_paths`. See :mod:`mcu_sim.runner.outputs` for
the whole run directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson

from mcu_sim.runner.outputs import (
    SHARD_STATE,
    RunDir,
    atomic_write_chunks,
    atomic_write_json,
    shard_key,
)


def shard_name(number: int, generation: int = 0) -> str:
    """``shard-00003.jsonl``; a rebuilt set (generation 1, 2, …): ``shard-g0001-00003.jsonl``."""
    if generation:
        return f"shard-g{generation:04d}-{number:05d}.jsonl"
    return f"shard-{number:05d}.jsonl"


class ShardWriter:
    """Groups finished episodes into JSONL shards of ``size`` episodes.

    Each shard file is replaced atomically, so a reader sees a whole old version or a whole
    new one, never a cut line. A full shard is never touched again; the last, partial shard
    is rewritten (same name, more lines) when a run ends or resumes. ``shards.json`` names
    the current set (its generation, files and ids); a file of that generation it does not
    describe yet (a crash between the two writes) is read back on :meth:`load`, and files of
    any other generation (an interrupted rebuild) are removed. Thread-safe.
    """

    def __init__(self, run: RunDir, size: int, generation: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1 (got {size})")
        self.run = run
        self.size = size
        self.generation = generation or 0
        self._fixed_generation = generation is not None
        self.shards: dict[str, list[str]] = {}  # file name -> episode ids, in shard order
        self.pending: list[str] = []
        self._in_shards: set[str] = set()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- state
    def load(self) -> None:
        """Read the shard state and queue every finished episode not yet in a shard."""
        with self._lock:
            self.run.shards.mkdir(parents=True, exist_ok=True)
            state = self.run.shard_state()
            if not self._fixed_generation:
                self.generation = int(state.get("generation", 0))
            cached = {item["file"]: item for item in state.get("shards", [])}
            self.shards = {}
            for path in sorted(self.run.shards.glob("shard-*.jsonl"), key=_shard_order):
                key = shard_key(path.name)
                if key is None or key[0] != self.generation:
                    continue
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
            self.remove_strays()

    def _save_state(self) -> None:
        items = []
        for name, ids in self.shards.items():
            path = self.run.shards / name
            size = path.stat().st_size if path.is_file() else 0
            items.append({"file": name, "ids": ids, "bytes": size})
        state = {"shard_size": self.size, "generation": self.generation, "shards": items}
        atomic_write_json(self.run.shards / SHARD_STATE, state)

    def remove_strays(self, generation: int | None = None) -> None:
        """Delete shard files not in this set (of ``generation`` only, if given)."""
        for path in self.run.shards.glob("shard-*.jsonl"):
            key = shard_key(path.name)
            if key is None or path.name in self.shards:
                continue
            if generation is None or key[0] == generation:
                path.unlink(missing_ok=True)

    # -------------------------------------------------------------- writing
    def _open_shard(self) -> tuple[str, list[str]]:
        """The partial last shard (to extend), or a new empty one."""
        if not self.shards:
            return shard_name(0, self.generation), []
        last = self._last_shard()
        if len(self.shards[last]) < self.size:
            return last, self.shards[last]
        number = _shard_order(last)[1] + 1
        return shard_name(number, self.generation), []

    def _last_shard(self) -> str:
        """The highest-numbered shard: the dict's last key, as it holds shards in number
        order (``load`` sorts them; a new one is always the next number). O(1), where a scan
        of every name cost 18 us per episode at 93 shards."""
        return next(reversed(self.shards))

    def _write(self, name: str, ids: list[str], save: bool = True) -> Path:
        path = self.run.shards / name
        atomic_write_chunks(path, self._lines(ids))
        self.shards[name] = list(ids)
        self._in_shards.update(ids)
        if save:
            self._save_state()
        return path

    def _lines(self, ids: list[str]) -> Iterator[bytes]:
        """One compact JSON line per episode, read from its file one at a time."""
        for episode_id in ids:
            yield shard_line(self.run.episode_path(episode_id).read_bytes())

    def fills_a_shard(self) -> bool:
        """Whether the next :meth:`add` of a new episode writes a full shard."""
        with self._lock:
            _, ids = self._open_shard()
            return len(self.pending) + 1 >= self.size - len(ids)

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
        """Write what is pending (at the end of a run): into the partial last shard, then
        into new ones of ``size`` each. Returns the last file written."""
        with self._lock:
            written = None
            while self.pending:
                name, ids = self._open_shard()
                room = self.size - len(ids)
                take, self.pending = self.pending[:room], self.pending[room:]
                written = self._write(name, ids + take)
            return written


# 19 digits in a row: maybe an integer orjson would read as a float (beyond 64 bits). Found
# by mapping every digit to "0" and searching for 19 of them: a regex like [0-9]{19} counts
# the digits again from each digit of a long number, 13 us per KB of an episode's JSON.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def has_long_number(document: bytes) -> bool:
    """Whether ``document`` has 19 or more digits in a row."""
    return _NINETEEN_DIGITS in document.translate(_DIGITS_AS_ZERO)


def shard_line(document: bytes) -> bytes:
    """An episode file's JSON as one compact line (keys in the file's order, UTF-8 as is).

    Parsed and written by orjson: the standard library's decoder and encoder were about 2 %
    of the instructions per LLM call. A file with a number that may not fit 64 bits goes
    through the standard library, which keeps every digit (orjson would round it)."""
    if not has_long_number(document):
        try:
            return orjson.dumps(orjson.loads(document), option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONDecodeError:
            pass  # let the standard library raise its own error, or read what orjson refuses
    episode = json.loads(document.decode("utf-8"))
    return (json.dumps(episode, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _shard_order(name: str | Path) -> tuple[int, int]:
    return shard_key(name.name if isinstance(name, Path) else name) or (-1, -1)


def _ids_in_file(path: Path) -> list[str]:
    ids = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                ids.append(json.loads(line)["episode_id"])
    return ids


def rebuild_shards(run: RunDir, size: int) -> int:
    """Rewrite every shard from the episode files (after episodes were rewritten).

    Crash-safe at every point: the new set is written as a new generation of files
    (``shard-g0001-00000.jsonl``, ...) beside the old one, then ``shards.json`` is
    swapped to it atomically, then the old files are removed. Before the swap readers
    see the whole old set, after it the whole new set; leftovers of an interrupted
    rebuild are removed by the next :meth:`ShardWriter.load` or rebuild.
    """
    generation = int(run.shard_state().get("generation", 0)) + 1
    writer = ShardWriter(run, size, generation=generation)
    writer.remove_strays(generation)  # an earlier interrupted rebuild's files
    ids = run.finished_ids()
    for start in range(0, len(ids), size):
        number = start // size
        writer._write(shard_name(number, generation), ids[start : start + size], save=False)
    writer._save_state()  # the swap
    writer.remove_strays()
    return len(writer.shards)
