"""What a Ray worker process keeps from one episode task to the next.

A Ray worker runs many episode tasks one after another. Building the event loop, LLM
client and checkpointer and compiling the episode graph for each task made a two-session
task cost 54 ms of CPU instead of 33 ms (measured against the bench endpoint), so a worker
builds them once, on an
event loop it keeps, and reuses them for every task of the same run and config
(:class:`WorkerSession`). A task with another run directory or config replaces the session.

Durability is the local runner's: a checkpoint is committed when it is written, and the
pending writes still open when a task ends are committed before its result goes back. A
task that raises (anything but an episode failure, which is a result) closes the session,
so the next task starts from fresh parts.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mcu_sim.agents.llm.client import LLMClient
from mcu_sim.config import Config
from mcu_sim.runner.checkpoints import inline_connection
from mcu_sim.runner.event_loop import loop_factory

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
        """Run one task's coroutine on the session's loop, then commit what it left open."""
        try:
            return self.runner.run(coroutine)
        finally:
            self.tasks_run += 1
            conn = inline_connection(self.saver)  # Postgres commits every statement
            if conn is not None:
                conn.commit_now()

    def close(self) -> None:
        """Close the checkpointer (committing), the LLM client and the loop."""
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


def _open_session(key: str, config: Config, run_root: str) -> WorkerSession:
    from mcu_sim.agents.llm.client import build_client
    from mcu_sim.runner.outputs import RunDir
    from mcu_sim.runner.runner import checkpointer_for, compile_graph

    runner = asyncio.Runner(loop_factory=loop_factory(config.run.event_loop))
    exits = contextlib.AsyncExitStack()

    async def open_parts() -> tuple[LLMClient, Any]:
        llm = build_client(config.llm, cache_path=config.llm.cache.path)
        exits.push_async_callback(llm.aclose)
        saver = await exits.enter_async_context(
            checkpointer_for(config, RunDir(run_root).checkpoints, for_run=True)
        )
        return llm, saver

    try:
        llm, saver = runner.run(open_parts())
    except BaseException:
        with contextlib.suppress(Exception):
            runner.run(exits.aclose())
        runner.close()
        raise
    graph = compile_graph(saver)
    fingerprint = config.fingerprint()
    return WorkerSession(
        key, config, runner, llm, saver, graph, fingerprint=fingerprint, _exits=exits
    )
