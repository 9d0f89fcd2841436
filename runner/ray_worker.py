"""What a Ray worker process keeps from one episode task to the next.

A Ray worker runs many episode tasks one after another. Building the event loop, LLM
client and checkpointer and compiling the episode graph for each task made a two-session
task cost 54 ms of CPU instead of 33 ms (measured against the bench endpoint), so a worker
builds them once, on an
event loop it keeps, and reuses them for every task of the same run and config
(:class:`WorkerSession`). A task with another run directory or config replaces the session.

Durability is the local runner's (``run.durability``, LangGraph's own modes, on the same
stock saver). A task that raises (anything but an episode failure, which is a result)
closes the session, so the next task starts from fresh parts. A worker never deletes an
episode's checkpoints: with ``run.keep_checkpoints: last`` the driver does, once it has
written the episode file.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcu_sim.agents.llm.client import LLMClient
from mcu_sim.config import Config
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.runner.checkpoints import checkpointer_for
from mcu_sim.runner.drive import compile_graph, drive_episode, failure_record, next_nodes
from mcu_sim.runner.event_loop import loop_factory
from mcu_sim.runner.jobs import EpisodeJob
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.ray_tools import RemoteToolbox
from mcu_sim.runner.scrub import Scrubber
from mcu_sim.storage_errors import storage_failure

T = TypeVar("T")


def session_key(config_dump: dict[str, Any], run_root: str) -> str:
    """What a session is for: the run directory and the whole config (operational fields
    included: a changed ``run.durability`` or event loop needs other parts)."""
    text = json.dumps([config_dump, run_root], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class WorkerSession:
    """A worker's event loop, LLM client, checkpointer and compiled graph for one run."""

    key: str
    config: Config
    runner: asyncio.Runner
    llm: LLMClient
    saver: Any
    graph: Any
    tasks_run: int = 0
    fingerprint: str | None = None  # the config's, hashed once for every episode's record
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one task's coroutine on the session's loop."""
        try:
            return self.runner.run(coroutine)
        finally:
            self.tasks_run += 1

    def close(self) -> None:
        """Close the checkpointer, the LLM client and the loop."""
        try:
            self.runner.run(self._exits.aclose())
        finally:
            self.runner.close()


_current: WorkerSession | None = None


def worker_session(payload: dict[str, Any]) -> WorkerSession:
    """The session for this task's run and config: the one kept, or a new one."""
    global _current
    key = payload.get("session_key") or session_key(payload["config"], payload["run_root"])
    if _current is not None and _current.key == key:
        return _current
    close_worker_session()
    _current = _open_session(key, Config.model_validate(payload["config"]), payload["run_root"])
    return _current


def close_worker_session() -> None:
    """Close the kept session, if any (at a change of run, after a broken task, at exit)."""
    global _current
    session, _current = _current, None
    if session is not None:
        session.close()


def _close_at_exit() -> None:
    """Every task already committed its writes; a close that fails as the process ends
    (a loop Ray tore down) has nothing left to lose, so it is not shown as an error."""
    with contextlib.suppress(Exception):
        close_worker_session()


atexit.register(_close_at_exit)


async def _open_parts(
    config: Config, run_root: str, exits: contextlib.AsyncExitStack
) -> tuple[LLMClient, Any]:
    """The LLM client and checkpointer of a session, opened on the running loop."""
    from mcu_sim.agents.llm.client import build_run_client

    llm = build_run_client(config)
    exits.push_async_callback(llm.aclose)
    saver = await exits.enter_async_context(checkpointer_for(config, RunDir(run_root).checkpoints))
    return llm, saver


def _open_session(key: str, config: Config, run_root: str) -> WorkerSession:
    runner = asyncio.Runner(loop_factory=loop_factory(config.run.event_loop))
    exits = contextlib.AsyncExitStack()
    try:
        llm, saver = runner.run(_open_parts(config, run_root, exits))
    except BaseException:
        with contextlib.suppress(Exception):
            runner.run(exits.aclose())
        runner.close()
        raise
    graph = compile_graph(saver, None, config)
    fingerprint = config.fingerprint()
    return WorkerSession(
        key, config, runner, llm, saver, graph, fingerprint=fingerprint, _exits=exits
    )


# ---------------------------------------------------------------- one episode task


def run_episode_task(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task (a plain function, so it can also be called directly): one
    episode run (or resumed) on the worker's kept session (event loop of
    ``run.event_loop``, LLM client, checkpointer, compiled graph)."""
    session = worker_session(payload)
    try:
        return session.run(_episode_in_worker(payload, session))
    except BaseException:
        close_worker_session()  # a broken loop or checkpointer is not kept for the next task
        raise


@dataclass
class ActorSession:
    """:class:`WorkerSession`'s parts on an :class:`EpisodeActor`'s own event loop."""

    key: str
    config: Config
    llm: LLMClient
    saver: Any
    graph: Any
    fingerprint: str | None
    exits: contextlib.AsyncExitStack
    reported: Any = None  # the client's usage when the monitor last heard of it


class EpisodeActor:
    """An async Ray actor running many episodes at once, interleaved on its event loop.

    One episode per task keeps one episode in flight per worker process, and an episode
    mostly waits on the endpoint: a few actors, each with as many episodes in flight as the
    driver gives it (Ray's ``max_concurrency`` for async actors), keep the endpoint as busy
    as the local runner's single loop does, with one client, checkpointer and compiled graph
    per actor. Results still come back one episode at a time, as each ends.
    """

    def __init__(self) -> None:
        self._session: ActorSession | None = None
        self._opening: asyncio.Lock | None = None
        self.episodes_run = 0

    async def _session_for(self, payload: dict[str, Any]) -> ActorSession:
        if self._opening is None:
            self._opening = asyncio.Lock()  # made on the actor's loop
        async with self._opening:
            key = payload.get("session_key") or session_key(payload["config"], payload["run_root"])
            if self._session is not None and self._session.key == key:
                return self._session
            await self.close()
            config, exits = Config.model_validate(payload["config"]), contextlib.AsyncExitStack()
            llm, saver = await _open_parts(config, payload["run_root"], exits)
            graph, fingerprint = compile_graph(saver, None, config), config.fingerprint()
            self._session = ActorSession(key, config, llm, saver, graph, fingerprint, exits)
            self._session.reported = llm.usage
            return self._session

    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One episode run (or resumed), as :func:`run_episode_task` does in a task."""
        session = await self._session_for(payload)
        try:
            return await _episode_in_worker(payload, session)
        finally:
            self.episodes_run += 1

    async def close(self) -> None:
        """Close the session's checkpointer and client (before the driver kills the actor)."""
        session, self._session = self._session, None
        if session is not None:
            await session.exits.aclose()


async def _episode_in_worker(payload: dict[str, Any], session: Any) -> dict[str, Any]:
    """The episode, or a failure record, or the storage error that stopped it, or
    ``stopped``, with this task's usage."""
    config, llm, graph = session.config, session.llm, session.graph
    job = EpisodeJob(*payload["job"])
    executions: Counter = Counter()
    monitor = payload.get("monitor")
    actors = payload["tool_actors"]
    tools = RemoteToolbox(actors, payload["tool_info"]) if actors else None
    started = reported = llm.usage  # the client is the session's: count this task's share
    shared = isinstance(session, ActorSession)  # other episodes use the same client at once

    async def after_step(nodes: list[str]) -> bool:
        nonlocal reported
        if monitor is None:
            return False
        if shared:  # the client's calls since any episode of this actor last reported
            delta, session.reported = llm.usage - session.reported, llm.usage
        else:
            delta, reported = llm.usage - reported, llm.usage
        return bool(await monitor.report.remote(delta.as_dict(), len(nodes)))

    context = EpisodeContext(
        config, llm, Path(payload["run_root"]), tools, payload["use_cache"], executions,
        config_fingerprint=session.fingerprint,
    )  # fmt: skip
    pending: list[str] = []
    try:
        episode = await drive_episode(
            graph, job, context, payload["thread_id"], on_node=pending.append,
            should_stop=lambda: _drain(after_step, pending), durability=config.run.durability,
        )  # fmt: skip
        result = {"episode": episode} if episode is not None else {"stopped": True}
    except Exception as exc:
        if (storage := storage_failure(exc)) is not None:  # no episode's fault: the run stops
            result = {"storage": storage}
        else:
            failed_at = await next_nodes(graph, payload["thread_id"])
            record = failure_record(job, exc, failed_at, Scrubber.for_config(config))
            result = {"failure": record}
    await after_step([])
    if not shared:  # an actor's client counts its concurrent episodes together
        result["usage"] = (llm.usage - started).as_dict()
    result["executions"] = dict(executions)
    return result


def _drain(after_step: Any, pending: list[str]) -> Any:
    nodes = list(pending)
    pending.clear()
    return after_step(nodes)
