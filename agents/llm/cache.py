"""Content-addressed response cache on SQLite (WAL), shared safely between processes."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def connect_wal(
    path: str | Path, timeout_s: float = 30.0, page_size: int | None = None
) -> sqlite3.Connection:
    """A connection in WAL mode that waits up to ``timeout_s`` for other writers.

    ``page_size`` applies to a database this connection creates (SQLite fixes it when the
    first page is written, and a WAL database keeps it); an existing one keeps its own.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once (without its busy handler) when another connection is switching it at the
    same moment, so that one step is retried until the deadline. A database already in WAL
    mode is not switched again.
    """
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    if page_size is not None:
        conn.execute(f"PRAGMA page_size={int(page_size)}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.02 + random.random() * 0.05)


def canonical_json(value: Any) -> str:
    """The JSON text a cache key hashes: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Encoded:
    """A cache-key part given as its :func:`canonical_json` text already: a step's JSON
    schema is the same on every call, and encoding it each time was most of a key's cost."""

    text: str


def cache_key(*parts: Any) -> str:
    """sha256 over a canonical JSON encoding of everything that determines the answer:
    the array of ``parts``, each part encoded alone (the same bytes as encoding the whole
    list at once, so keys do not depend on which parts came :class:`Encoded`)."""
    digest = hashlib.sha256(b"[")
    for index, part in enumerate(parts):
        if index:
            digest.update(b",")
        text = part.text if isinstance(part, Encoded) else canonical_json(part)
        digest.update(text.encode())
    digest.update(b"]")
    return digest.hexdigest()


class ResponseCache:
    """Maps a request hash to the text the model answered. Only valid answers are stored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = connect_wal(self.path)
        # No fsync per answer (it cost about 0.15 ms of CPU per LLM call, on the event loop):
        # a killed process loses nothing, a power cut at most the last answers, asked again.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL,"
            " created REAL NOT NULL, usage TEXT)"
        )
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(responses)")}
        if "usage" not in columns:  # caches written before usage was stored
            self._conn.execute("ALTER TABLE responses ADD COLUMN usage TEXT")
        self._conn.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> str | None:
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: str) -> tuple[str, dict[str, Any] | None] | None:
        """(text, usage of the original call) or None; usage is None for old entries."""
        with self._lock:
            row = self._conn.execute(
                "SELECT text, usage FROM responses WHERE key=?", (key,)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0], json.loads(row[1]) if row[1] else None

    def put(self, key: str, text: str, usage: dict[str, Any] | None = None) -> None:
        """Store a validated answer and what producing it cost (tokens, calls, repairs)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, text, created, usage) VALUES (?, ?, ?, ?)",
                (key, text, time.time(), json.dumps(usage) if usage is not None else None),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
