"""Pending writes that a checkpoint supersedes are not stored (``drop_superseded``).

The runner opens its SQLite saver this way when ``run.keep_checkpoints`` is ``last``: a
task's ordinary writes wait for the commit, and when its step's checkpoint comes first they
are dropped, since that checkpoint holds them. What must not change: the states a graph
goes through, a failed parallel step keeping the work of its finished branches, interrupts,
and any reader seeing every write made so far. Real LangGraph graphs on real SQLite files.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from mcu_sim.runner.checkpoints import COMMIT_DELAY_S, open_checkpointer

THREAD = {"configurable": {"thread_id": "ep-00000001", "checkpoint_ns": ""}}


class Notes(TypedDict, total=False):
    notes: Annotated[list[str], operator.add]


def _checkpoint(number: int) -> dict[str, Any]:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"1f0a0000-0000-6000-8000-{number:012d}"
    checkpoint["channel_values"] = {"notes": [f"n{number}"]}
    return checkpoint


def _writes(path: Path) -> list[tuple[str, str, int]]:
    """(checkpoint_id, channel, idx) of every committed pending write."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT checkpoint_id, channel, idx FROM writes ORDER BY checkpoint_id, idx"
        ).fetchall()


async def test_a_checkpoint_drops_its_parents_held_writes_but_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, drop_superseded=True)
    try:
        first = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await saver.aput_writes(first, [("notes", ["a"])], "task-1")
        await saver.aput_writes(first, [("__error__", "ValueError('x')")], "task-2")
        await saver.aput(first, _checkpoint(2), {"source": "loop", "step": 2}, {})
    finally:
        await saver.conn.close()
    assert _writes(path) == [(_checkpoint(1)["id"], "__error__", -1)]


async def test_held_writes_are_committed_when_no_checkpoint_came_first(tmp_path: Path) -> None:
    """A step still running at the commit keeps its finished tasks' writes, as before."""
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, drop_superseded=True)
    try:
        first = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await saver.aput_writes(first, [("notes", ["a"]), ("notes", ["b"])], "task-1")
        assert _writes(path) == []
        await asyncio.sleep(COMMIT_DELAY_S * 5)
        assert _writes(path) == [
            (_checkpoint(1)["id"], "notes", 0),
            (_checkpoint(1)["id"], "notes", 1),
        ]
        await saver.aput_writes(first, [("notes", ["c"])], "task-2")
    finally:
        await saver.conn.close()
    assert len(_writes(path)) == 3  # close inserted and committed the last one


async def test_a_read_sees_held_writes(tmp_path: Path) -> None:
    saver = await open_checkpointer(tmp_path / "c.sqlite", drop_superseded=True)
    try:
        first = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await saver.aput_writes(first, [("notes", ["a"])], "task-1")
        read = await saver.aget_tuple(THREAD)
    finally:
        await saver.conn.close()
    assert read is not None
    assert [(task, channel, value) for task, channel, value in read.pending_writes] == [
        ("task-1", "notes", ["a"])
    ]


def _linear_graph(runs: Counter) -> StateGraph:
    graph = StateGraph(Notes)
    for name in ("one", "two", "three"):

        async def step(state: Notes, name: str = name) -> dict[str, Any]:
            runs[name] += 1
            return {"notes": [name]}

        graph.add_node(name, step)
    graph.add_edge(START, "one")
    graph.add_edge("one", "two")
    graph.add_edge("two", "three")
    graph.add_edge("three", END)
    return graph


def _checkpoint_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]


@pytest.mark.parametrize("drop", [False, True])
async def test_a_graph_goes_through_the_same_states(tmp_path: Path, drop: bool) -> None:
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=drop)
    runs: Counter = Counter()
    graph = _linear_graph(runs).compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    try:
        seen = [
            values
            async for values in graph.astream(
                {"notes": ["in"]}, config, stream_mode="values", durability="sync"
            )
        ]
        history = [snapshot.values async for snapshot in graph.aget_state_history(config)]
    finally:
        await saver.conn.close()
    assert seen == [
        {"notes": ["in"]},
        {"notes": ["in", "one"]},
        {"notes": ["in", "one", "two"]},
        {"notes": ["in", "one", "two", "three"]},
    ]
    stored = _writes(path)
    if drop:
        # each checkpoint took its parent's row, and every step's writes are in the one after
        assert history == [seen[-1]] and _checkpoint_rows(path) == 1
        assert stored == []
    else:
        assert history[::-1] == [{"notes": []}, *seen]
        # the input's and each node's, for the history of every step
        assert len({checkpoint for checkpoint, _, _ in stored}) == 4


async def test_a_checkpoint_replaces_its_parents_row_in_one_commit(tmp_path: Path) -> None:
    """A kill between two commits finds the newest committed checkpoint: the parent's row
    is rewritten in the transaction that commits the child, never before."""
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        first = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await asyncio.sleep(COMMIT_DELAY_S * 5)
        await saver.aput(first, _checkpoint(2), {"source": "loop", "step": 2}, {})
        with sqlite3.connect(path) as other:  # another connection sees only what is committed
            committed = other.execute("SELECT checkpoint_id FROM checkpoints").fetchall()
        await asyncio.sleep(COMMIT_DELAY_S * 5)
        latest = await saver.aget_tuple(
            {"configurable": {"thread_id": THREAD["configurable"]["thread_id"]}}
        )
    finally:
        await saver.conn.close()
    assert committed == [(_checkpoint(1)["id"],)]
    assert latest is not None and latest.checkpoint["id"] == _checkpoint(2)["id"]
    assert latest.checkpoint["channel_values"] == {"notes": ["n2"]}
    assert latest.parent_config["configurable"]["checkpoint_id"] == _checkpoint(1)["id"]
    assert _checkpoint_rows(path) == 1


async def test_a_checkpoint_whose_parent_is_not_stored_is_inserted(tmp_path: Path) -> None:
    """A parent the file does not hold (another saver's, deleted): the child is a new row."""
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, drop_superseded=True)
    elsewhere = {"configurable": {**THREAD["configurable"], "checkpoint_id": "1f0a-elsewhere"}}
    try:
        await saver.aput(elsewhere, _checkpoint(3), {"source": "loop", "step": 3}, {})
        latest = await saver.aget_tuple(THREAD)
    finally:
        await saver.conn.close()
    assert latest is not None and latest.checkpoint["id"] == _checkpoint(3)["id"]
    assert _checkpoint_rows(path) == 1


async def test_a_failed_parallel_step_keeps_its_finished_branch(tmp_path: Path) -> None:
    """Branch ``fast`` finishes, ``slow`` then fails: the step has no checkpoint, so
    ``fast``'s writes are stored, and resuming runs only ``slow`` again."""
    path = tmp_path / "c.sqlite"
    runs: Counter = Counter()
    failing = {"slow": True}

    async def fast(state: Notes) -> dict[str, Any]:
        runs["fast"] += 1
        return {"notes": ["fast"]}

    async def slow(state: Notes) -> dict[str, Any]:
        runs["slow"] += 1
        await asyncio.sleep(COMMIT_DELAY_S * 3)  # fast's writes wait past a commit
        if failing["slow"]:
            raise RuntimeError("slow failed")
        return {"notes": ["slow"]}

    graph = StateGraph(Notes)
    graph.add_node("fast", fast)
    graph.add_node("slow", slow)
    graph.add_edge(START, "fast")
    graph.add_edge(START, "slow")
    graph.add_edge(["fast", "slow"], END)
    config = {"configurable": {"thread_id": "t"}}
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        compiled = graph.compile(checkpointer=saver)
        with pytest.raises(RuntimeError, match="slow failed"):
            await compiled.ainvoke({"notes": []}, config, durability="sync")
    finally:
        await saver.conn.close()
    assert {channel for _, channel, _ in _writes(path)} == {"notes", "__error__"}

    failing["slow"] = False
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        compiled = graph.compile(checkpointer=saver)
        final = await compiled.ainvoke(None, config, durability="sync")
    finally:
        await saver.conn.close()
    assert sorted(final["notes"]) == ["fast", "slow"]
    assert runs == Counter(fast=1, slow=2)


async def test_an_interrupt_is_stored_and_resumed(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    runs: Counter = Counter()

    async def first(state: Notes) -> dict[str, Any]:
        runs["first"] += 1
        return {"notes": ["first"]}

    async def ask(state: Notes) -> dict[str, Any]:
        runs["ask"] += 1
        return {"notes": [interrupt("which?")]}

    graph = StateGraph(Notes)
    graph.add_node("first", first)
    graph.add_node("ask", ask)
    graph.add_edge(START, "first")
    graph.add_edge("first", "ask")
    graph.add_edge("ask", END)
    config = {"configurable": {"thread_id": "t"}}
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        compiled = graph.compile(checkpointer=saver)
        paused = await compiled.ainvoke({"notes": []}, config, durability="sync")
        assert [item.value for item in paused["__interrupt__"]] == ["which?"]
    finally:
        await saver.conn.close()
    assert [channel for _, channel, _ in _writes(path)] == ["__interrupt__"]
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        compiled = graph.compile(checkpointer=saver)
        final = await compiled.ainvoke(Command(resume="that one"), config, durability="sync")
    finally:
        await saver.conn.close()
    assert final == {"notes": ["first", "that one"]}
    assert runs == Counter(first=1, ask=2)  # a node that interrupts runs again on resume


async def test_a_write_that_cannot_be_serialised_loses_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite"
    saver = await open_checkpointer(path, drop_superseded=True)
    try:
        first = await saver.aput(THREAD, _checkpoint(1), {"source": "loop", "step": 1}, {})
        await saver.aput_writes(first, [("notes", [object()])], "task-1")
        await saver.aput_writes(first, [("notes", ["fine"])], "task-2")
        with caplog.at_level("ERROR", logger="mcu_sim.runner.checkpoints"):
            await asyncio.sleep(COMMIT_DELAY_S * 5)
    finally:
        await saver.conn.close()
    assert _writes(path) == [(_checkpoint(1)["id"], "notes", 0)]
    assert "could not be serialised" in caplog.text and "ep-00000001" in caplog.text


async def test_a_fan_out_runs_each_branch_once(tmp_path: Path) -> None:
    """Sends live in the checkpoint's tasks channel, not in the writes that are dropped."""
    from langgraph.types import Send

    runs: Counter = Counter()

    async def start(state: Notes) -> dict[str, Any]:
        return {"notes": ["start"]}

    async def branch(item: dict[str, Any]) -> dict[str, Any]:
        runs[item["name"]] += 1
        return {"notes": [item["name"]]}

    graph = StateGraph(Notes)
    graph.add_node("start", start)
    graph.add_node("branch", branch)
    graph.add_edge(START, "start")
    graph.add_conditional_edges(
        "start", lambda state: [Send("branch", {"name": n}) for n in ("a", "b", "c")], ["branch"]
    )
    graph.add_edge("branch", END)
    path = tmp_path / "c.sqlite"
    config = {"configurable": {"thread_id": "t"}}
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:  # stop once the Sends are made: the next run finds them in the checkpoint alone
        compiled = graph.compile(checkpointer=saver, interrupt_after=["start"])
        await compiled.ainvoke({"notes": []}, config, durability="sync")
    finally:
        await saver.conn.close()
    assert runs == Counter() and _writes(path) == []
    saver = await open_checkpointer(path, group_commit=True, drop_superseded=True)
    try:
        final = await graph.compile(checkpointer=saver).ainvoke(None, config, durability="sync")
    finally:
        await saver.conn.close()
    assert final["notes"][0] == "start" and sorted(final["notes"][1:]) == ["a", "b", "c"]
    assert runs == Counter(a=1, b=1, c=1)
