"""Checkpointers for the runner: LangGraph's stock savers, built through their constructors.

SQLite (the default, ``<run>/checkpoints.sqlite``): ``langgraph-checkpoint-sqlite``'s
``AsyncSqliteSaver`` over an ``aiosqlite`` connection opened here with

- WAL, so readers (``mcu history`` during a run) never block the writer and Ray workers on
  one machine can share the file;
- a busy timeout, so a writer waits for another one instead of failing;
- ``synchronous=NORMAL``: no fsync per checkpoint. A killed process loses nothing (the
  WAL is in the OS cache); a power cut may roll back the last few steps, which resume then
  redoes, never a corrupt database.

Postgres (``run.postgres_dsn_env``): ``langgraph-checkpoint-postgres``'s
``AsyncPostgresSaver.from_conn_string``. Both get the masking serializer of
:mod:`mcu_sim.runner.scrub` through their ``serde=`` argument, so the configured secrets
never reach a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mcu_sim.config import Config, ConfigError
from mcu_sim.runner.scrub import Scrubber, checkpoint_serializer

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30
# Run on the connection before the saver gets it (WAL is a property of the file, the others
# of the connection).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}",
    "PRAGMA synchronous=NORMAL",
)


async def connect_sqlite(path: str | Path) -> Any:
    """An ``aiosqlite`` connection to ``path`` with :data:`SQLITE_PRAGMAS` applied."""
    import aiosqlite

    conn = await aiosqlite.connect(str(path), timeout=BUSY_TIMEOUT_S)
    try:
        for pragma in SQLITE_PRAGMAS:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_checkpointer(path: str | Path, scrubber: Scrubber | None = None) -> Any:
    """LangGraph's ``AsyncSqliteSaver`` on ``path`` (tables created), secrets of
    ``scrubber`` masked in what it stores. Close it with ``await saver.conn.close()``."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await connect_sqlite(path)
    try:
        saver = AsyncSqliteSaver(conn, serde=checkpoint_serializer(scrubber))
        await saver.setup()
    except BaseException:
        await conn.close()
        raise
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
    """The configured checkpointer, closed on exit: SQLite at ``sqlite_path`` by default,
    else Postgres. The configured secrets never reach it (:mod:`mcu_sim.runner.scrub`)."""
    dsn = postgres_dsn(config)
    scrubber = Scrubber.for_config(config)
    if dsn is None:
        saver = await open_checkpointer(sqlite_path, scrubber)
        try:
            yield saver
        finally:
            await saver.conn.close()
        return
    async with _postgres_saver(config, dsn, scrubber) as saver:
        yield saver


@contextlib.asynccontextmanager
async def _postgres_saver(config: Config, dsn: str, scrubber: Scrubber) -> AsyncIterator[Any]:
    """``AsyncPostgresSaver.from_conn_string`` with tables set up; a connection error names
    the variable, never the DSN (it may hold a password)."""
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import OperationalError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "Postgres checkpoints need langgraph-checkpoint-postgres: pip install 'mcu-sim[scale]'"
        ) from exc
    manager = AsyncPostgresSaver.from_conn_string(dsn, serde=checkpoint_serializer(scrubber))
    try:
        saver = await manager.__aenter__()
    except OperationalError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"Cannot connect to the Postgres named by ${config.run.postgres_dsn_env}: "
            f"{type(exc).__name__}: {scrubber.text(first)}"
        ) from None
    try:
        await saver.setup()
        yield saver
    finally:
        await manager.__aexit__(None, None, None)


async def forget_finished(saver: Any, thread_id: str, config: Config) -> bool:
    """What ``run.keep_checkpoints`` asks once an episode's file is written: with ``last``,
    the episode's thread is deleted (``adelete_thread``); the episode file is its record.

    Returns whether it deleted. A failure is logged, never raised: the episode is written,
    only its history stays."""
    if config.run.keep_checkpoints != "last":
        return False
    try:
        await saver.adelete_thread(thread_id)
    except Exception as exc:  # a lock held too long, a lost connection
        log.warning(
            "could not delete the checkpoints of %s: %s: %s", thread_id, type(exc).__name__, exc
        )
        return False
    return True


def thread_id_for(run_id: str, episode_id: str, shared_store: bool) -> str:
    """The episode id; in a shared Postgres database, prefixed with the run's id so two
    run directories that both have ``ep-00000001`` never share a thread."""
    return f"{run_id}/{episode_id}" if shared_store else episode_id
