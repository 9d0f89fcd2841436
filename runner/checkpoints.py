"""Durable checkpointers for the runner: SQLite in the run directory, or Postgres.

The SQLite saver is LangGraph's ``AsyncSqliteSaver`` over :class:`InlineSqliteConnection`,
a stand-in for ``aiosqlite.Connection`` that runs each statement directly on the event
loop's thread instead of handing it to a worker thread. A checkpoint write in WAL mode
takes well under a millisecond, while the thread hand-off (queue, wake-up of the loop,
GIL ping-pong) cost more than the write itself: measured with ``bench/throughput.py``, the
framework's CPU per LLM call drops by about 40 %. The price is that a statement blocks the
loop while it runs, including while it waits for another *process* holding the write lock
(busy timeout); on one machine with one runner process nothing else writes. Its two
writes (a step's checkpoint, a task's pending writes) are LangGraph's statements run
straight on that connection (:func:`_inline_saver_class`); every read is LangGraph's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import orjson

from mcu_sim.agents.llm.cache import connect_wal
from mcu_sim.config import Config, ConfigError
from mcu_sim.runner.scrub import Scrubber, mask_checkpoints

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30
COMMIT_DELAY_S = 0.1  # the longest a write waits for its commit (a timer on the loop)
# With group commit, a checkpoint written once the open transaction is this old is committed
# at once: a busy runner commits on a write it makes anyway, and the timer, which wakes an
# idle loop on its own, fires only when the runner has gone quiet (see commit_checkpoint).
COMMIT_EARLY_S = COMMIT_DELAY_S / 2
# Every connection comes from connect_wal (WAL, so readers never block the writer, and a busy
# timeout to wait for another writer instead of failing); then NORMAL sync (see
# open_checkpointer).
PRAGMAS = (f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}", "PRAGMA synchronous=NORMAL")
# A new checkpoint database gets 16 KiB pages: a checkpoint (a few KB to tens of KB) then
# spans fewer overflow pages, so a commit writes fewer WAL frames (about 20 % less CPU per
# checkpoint written than with SQLite's 4 KiB default, measured on ext4).
PAGE_SIZE = 16384
RowMaker = Callable[[], list[tuple[Any, ...]]]  # a task's rows of the writes table, on demand
# LangGraph's task id for writes that come from outside a node (``update_state``, a
# ``Command``'s update): always inserted at once
NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"


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

    def __init__(
        self, path: str | Path, group_commit: bool = False, drop_superseded: bool = False
    ) -> None:
        self._conn = connect_wal(path, BUSY_TIMEOUT_S, PAGE_SIZE)
        for pragma in PRAGMAS:
            self._conn.execute(pragma)
        self.writer = self._conn  # the saver's own inserts: no held writes go in first
        self._thread = threading.main_thread()  # what LangGraph checks to see it is open
        self._commit_timer: asyncio.TimerHandle | None = None
        self._open_since: float | None = None  # monotonic time of the first uncommitted write
        self.group_commit = group_commit
        self.drop_superseded = drop_superseded
        # ordinary pending writes not yet inserted, by (thread_id, checkpoint_ns, checkpoint_id):
        # each an INSERT and what makes its rows
        self._held: dict[tuple[str, str, str], list[tuple[str, RowMaker]]] = {}

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The connection itself, for callers that run statements directly; any held
        pending writes are inserted first, so what it reads is what LangGraph wrote."""
        if self._held:
            self.insert_held()
        return self._conn

    def hold_writes(self, key: tuple[str, str, str], sql: str, rows: RowMaker) -> None:
        """Keep a task's ordinary pending writes until the commit instead of inserting them:
        when its step's checkpoint comes first (:meth:`supersede`), they are never
        serialised or written, since that checkpoint holds them.

        Only with ``drop_superseded`` (``run.keep_checkpoints: last``: the steps between
        checkpoints are not kept anyway). A kill before the commit loses them as it loses
        any uncommitted write, so resume runs the task again. Serialising them late is safe
        because nothing changes a write's values before its step's checkpoint: the next step
        starts after it, and the step's other tasks do not see them."""
        self._held.setdefault(key, []).append((sql, rows))
        self.commit_soon()

    def supersede(self, key: tuple[str, str, str]) -> None:
        """The checkpoint ``key`` names has a child now: its held writes are in it."""
        self._held.pop(key, None)

    def forget_thread(self, thread_id: str) -> None:
        """Drop the held writes of a thread whose old steps are being deleted."""
        for key in [key for key in self._held if key[0] == thread_id]:
            del self._held[key]

    def insert_held(self) -> None:
        """Insert every held write (a step still running at the commit, or a read)."""
        held, self._held = self._held, {}
        for (thread_id, _, checkpoint_id), batches in held.items():
            for sql, rows in batches:
                try:
                    made = rows()
                except Exception:  # the step's checkpoint will fail on that value too
                    log.exception(
                        "a pending write of %s (checkpoint %s) could not be serialised; "
                        "its task runs again on resume",
                        thread_id,
                        checkpoint_id,
                    )
                    continue
                self._conn.executemany(sql, made)

    def is_alive(self) -> bool:
        return True

    def __await__(self) -> Generator[Any, None, InlineSqliteConnection]:
        async def ready() -> InlineSqliteConnection:
            return self

        return ready().__await__()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Pending:
        return _Pending(lambda: self.sqlite.execute(sql, tuple(params)))

    def executescript(self, script: str) -> _Pending:
        return _Pending(lambda: self.sqlite.executescript(script))

    def cursor(self) -> _Pending:
        return _Pending(lambda: self.sqlite.cursor())

    async def commit(self) -> None:
        self.commit_now()

    def commit_soon(self) -> None:
        """Commit within ``COMMIT_DELAY_S``, once for every write made meanwhile; the next
        checkpoint's commit usually comes first and takes them along.

        A task's pending writes take this path: a commit of its own cost about as much as
        the insert. A kill in between loses only those writes, so resume runs that task
        again (its step had no checkpoint yet); never a checkpoint, never an episode."""
        if self._commit_timer is None:
            loop = asyncio.get_running_loop()
            self._commit_timer = loop.call_later(COMMIT_DELAY_S, self.commit_now)
            self._open_since = time.monotonic()

    def commit_checkpoint(self) -> None:
        """A step's checkpoint: committed at once, or with ``group_commit`` together with
        every other write of up to ``COMMIT_DELAY_S``.

        Group commit is for a process that is the file's only writer (the local runner,
        under its run lock): a commit per checkpoint was about 4 % of the framework's CPU
        (``bench/ab.py``). A checkpoint that comes once the open transaction is
        ``COMMIT_EARLY_S`` old commits it on the spot, so a busy runner commits every
        0.05-0.1 s on a write it makes anyway, and the timer fires only when the runner has
        gone quiet. Against a 10 ms window this wrote 14 % fewer bytes per LLM call (27
        against 31 KiB, 3.6 against 4.1 write calls: ``bench/throughput.py
        --keep-checkpoints last``), for about 1 % less CPU. A kill before the commit loses
        those last steps (at most ``COMMIT_DELAY_S``), which resume redoes, as it redoes
        the steps in progress; never a finished episode (its file is the record). Several
        processes sharing the file (Ray workers) commit at once, so none holds the write
        lock while another waits for it."""
        if not self.group_commit or self._transaction_age() >= COMMIT_EARLY_S:
            self.commit_now()
        else:
            self.commit_soon()

    def _transaction_age(self) -> float:
        """Seconds since the first write not yet committed (0 when none is open)."""
        return 0.0 if self._open_since is None else time.monotonic() - self._open_since

    def commit_now(self) -> None:
        """Commit what is open (the statements run so far and any held writes), and drop a
        pending timer."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        self._open_since = None
        if self._held:
            self.insert_held()
        if self._conn.in_transaction:
            self._conn.commit()

    async def close(self) -> None:
        self.commit_now()  # sqlite3 would roll back what is not yet committed
        self._conn.close()


_PUT_CHECKPOINT = (
    "INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
    "parent_checkpoint_id, type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# the parent's row takes the child's key and values (a row with the child's key, from a
# checkpoint put twice, is replaced, as INSERT OR REPLACE would)
_REPLACE_CHECKPOINT = (
    "UPDATE OR REPLACE checkpoints SET checkpoint_id = ?, parent_checkpoint_id = ?, type = ?, "
    "checkpoint = ?, metadata = ? WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
)
_PUT_WRITES = (
    "INSERT OR {verb} INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
    "task_path, idx, channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@functools.cache
def _inline_saver_class() -> type:
    """``AsyncSqliteSaver`` whose two writes run straight on :class:`InlineSqliteConnection`.

    Same tables, rows and serializer as LangGraph's saver (every reader is LangGraph's
    own), without what only a shared worker-thread connection needs: an ``asyncio.Lock``
    taken twice per write (``setup()`` takes it again) and the awaitable cursor wrappers.
    Nothing awaits between a statement and its commit, so no other write can slip in.
    Made on first use, so importing this module does not import LangGraph.
    """
    from langgraph.checkpoint.base import WRITES_IDX_MAP, get_checkpoint_metadata
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    class InlineSqliteSaver(AsyncSqliteSaver):
        def get_next_version(self, current: Any, channel: Any = None) -> Any:
            """Integer channel versions for a new thread; a thread begun with LangGraph's
            string versions keeps them (versions are compared, so one thread never mixes
            the two: each new version follows the highest one of its checkpoint).

            LangGraph's SQLite saver writes a 49-character string (a counter and a random
            suffix) per channel into every checkpoint, about a fifth of a bench episode's
            checkpoint; an integer packs into a byte or two. The suffix keeps apart the
            versions of two forks of one checkpoint where values are stored per version
            (Postgres); here every checkpoint holds its values whole."""
            if isinstance(current, str):
                return super().get_next_version(current, channel)
            return 1 if current is None else current + 1

        async def aput(
            self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any
        ) -> dict[str, Any]:
            if not self.is_setup:
                await self.setup()
            conf = config["configurable"]
            kind, blob = self.serde.dumps_typed(checkpoint)
            meta = metadata_bytes(get_checkpoint_metadata(config, metadata))
            row = (
                str(conf["thread_id"]),
                conf["checkpoint_ns"],
                checkpoint["id"],
                conf.get("checkpoint_id"),
                kind,
                blob,
                meta,
            )
            parent = conf.get("checkpoint_id")
            if not (self.conn.drop_superseded and parent and self._replace_parent(row, parent)):
                self.conn.writer.execute(_PUT_CHECKPOINT, row)
            self.conn.commit_checkpoint()  # the pending writes before it too
            return {
                "configurable": {
                    "thread_id": conf["thread_id"],
                    "checkpoint_ns": conf["checkpoint_ns"],
                    "checkpoint_id": checkpoint["id"],
                }
            }

        def _replace_parent(self, row: tuple[Any, ...], parent: str) -> bool:
            """Write ``row`` over its parent checkpoint's row (``drop_superseded``), in the
            transaction that commits it; whether the parent was there to replace.

            Inserting a row per step and deleting all but the last at the episode's end
            cost 2 % more instructions per LLM call and twice the bytes written
            (``bench/instructions.py``, ``bench/throughput.py``); a kill still finds the
            newest committed checkpoint. The parent's held writes go with it: the new
            checkpoint holds them."""
            self.conn.supersede((row[0], row[1], parent))
            thread_id, checkpoint_ns, *values = row
            replaced = self.conn.writer.execute(
                _REPLACE_CHECKPOINT, (*values, thread_id, checkpoint_ns, parent)
            )
            return replaced.rowcount > 0

        async def aput_writes(
            self, config: Any, writes: Any, task_id: str, task_path: str = ""
        ) -> None:
            if not self.is_setup:
                await self.setup()
            conf = config["configurable"]
            # special channels (errors, interrupts) replace; ordinary ones keep the first
            special = [w[0] in WRITES_IDX_MAP for w in writes]
            sql = _PUT_WRITES.format(verb="REPLACE" if all(special) else "IGNORE")
            key = (str(conf["thread_id"]), str(conf["checkpoint_ns"]), str(conf["checkpoint_id"]))
            rows = functools.partial(write_rows, self.serde, key, task_id, task_path, list(writes))
            if self.conn.drop_superseded and not any(special) and task_id != NULL_TASK_ID:
                self.conn.hold_writes(key, sql, rows)  # interrupts, errors, updates go in now
                return
            self.conn.writer.executemany(sql, rows())
            self.conn.commit_soon()

    def write_rows(
        serde: Any, key: tuple[str, str, str], task_id: str, task_path: str, writes: list
    ) -> list[tuple[Any, ...]]:
        """The ``writes`` table's rows for one task's writes, serialised."""
        return [
            (*key, task_id, task_path, WRITES_IDX_MAP.get(channel, idx), channel, *serial)
            for idx, (channel, value) in enumerate(writes)
            for serial in [serde.dumps_typed(value)]
        ]

    return InlineSqliteSaver


_PRUNE = (
    "DELETE FROM {table} WHERE thread_id = ? AND NOT (checkpoint_ns = '' AND checkpoint_id = ?)"
)
_NEWEST = "SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ''"


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    """A checkpoint's metadata as LangGraph's SQLite saver stores it: UTF-8 JSON.

    orjson writes it in native code; the saver's ``json.dumps(..., ensure_ascii=False)``
    builds an encoder on every call (3.3 µs against 0.17 µs for a step's metadata, hot).
    What orjson refuses (integers beyond 64 bits, lone surrogates) goes the standard
    library's way, as LangGraph's saver writes it. A NaN or infinite float, which the
    standard library writes as a bare ``NaN`` that is not JSON, becomes ``null``. Readers
    parse it with ``json.loads`` either way."""
    try:
        return orjson.dumps(metadata)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(metadata, ensure_ascii=False).encode("utf-8", "ignore")


def inline_connection(saver: Any) -> InlineSqliteConnection | None:
    """``saver``'s connection when it is our inline SQLite one, else None (Postgres,
    aiosqlite)."""
    conn = getattr(saver, "conn", None)
    return conn if isinstance(conn, InlineSqliteConnection) else None


async def prune_finished(saver: Any, thread_id: str, config: Config) -> None:
    """What ``run.keep_checkpoints`` asks once an episode is finished (both backends)."""
    if config.run.keep_checkpoints == "last":
        await keep_last_checkpoint(saver, thread_id)


async def keep_last_checkpoint(saver: Any, thread_id: str) -> bool:
    """Delete a finished episode's checkpoints and pending writes except its newest root
    checkpoint (``run.keep_checkpoints: last``): subgraph namespaces go too. On our SQLite
    saver each checkpoint already took its parent's row, so this finds only what older
    versions or other savers left, and errors' and interrupts' writes. The final
    state stays readable with ``aget_state``, so an episode file lost later is written
    again from it without any step. LangGraph's SQLite saver has no ``aprune``; the
    statements run on the inline connection and share the next commit. Postgres uses its
    own ``aprune(keep_latest)``.

    Returns whether it pruned. A failure is logged, never raised: the episode is written,
    only its history stays."""
    try:
        conn = inline_connection(saver)
        if conn is None:
            await saver.aprune([thread_id], strategy="keep_latest")
            return True
        conn.forget_thread(thread_id)  # held writes of its old steps would be deleted anyway
        newest = conn.writer.execute(_NEWEST, (thread_id,)).fetchone()
        if not newest or newest[0] is None:
            return False
        for table in ("writes", "checkpoints"):
            conn.writer.execute(_PRUNE.format(table=table), (thread_id, newest[0]))
        conn.commit_soon()
        return True
    except Exception as exc:  # NotImplementedError from a saver without pruning, a lock
        log.warning(
            "could not prune the checkpoints of %s: %s: %s", thread_id, type(exc).__name__, exc
        )
        return False


def threads_with_checkpoints(saver: Any) -> set[str] | None:
    """The ids of every thread with a checkpoint in our SQLite saver's file, read once per
    run so a new episode need not read its (empty) state; None for other savers."""
    conn = inline_connection(saver)
    if conn is None:
        return None
    return {row[0] for row in conn.sqlite.execute("SELECT DISTINCT thread_id FROM checkpoints")}


async def open_checkpointer(
    path: Path,
    inline: bool = True,
    scrubber: Scrubber | None = None,
    group_commit: bool = False,
    drop_superseded: bool = False,
) -> Any:
    """An ``AsyncSqliteSaver`` on ``path`` with WAL, a busy timeout and
    ``synchronous=NORMAL``; ``inline=False`` uses aiosqlite's worker thread instead.
    ``scrubber``: secrets masked in every write (:func:`~mcu_sim.runner.scrub.mask_checkpoints`).
    ``group_commit``: checkpoints share commits (:meth:`InlineSqliteConnection.commit_checkpoint`;
    only for the file's single writer).
    ``drop_superseded``: a task's pending writes are not stored once its step's checkpoint
    is (:meth:`InlineSqliteConnection.hold_writes`), and each checkpoint is written over its
    parent's row; for runs that keep only each episode's last checkpoint, whose history
    goes anyway.

    ``synchronous=NORMAL`` skips an fsync per checkpoint: a killed process loses nothing
    (the WAL is in the OS cache); a power cut may roll back the last few steps, which are
    then redone on resume — never a corrupt database.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if inline:
        connection = InlineSqliteConnection(path, group_commit, drop_superseded)
        saver = _inline_saver_class()(connection)
    else:
        import aiosqlite

        connect_wal(path, BUSY_TIMEOUT_S, PAGE_SIZE).close()  # WAL mode: a property of the file
        conn = await aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S)
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        saver = AsyncSqliteSaver(conn)
    saver = mask_checkpoints(saver, scrubber)
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
async def checkpointer_for(
    config: Config, sqlite_path: Path, single_writer: bool = False, for_run: bool = False
) -> AsyncIterator[Any]:
    """The configured checkpointer, closed on exit (SQLite by default, else Postgres); the
    configured secrets never reach it (:mod:`mcu_sim.runner.scrub`). ``single_writer``:
    no other process writes the SQLite file meanwhile (the local runner holds the run
    lock), so checkpoints may share commits. ``for_run``: opened to run episodes (the
    runner, a Ray worker); with ``run.keep_checkpoints: last`` pending writes a checkpoint
    supersedes are then not stored on SQLite, and a checkpoint takes its parent's row, since
    the steps before the last are not kept. The debugger and time travel leave it off: a
    fork reads those writes and checkpoints."""
    dsn = postgres_dsn(config)
    scrubber = Scrubber.for_config(config)
    if dsn is None:
        saver = await open_checkpointer(
            sqlite_path,
            scrubber=scrubber,
            group_commit=single_writer,
            drop_superseded=for_run and config.run.keep_checkpoints == "last",
        )
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
