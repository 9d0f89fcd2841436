"""The runner's checkpointers are LangGraph's stock savers, built through their documented
constructors: SQLite on a connection with WAL and a busy timeout, Postgres from its
connection string, both with the masking serializer passed as ``serde=``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

from mcu_sim.config import load_config
from mcu_sim.runner.checkpoints import (
    BUSY_TIMEOUT_S,
    checkpointer_for,
    forget_finished,
    open_checkpointer,
)
from tests.pg_fixture import postgres_dsn, postgres_env  # noqa: F401 - fixtures

SECRET = "planted-test-0123456789abcdef"
THREAD = {"configurable": {"thread_id": "ep-00000001", "checkpoint_ns": ""}}


async def _pragma(saver: Any, name: str) -> Any:
    cursor = await saver.conn.execute(f"PRAGMA {name}")
    (value,) = await cursor.fetchone()
    return value


async def test_the_sqlite_saver_is_langgraphs_on_a_wal_connection_with_a_busy_timeout(
    tmp_path: Path,
) -> None:
    saver = await open_checkpointer(tmp_path / "c.sqlite")
    try:
        assert type(saver) is AsyncSqliteSaver
        assert await _pragma(saver, "journal_mode") == "wal"
        assert await _pragma(saver, "busy_timeout") == BUSY_TIMEOUT_S * 1000
        assert await _pragma(saver, "synchronous") == 1  # NORMAL
    finally:
        await saver.conn.close()


def _checkpoint(number: int) -> dict[str, Any]:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"1f0a0000-0000-6000-8000-{number:012d}"
    checkpoint["channel_values"] = {"notes": [f"step {number}"]}
    checkpoint["channel_versions"] = {"notes": str(number)}
    return checkpoint


async def test_a_writer_waits_for_another_ones_lock_instead_of_failing(tmp_path: Path) -> None:
    """Ray workers on one machine share the file: a write that meets another process's
    write lock waits (busy timeout) and then lands."""
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path)
    other = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        asyncio.get_running_loop().call_later(0.4, other.execute, "COMMIT")
        start = time.monotonic()
        await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        assert time.monotonic() - start >= 0.3  # it waited for the lock
        stored = await saver.aget_tuple(THREAD)
        assert stored is not None and stored.checkpoint["channel_values"]["notes"] == ["step 1"]
    finally:
        other.close()
        await saver.conn.close()


class _State(TypedDict, total=False):
    notes: list[str]


def _leaky_graph(checkpointer: Any) -> Any:
    """A node that writes the secret into the state, then one that fails with it."""

    def echo(state: _State) -> _State:
        return {"notes": [f"the server said: bad key {SECRET}"]}

    def fail(state: _State) -> _State:
        raise PermissionError(f"401: incorrect API key provided: {SECRET}")

    graph = StateGraph(_State)
    graph.add_node("echo", echo)
    graph.add_node("fail", fail)
    graph.add_edge(START, "echo")
    graph.add_edge("echo", "fail")
    graph.add_edge("fail", END)
    return graph.compile(checkpointer=checkpointer)


def _secret_config(monkeypatch: pytest.MonkeyPatch, *extra: str) -> Any:
    monkeypatch.setenv("MCU_TEST_KEY", SECRET)
    provider = ["llm.provider.kind=openai_compatible", "llm.provider.api_key_env=MCU_TEST_KEY"]
    return load_config(None, [*provider, *extra])


async def _run_leaky(saver: Any) -> Any:
    graph = _leaky_graph(saver)
    config = {"configurable": {"thread_id": "leaky"}}
    with pytest.raises(PermissionError):
        await graph.ainvoke({"notes": []}, config, durability="sync")
    return await graph.aget_state(config)


def _stored_bytes(path: Path) -> bytes:
    """The database and its WAL as they are on disk."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_sqlite_stores_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _secret_config(monkeypatch)
    path = tmp_path / "checkpoints.sqlite"
    async with checkpointer_for(config, path) as saver:
        assert type(saver) is AsyncSqliteSaver and isinstance(saver.serde, JsonPlusSerializer)
        state = await _run_leaky(saver)
        stored = _stored_bytes(path)
    assert SECRET.encode() not in stored
    assert b"*" * len(SECRET) in stored  # masked where it was, lengths intact
    assert state.values["notes"] == [f"the server said: bad key {'*' * len(SECRET)}"]
    assert state.next == ("fail",)  # the failed step is still there to resume


async def test_postgres_stores_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    psycopg = pytest.importorskip("psycopg")
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    config = _secret_config(monkeypatch, request.getfixturevalue("postgres_env"))
    async with checkpointer_for(config, tmp_path / "unused.sqlite") as saver:
        assert type(saver) is AsyncPostgresSaver
        state = await _run_leaky(saver)
    assert state.values["notes"] == [f"the server said: bad key {'*' * len(SECRET)}"]
    assert not (tmp_path / "unused.sqlite").exists()
    dsn = config.run.postgres_dsn_env
    async with await psycopg.AsyncConnection.connect(os.environ[dsn]) as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            cursor = await conn.execute(f"SELECT * FROM {table}")
            rows = await cursor.fetchall()
            assert rows or table == "checkpoint_blobs"
            assert SECRET not in repr(rows), table


async def test_forget_finished_deletes_the_thread_only_with_keep_last(tmp_path: Path) -> None:
    keep_all = load_config(None, [])
    keep_last = load_config(None, ["run.keep_checkpoints=last"])
    saver = await open_checkpointer(tmp_path / "c.sqlite")
    try:
        stored = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await saver.aput_writes(stored, [("notes", ["n"])], "task-1")
        other = {"configurable": {"thread_id": "ep-00000002", "checkpoint_ns": ""}}
        await saver.aput(other, _checkpoint(2), {"source": "loop", "step": 1}, {})
        assert not await forget_finished(saver, "ep-00000001", keep_all)
        assert await saver.aget_tuple(THREAD) is not None
        assert await forget_finished(saver, "ep-00000001", keep_last)
        assert await saver.aget_tuple(THREAD) is None
        assert await saver.aget_tuple(other) is not None  # other threads are left
    finally:
        await saver.conn.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "c.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM writes").fetchone() == (0,)


async def test_a_failed_delete_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saver = await open_checkpointer(tmp_path / "c.sqlite")
    await saver.conn.close()  # every statement now fails
    keep_last = load_config(None, ["run.keep_checkpoints=last"])
    assert not await forget_finished(saver, "ep-00000001", keep_last)
    assert "could not delete the checkpoints of ep-00000001" in caplog.text
