"""Nodes and routes run in place (graphs/lean_steps.py): the same checkpoints and episode
as LangGraph's own node sequence, fewer tasks, no thread for a route, traces unchanged."""

from __future__ import annotations

import asyncio
import functools
import operator
import threading
from pathlib import Path
from typing import Annotated, Any, TypedDict, get_type_hints

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langgraph._internal._constants import CONFIG_KEY_READ
from langgraph.channels.binop import BinaryOperatorAggregate
from langgraph.channels.ephemeral_value import EphemeralValue
from langgraph.channels.last_value import LastValue
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.pregel._algo import PregelTaskWrites, local_read
from langgraph.types import Command, interrupt

from mcu_sim.config import load_config
from mcu_sim.graphs import lean_steps
from mcu_sim.runner.checkpoints import open_checkpointer
from mcu_sim.graphs.episode import compile_episode_graph
from mcu_sim.graphs.lean_steps import DirectNodeSeq, inline_route, lean_graph
from mcu_sim.runner.runner import EpisodeRunner, compile_graph, plan_jobs
from mcu_sim.graphs.state import RouteState, state_view
from mcu_sim.testing.fake_openai import client_for


class Counter(TypedDict, total=False):
    n: int
    seen: list[str]


def _tiny_graph(route: Any) -> Any:
    async def bump(state: Counter) -> dict[str, Any]:
        thread_id = get_config()["configurable"].get("thread_id", "-")  # the node sees its config
        return {"n": state.get("n", 0) + 1, "seen": [*state.get("seen", []), thread_id]}

    graph = StateGraph(Counter)
    graph.add_node("bump", bump)
    graph.add_edge(START, "bump")
    graph.add_conditional_edges("bump", route, ["bump", END])
    return graph


def _until_three(state: Counter) -> str:
    return "bump" if state["n"] < 3 else END


def _count_tasks(coroutine: Any) -> tuple[Any, int]:
    async def counted() -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        made = [0]

        def factory(loop: Any, coro: Any, context: Any = None) -> asyncio.Task:
            made[0] += 1
            return asyncio.Task(coro, loop=loop, context=context)

        loop.set_task_factory(factory)
        return await coroutine, made[0]

    return asyncio.run(counted())


def test_lean_graph_gives_the_same_result_with_fewer_tasks() -> None:
    config = {"configurable": {"thread_id": "t1"}}
    plain = _tiny_graph(_until_three).compile(checkpointer=InMemorySaver())
    lean = lean_graph(_tiny_graph(inline_route(_until_three)).compile(checkpointer=InMemorySaver()))
    assert isinstance(lean.nodes["bump"].node, DirectNodeSeq)
    plain_result, plain_tasks = _count_tasks(plain.ainvoke({"n": 0}, config))
    lean_result, lean_tasks = _count_tasks(lean.ainvoke({"n": 0}, config))
    assert plain_result == lean_result == {"n": 3, "seen": ["t1"] * 3}
    # measured 23 against 11 (LangGraph 1.2): two tasks saved by each of the 3 steps and 3
    # routes; at least one each, so a LangGraph that makes one task fewer still passes
    assert lean_tasks + 3 + 3 <= plain_tasks
    assert lean_graph(lean) is lean and isinstance(lean.nodes["bump"].node, DirectNodeSeq)


def test_an_inline_route_runs_on_the_loop_thread_a_plain_one_in_a_pool() -> None:
    threads: list[int] = []

    def route(state: Counter) -> str:
        threads.append(threading.get_ident())
        return _until_three(state)

    async def run(route_like: Any) -> None:
        graph = lean_graph(_tiny_graph(route_like).compile())
        await graph.ainvoke({"n": 0})

    asyncio.run(run(route))
    assert threads and all(t != threading.get_ident() for t in threads)  # LangGraph's pool
    threads.clear()
    asyncio.run(run(inline_route(route)))
    assert threads == [threading.get_ident()] * 3


def test_a_listening_handler_still_sees_every_node() -> None:
    class Names(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.started: list[str] = []

        async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            self.started.append(kwargs.get("name") or "")

    handler = Names()
    graph = lean_graph(_tiny_graph(inline_route(_until_three)).compile())
    result = asyncio.run(graph.ainvoke({"n": 0}, {"callbacks": [handler]}))
    assert result["n"] == 3
    assert handler.started.count("bump") == 3  # the original sequence ran, traced


def test_interrupt_inside_a_lean_node_pauses_and_resumes() -> None:
    async def ask(state: Counter) -> dict[str, Any]:
        answer = interrupt("how many?")
        return {"n": int(answer)}

    graph = StateGraph(Counter)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    compiled = lean_graph(graph.compile(checkpointer=InMemorySaver()))
    assert isinstance(compiled.nodes["ask"].node, DirectNodeSeq)
    config = {"configurable": {"thread_id": "q"}}

    async def both() -> tuple[Any, Any]:
        first = await compiled.ainvoke({"n": 0}, config)
        second = await compiled.ainvoke(Command(resume="7"), config)
        return first, second

    first, second = asyncio.run(both())
    assert first["__interrupt__"][0].value == "how many?"
    assert second == {"n": 7}


def _history(run_dir: Path) -> list[tuple[Any, ...]]:
    """Every checkpoint of the run's one thread: step, source, next nodes, what each task
    wrote and the state's values."""

    async def read() -> list[tuple[Any, ...]]:
        saver = await open_checkpointer(run_dir / "checkpoints.sqlite")
        try:
            graph = compile_graph(saver)
            config = {"configurable": {"thread_id": "ep-00000021"}}
            return [
                (
                    s.metadata["step"],
                    s.metadata["source"],
                    s.next,
                    [(t.name, sorted((t.result or {}).keys())) for t in s.tasks],
                    s.values,
                )
                async for s in graph.aget_state_history(config)
            ]
        finally:
            await saver.conn.close()

    return asyncio.run(read())


def test_the_episode_graph_checkpoints_the_same_lean_or_not(
    fake_openai, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        None, ["images.enabled=false", "episode.sessions_min=2", "episode.sessions_max=2"]
    )

    def run(name: str) -> Path:
        out = tmp_path / name
        client = client_for(fake_openai, tmp_path / f"{name}-cache.sqlite")
        report = asyncio.run(EpisodeRunner(config, out, llm=client).run_jobs(plan_jobs(1, 21)))
        assert report.finished == ["ep-00000021"]
        return out

    lean_run = run("lean")
    lean_calls = len(fake_openai.chat_requests)
    with monkeypatch.context() as patch:
        patch.setattr(lean_steps, "lean_graph", lambda graph: graph)
        plain_run = run("plain")
    assert len(fake_openai.chat_requests) == 2 * lean_calls  # both asked the endpoint
    episode = "episodes/ep-00000021.json"
    assert (lean_run / episode).read_bytes() == (plain_run / episode).read_bytes()
    lean_history, plain_history = _history(lean_run), _history(plain_run)
    assert len(lean_history) == len(plain_history) >= 12
    assert lean_history == plain_history


class Shelf(TypedDict, total=False):
    n: int
    items: Annotated[list[str], operator.add]
    other: Annotated[list[str], operator.add]
    note: str


class ShelfView(TypedDict, total=False):
    n: int
    items: Annotated[list[str], operator.add]


class _NeverCopied(LastValue):
    def copy(self) -> Any:
        raise AssertionError("a channel the route does not read was copied")


def _shelf_graph(seen: list[dict[str, Any]]) -> Any:
    async def stock(state: Shelf) -> dict[str, Any]:
        return {"n": state.get("n", 0) + 1, "items": ["a"], "other": ["x"], "note": "kept"}

    def route(state: ShelfView) -> Any:  # annotated: the edge reads n and items only
        seen.append(dict(state))
        return "stock" if state["n"] < 3 else END

    graph = StateGraph(Shelf)
    graph.add_node("stock", stock)
    graph.add_edge(START, "stock")
    graph.add_conditional_edges("stock", inline_route(route), ["stock", END])
    return graph


def test_a_route_reads_the_same_view_of_the_state_through_the_selected_read() -> None:
    plain_seen: list[dict[str, Any]] = []
    lean_seen: list[dict[str, Any]] = []
    plain = _shelf_graph(plain_seen).compile()
    lean = lean_graph(_shelf_graph(lean_seen).compile())
    reader = lean.nodes["stock"].writers[-1].kwargs["reader"]
    assert reader.func is lean_steps.fresh_selected_read
    assert reader.keywords["select"] == ["n", "items"]
    assert plain.nodes["stock"].writers[-1].kwargs["reader"].func is not reader.func
    plain_result = asyncio.run(plain.ainvoke({"n": 0}))
    lean_result = asyncio.run(lean.ainvoke({"n": 0}))
    assert plain_result == lean_result
    assert lean_result["other"] == ["x"] * 3 and lean_result["note"] == "kept"
    # each view holds the step's own writes merged by the reducer, and only n and items
    assert plain_seen == lean_seen
    assert lean_seen == [{"n": k, "items": ["a"] * k} for k in (1, 2, 3)]


def _read_config(channels: dict[str, Any], writes: list[tuple[str, Any]]) -> dict[str, Any]:
    task = PregelTaskWrites(("t",), "stock", writes, ["stock"])
    read = functools.partial(local_read, None, channels, {}, task)
    return {"configurable": {CONFIG_KEY_READ: read}}


def test_the_selected_read_copies_only_the_selected_channels() -> None:
    items: BinaryOperatorAggregate = BinaryOperatorAggregate(list, operator.add)
    items.update([["a"]])
    n = LastValue(int)
    n.update([1])
    channels = {"n": n, "items": items, "other": _NeverCopied(list)}
    writes = [("n", 2), ("items", ["b"]), ("other", ["x"])]
    with pytest.raises(AssertionError, match="was copied"):  # LangGraph's own copies all
        local_read(None, channels, {}, PregelTaskWrites(("t",), "s", writes, []), ["n"], True)
    view = lean_steps.fresh_selected_read(_read_config(channels, writes), select=["n", "items"])
    assert view == {"n": 2, "items": ["a", "b"]}
    assert (n.get(), items.get()) == (1, ["a"])  # the graph's own channels are untouched
    empty = {"n": LastValue(int), "items": BinaryOperatorAggregate(list, operator.add)}
    assert lean_steps.fresh_selected_read(_read_config(empty, []), select=["n", "items"]) == {
        "items": []
    }


def test_a_selected_channel_the_task_did_not_write_is_read_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def channels() -> dict[str, Any]:
        made: dict[str, Any] = {"n": LastValue(int), "note": LastValue(str)}
        made["items"] = BinaryOperatorAggregate(list, operator.add)
        made["trigger"] = EphemeralValue(Any)
        for key, value in (("n", 1), ("note", "kept"), ("items", ["a"]), ("trigger", "go")):
            made[key].key = key
            made[key].update([value])
        return made

    select = ["n", "note", "items", "trigger"]
    writes = [("n", 2), ("items", ["b"])]
    task = PregelTaskWrites(("t",), "s", writes, [])
    expected = local_read(None, channels(), {}, task, select, True)  # LangGraph's own view
    assert expected == {"n": 2, "note": "kept", "items": ["a", "b"]}  # the trigger is cleared
    copied: list[str] = []

    def counted(real: Any) -> Any:
        def copy(self: Any) -> Any:
            copied.append(self.key)
            return real(self)

        return copy

    for kind in (LastValue, BinaryOperatorAggregate, EphemeralValue):
        monkeypatch.setattr(kind, "copy", counted(kind.copy))
    view = lean_steps.fresh_selected_read(_read_config(channels(), writes), select=select)
    assert view == expected
    assert sorted(copied) == ["items", "n", "trigger"]  # "note" was read as it is


def test_the_selected_read_falls_back_to_a_reader_it_does_not_know() -> None:
    asked: list[tuple[Any, bool]] = []

    def other_reader(select: Any, fresh: bool) -> dict[str, Any]:
        asked.append((select, fresh))
        return {"n": 5}

    config = {"configurable": {CONFIG_KEY_READ: other_reader}}
    view = lean_steps.fresh_selected_read(config, select=["n"], mapper=lambda v: v["n"] * 2)
    assert (view, asked) == (10, [(["n"], True)])


def test_the_episode_graphs_routes_read_only_the_route_state() -> None:
    graph = compile_episode_graph()
    for node in ("device_images", "session"):
        reader = graph.nodes[node].writers[-1].kwargs["reader"]
        assert reader.func is lean_steps.fresh_selected_read
        assert set(reader.keywords["select"]) == set(get_type_hints(RouteState))
    assert len(graph.channels) > 2 * len(get_type_hints(RouteState))
    with pytest.raises(ValueError, match="not keys of EpisodeState"):
        state_view("Broken", "sessions", "no_such_key")
