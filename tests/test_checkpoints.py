"""The runner's SQLite saver writes exactly the rows LangGraph's own saver writes.

Its two writes repeat LangGraph's INSERT statements on the inline connection (no lock, no
cursor wrappers); this test keeps them in step with the installed langgraph-checkpoint-sqlite:
the same checkpoint and pending writes go through both savers, and the tables must match
row for row, then read back through LangGraph's reader."""

from __future__ import annotations

import json
import operator
import sqlite3
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

from mcu_sim.runner.checkpoints import PAGE_SIZE, metadata_bytes, open_checkpointer

THREAD = {"configurable": {"thread_id": "ep-00000001", "checkpoint_ns": ""}}


def _checkpoint() -> dict[str, Any]:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = "1f0a0000-0000-6000-8000-000000000001"
    checkpoint["ts"] = "2026-12-01T00:00:00+00:00"
    checkpoint["channel_values"] = {"persona": [{"sentence": "I keep bees."}], "seed": 7}
    checkpoint["channel_versions"] = {"persona": "1", "seed": "1"}
    return checkpoint


async def _write(saver: Any) -> None:
    stored = await saver.aput(THREAD, _checkpoint(), {"source": "loop", "step": 3}, {})
    await saver.aput_writes(stored, [("sessions", [{"index": 1}]), ("notes", ["n"])], "task-1")
    await saver.aput_writes(stored, [("__error__", "ValueError('x')")], "task-2", "~path")


def _rows(path: Path) -> dict[str, list[tuple]]:
    """Both tables' rows; a checkpoint's metadata parsed (its JSON's spacing may differ)."""
    with sqlite3.connect(path) as db:
        rows = {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5").fetchall()
            for table in ("checkpoints", "writes")
        }
    rows["checkpoints"] = [(*row[:-1], json.loads(row[-1])) for row in rows["checkpoints"]]
    return rows


async def test_inline_saver_writes_the_rows_langgraphs_saver_writes(tmp_path: Path) -> None:
    ours = await open_checkpointer(tmp_path / "ours.sqlite")
    theirs = await open_checkpointer(tmp_path / "theirs.sqlite", inline=False)
    assert type(ours).__name__ == "InlineSqliteSaver"
    assert type(theirs).__name__ == "AsyncSqliteSaver"
    try:
        await _write(ours)
        await _write(theirs)
        read_back = await ours.aget_tuple(THREAD)
    finally:
        await ours.conn.close()
        await theirs.conn.close()
    rows = _rows(tmp_path / "ours.sqlite")
    assert rows == _rows(tmp_path / "theirs.sqlite")
    assert len(rows["checkpoints"]) == 1 and len(rows["writes"]) == 3
    assert read_back is not None
    assert read_back.checkpoint["channel_values"] == _checkpoint()["channel_values"]
    assert read_back.metadata["step"] == 3
    assert sorted((task, channel) for task, channel, _ in read_back.pending_writes) == [
        ("task-1", "notes"),
        ("task-1", "sessions"),
        ("task-2", "__error__"),
    ]


def test_metadata_is_the_json_langgraphs_saver_stores() -> None:
    """The same JSON as ``json.dumps(..., ensure_ascii=False)`` encoded with ``ignore``:
    text as UTF-8, an integer beyond 64 bits kept, a lone surrogate dropped."""
    for metadata in (
        {"source": "loop", "step": 3, "parents": {}, "thread_id": "ep-00000001"},
        {"source": "update", "mcu_note": "edit persona — Zoë's café", "step": -1},
        {"source": "loop", "step": 2**70},
        {"source": "loop", "mcu_note": "half a pair \ud83d here"},
    ):
        theirs = json.dumps(metadata, ensure_ascii=False).encode("utf-8", "ignore")
        ours = metadata_bytes(metadata)
        assert json.loads(ours) == json.loads(theirs)
    assert metadata_bytes({"note": "café"}) == '{"note":"café"}'.encode()
    assert json.loads(metadata_bytes({"step": 2**70}))["step"] == 2**70
    assert json.loads(metadata_bytes({"note": "a\ud83db"}))["note"] == "ab"


async def test_pending_writes_are_committed_with_the_next_checkpoint_or_soon(
    tmp_path: Path,
) -> None:
    """A task's writes share a commit (the next checkpoint's, or one COMMIT_DELAY_S later);
    another reader sees them then, and closing the saver commits what is still open."""
    import asyncio

    from mcu_sim.runner.checkpoints import COMMIT_DELAY_S

    path = tmp_path / "ours.sqlite"
    saver = await open_checkpointer(path)
    stored = await saver.aput(THREAD, _checkpoint(), {"source": "loop", "step": 3}, {})
    try:
        await saver.aput_writes(stored, [("notes", ["a"])], "task-1")
        assert _rows(path)["writes"] == []  # not committed yet
        await asyncio.sleep(COMMIT_DELAY_S * 5)
        assert len(_rows(path)["writes"]) == 1  # the delayed commit
        await saver.aput_writes(stored, [("notes", ["b"])], "task-2")
        later = {**_checkpoint(), "id": "1f0a0000-0000-6000-8000-000000000002"}
        await saver.aput(stored, later, {"source": "loop", "step": 4}, {})
        assert len(_rows(path)["writes"]) == 2  # taken along by the checkpoint's commit
        await saver.aput_writes(stored, [("notes", ["c"])], "task-3")
    finally:
        await saver.conn.close()
    assert len(_rows(path)["writes"]) == 3  # close committed the last one


async def test_a_single_writer_groups_checkpoint_commits(tmp_path: Path) -> None:
    """With group_commit (the local runner, the file's only writer) a checkpoint is
    committed within COMMIT_DELAY_S, with the others of that moment; without it, at once."""
    import asyncio

    from mcu_sim.runner.checkpoints import COMMIT_DELAY_S

    grouped_path, plain_path = tmp_path / "grouped.sqlite", tmp_path / "plain.sqlite"
    grouped = await open_checkpointer(grouped_path, group_commit=True)
    plain = await open_checkpointer(plain_path)
    try:
        await plain.aput(THREAD, _checkpoint(), {"source": "loop", "step": 1}, {})
        assert len(_rows(plain_path)["checkpoints"]) == 1  # at once
        first = await grouped.aput(THREAD, _checkpoint(), {"source": "loop", "step": 1}, {})
        await grouped.aput_writes(first, [("notes", ["a"])], "task-1")
        later = {**_checkpoint(), "id": "1f0a0000-0000-6000-8000-000000000002"}
        await grouped.aput(first, later, {"source": "loop", "step": 2}, {})
        assert _rows(grouped_path)["checkpoints"] == []  # one open transaction for all three
        await asyncio.sleep(COMMIT_DELAY_S * 5)
        rows = _rows(grouped_path)
        assert len(rows["checkpoints"]) == 2 and len(rows["writes"]) == 1
        third = {**_checkpoint(), "id": "1f0a0000-0000-6000-8000-000000000003"}
        await grouped.aput(first, third, {"source": "loop", "step": 3}, {})
    finally:
        await grouped.conn.close()
        await plain.conn.close()
    assert len(_rows(grouped_path)["checkpoints"]) == 3  # close committed the last one


async def test_a_busy_single_writer_commits_on_a_checkpoint_not_a_timer(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """With group_commit, a checkpoint that comes once the open transaction is
    COMMIT_EARLY_S old commits it at once; a younger one waits (here for no timer: the
    window is made long enough that only the early commit can happen)."""
    import asyncio

    from mcu_sim.runner import checkpoints

    monkeypatch.setattr(checkpoints, "COMMIT_DELAY_S", 60.0)
    path = tmp_path / "grouped.sqlite"
    saver = await open_checkpointer(path, group_commit=True)
    second, third = (f"1f0a0000-0000-6000-8000-00000000000{n}" for n in (2, 3))
    try:
        first = await saver.aput(THREAD, _checkpoint(), {"source": "loop", "step": 1}, {})
        assert _rows(path)["checkpoints"] == []  # the transaction is young
        await asyncio.sleep(checkpoints.COMMIT_EARLY_S * 1.5)
        await saver.aput(first, {**_checkpoint(), "id": second}, {"source": "loop", "step": 2}, {})
        assert len(_rows(path)["checkpoints"]) == 2  # committed with this checkpoint
        await saver.aput(first, {**_checkpoint(), "id": third}, {"source": "loop", "step": 3}, {})
        assert len(_rows(path)["checkpoints"]) == 2  # a new transaction, young again
    finally:
        await saver.conn.close()
    assert len(_rows(path)["checkpoints"]) == 3


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA page_size").fetchone()[0]


async def test_a_new_database_gets_larger_pages_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # a file made before: SQLite's default pages, WAL
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE kept (x)")
    before = _page_size(old)
    for path in (tmp_path / "new.sqlite", old):
        saver = await open_checkpointer(path)
        try:
            await _write(saver)
            assert await saver.aget_tuple(THREAD) is not None
        finally:
            await saver.conn.close()
    assert _page_size(tmp_path / "new.sqlite") == PAGE_SIZE != before
    assert _page_size(old) == before  # readable and written as it was
    assert len(_rows(old)["writes"]) == 3


class _Tally(TypedDict, total=False):
    n: int
    log: Annotated[list[str], operator.add]


def _tally_graph(checkpointer: Any) -> Any:
    async def bump(state: _Tally) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1, "log": [f"bump {state.get('n', 0)}"]}

    graph = StateGraph(_Tally)
    graph.add_node("one", bump)
    graph.add_node("two", bump)
    graph.add_node("three", bump)
    graph.add_edge(START, "one")
    graph.add_edge("one", "two")
    graph.add_edge("two", "three")
    graph.add_edge("three", END)
    return graph.compile(checkpointer=checkpointer, interrupt_after=["one"])


def _versions(path: Path, thread_id: str) -> list[Any]:
    """Every channel version of the thread's checkpoints, read back from the file."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT type, checkpoint FROM checkpoints WHERE thread_id = ?", (thread_id,)
        ).fetchall()
    return [
        version
        for kind, blob in rows
        for version in serde.loads_typed((kind, blob))["channel_versions"].values()
    ]


async def test_a_new_thread_gets_integer_versions_an_old_one_keeps_its_strings(
    tmp_path: Path,
) -> None:
    """Our saver numbers a new thread's channel versions 1, 2, 3...; a thread that LangGraph's
    own saver began (string versions) goes on with strings after a resume, and both end in
    the same state."""
    path = tmp_path / "checkpoints.sqlite"
    new, old = {"configurable": {"thread_id": "new"}}, {"configurable": {"thread_id": "old"}}
    theirs = await open_checkpointer(path, inline=False)
    try:
        await _tally_graph(theirs).ainvoke({"n": 0}, old)  # stops after "one"
    finally:
        await theirs.conn.close()
    ours = await open_checkpointer(path)
    try:
        graph = _tally_graph(ours)
        await graph.ainvoke({"n": 0}, new)
        finished = [await graph.ainvoke(None, config) for config in (new, old)]
        history = [s async for s in graph.aget_state_history(old)]
    finally:
        await ours.conn.close()
    assert finished[0] == finished[1] == {"n": 3, "log": ["bump 0", "bump 1", "bump 2"]}
    assert len(history) == 5 and history[0].next == ()
    new_versions, old_versions = _versions(path, "new"), _versions(path, "old")
    assert new_versions and all(type(v) is int for v in new_versions)
    assert max(new_versions) == 5  # input, three nodes: one more version per step
    assert old_versions and all(isinstance(v, str) for v in old_versions)
    assert len({v.split(".")[0] for v in old_versions}) == 5
