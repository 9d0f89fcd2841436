"""Durable checkpointers for the runner: SQLite in the run directory, or Postgres.

The SQLite saver is LangGraph's ``AsyncSqliteSaver`` over :class:`InlineSqliteConnection`,
a stand-in for ``aiosqlite.Connection`` that runs each statement directly on the event
loop's thread instead of handing it to a worker thread. A checkpoint write in WAL mode
takes well under a millisecond, while the thread hand-off (queue, wake-up of the loop,
GIL ping-pong) cost more than the write itself: measured with ``bench/throughput.py``, the
framework's CPU per LLM call drops by about 40 %. The price is that a statement blocks the
loop while it runs, including while it waits for another *process* holding the write lock
(busy timeout); on one machine with one runner process nothing else writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from pathlib import Path
from typing import Any

from mcu_sim.agents.cache import connect_wal
from mcu_sim.config import Config, ConfigError
from mcu_sim.graphs.scrub import Scrubber, mask_checkpoints

BUSY_TIMEOUT_S = 30
# Every connection comes from connect_wal (WAL, so readers never block the writer, and a busy
# timeout to wait for another writer instead of failing); then NORMAL sync (see
# open_checkpointer).
PRAGMAS = (f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}", "PRAGMA synchronous=NORMAL")


class _Cursor:
    """The async cursor interface LangGraph's SQLite saver uses, over a sqlite3 cursor."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> _Cursor:
        self._cursor.execute(sql, tuple(params))
        return self

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> _Cursor:
        self._cursor.executemany(sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def __aiter__(self) -> _Cursor:
        return self

    async def __anext__(self) -> Any:
        row = self._cursor.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        self._cursor.close()

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()


class _Pending:
    """What ``execute``/``cursor`` return: awaitable, or an async context manager."""

    def __init__(self, make: Callable[[], sqlite3.Cursor]) -> None:
        self._make = make
        self._cursor: _Cursor | None = None

    def __await__(self) -> Generator[Any, None, _Cursor]:
        return self._open().__await__()

    async def _open(self) -> _Cursor:
        return _Cursor(self._make())

    async def __aenter__(self) -> _Cursor:
        self._cursor = _Cursor(self._make())
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class InlineSqliteConnection:
    """The subset of ``aiosqlite.Connection`` that ``AsyncSqliteSaver`` calls, run inline.

    Transactions behave as in aiosqlite (the same sqlite3 module and isolation level
    underneath): a write opens one, ``commit`` ends it.
    """

    def __init__(self, path: str | Path) -> None:
        self._conn = connect_wal(path, BUSY_TIMEOUT_S)
        for pragma in PRAGMAS:
            self._conn.execute(pragma)
        self._thread = threading.main_thread()  # what LangGraph checks to see it is open

    def is_alive(self) -> bool:
        return True

    def __await__(self) -> Generator[Any, None, InlineSqliteConnection]:
        async def ready() -> InlineSqliteConnection:
            return self

        return ready().__await__()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Pending:
        return _Pending(lambda: self._conn.execute(sql, tuple(params)))

    def executescript(self, script: str) -> _Pending:
        return _Pending(lambda: self._conn.executescript(script))

    def cursor(self) -> _Pending:
        return _Pending(self._conn.cursor)

    async def commit(self) -> None:
        self._conn.commit()

    async def close(self) -> None:
        self._conn.close()


async def open_checkpointer(
    path: Path, inline: bool = True, scrubber: Scrubber | None = None
) -> Any:
    """An ``AsyncSqliteSaver`` on ``path`` with WAL, a busy timeout and
    ``synchronous=NORMAL``; ``inline=False`` uses aiosqlite's worker thread instead.
    ``scrubber``: secrets masked in every write (:func:`~mcu_sim.graphs.scrub.mask_checkpoints`).

    ``synchronous=NORMAL`` skips an fsync per checkpoint: a killed process loses nothing
    (the WAL is in the OS cache); a power cut may roll back the last few steps, which are
    then redone on resume — never a corrupt database.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if inline:
        conn: Any = InlineSqliteConnection(path)
    else:
        import aiosqlite

        connect_wal(path, BUSY_TIMEOUT_S).close()  # WAL mode is a property of the file
        conn = await aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S)
        for pragma in PRAGMAS:
            await conn.execute(pragma)
    saver = mask_checkpoints(AsyncSqliteSaver(conn), scrubber)
    await saver.setup()
    return saver


def postgres_dsn(config: Config, environ: dict[str, str] | None = None) -> str | None:
    """The Postgres connection string named by ``run.postgres_dsn_env``, or None for SQLite."""
    variable = getattr(config.run, "postgres_dsn_env", None)
    if not variable:
        return None
    dsn = (os.environ if environ is None else environ).get(variable)
    if not dsn:
        raise ConfigError(
            f"run.postgres_dsn_env names {variable}, but that environment variable is empty: "
            f"export {variable}=postgresql://user:password@host:5432/db, or remove "
            "run.postgres_dsn_env to keep checkpoints in <run>/checkpoints.sqlite."
        )
    return dsn


@contextlib.asynccontextmanager
async def checkpointer_for(config: Config, sqlite_path: Path) -> AsyncIterator[Any]:
    """The configured checkpointer, closed on exit (SQLite by default, else Postgres); the
    configured secrets never reach it (:mod:`mcu_sim.graphs.scrub`)."""
    dsn = postgres_dsn(config)
    scrubber = Scrubber.for_config(config)
    if dsn is None:
        saver = await open_checkpointer(sqlite_path, scrubber=scrubber)
        try:
            yield saver
        finally:
            await saver.conn.close()
        return
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import OperationalError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "Postgres checkpoints need langgraph-checkpoint-postgres: pip install 'mcu-sim[scale]'"
        ) from exc
    manager = AsyncPostgresSaver.from_conn_string(dsn)
    try:
        saver = await manager.__aenter__()
    except OperationalError as exc:  # never echo the DSN: it may hold a password
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"Cannot connect to the Postgres named by ${config.run.postgres_dsn_env}: "
            f"{type(exc).__name__}: {first}"
        ) from None
    try:
        await mask_checkpoints(saver, scrubber).setup()
        yield saver
    finally:
        await manager.__aexit__(None, None, None)


def thread_id_for(run_id: str, episode_id: str, shared_store: bool) -> str:
    """The episode id; in a shared Postgres database, prefixed with the run's id so two
    run directories that both have ``ep-00000001`` never share a thread."""
    return f"{run_id}/{episode_id}" if shared_store else episode_id
