"""Content-addressed response cache on SQLite (WAL), shared safely between processes."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def connect_wal(path: str | Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode that waits up to ``timeout_s`` for other writers.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once (without its busy handler) when another connection is switching it at the
    same moment, so that one step is retried until the deadline. A database already in WAL
    mode is not switched again.
    """
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
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


def cache_key(*parts: Any) -> str:
    """sha256 over a canonical JSON encoding of everything that determines the answer."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Maps a request hash to the text the model answered. Only valid answers are stored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = connect_wal(self.path)
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
