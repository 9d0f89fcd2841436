"""Running one episode on a compiled graph: start or resume it, stop after a step, and
record why it failed. Shared by the local runner and the Ray workers."""

from __future__ import annotations

import contextlib
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from mcu_sim.agents.llm.client import LLMOutputError
from mcu_sim.agents.llm.prefix import episode_prefixes
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.runner.jobs import EpisodeJob
from mcu_sim.runner.scrub import Scrubber

STORE_STEP = "store_episode"  # ``failed_at`` of an episode whose file could not be written


def compile_graph(
    checkpointer: Any, graph_factory: Callable[[], Any] | None = None, config: Any = None
) -> Any:
    """``graph_factory()``'s graph compiled on ``checkpointer``; without a factory, the
    augmentation graph when ``config.augment.mode`` is set (``mcu augment``), else the
    episode graph."""
    if graph_factory is None and getattr(getattr(config, "augment", None), "mode", None):
        from mcu_sim.graphs.augment import build_augment_graph as graph_factory
    if graph_factory is None:
        from mcu_sim.graphs.episode import build_episode_graph as graph_factory
    return graph_factory().compile(checkpointer=checkpointer)


async def drive_episode(
    graph: Any,
    job: EpisodeJob,
    context: EpisodeContext,
    thread_id: str,
    on_node: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool | Awaitable[bool]] | None = None,
    durability: str = "sync",
) -> dict[str, Any] | None:
    """Run (or resume) one episode to its end; return the episode dict.

    ``durability`` (``run.durability``) is LangGraph's own: ``sync`` writes each step's
    checkpoint before the next step starts, so an interruption redoes at most the steps in
    progress; ``async`` writes it while the next step runs (a crash may also redo the step
    before); ``exit`` writes only when the run of the graph ends (finished, stopped after a
    step, or failed), so a kill before that loses the episode's progress, never a finished
    episode (its file is the record).

    Returns None when ``should_stop`` said so after a step: the checkpoint keeps every
    finished step and the next call continues from there. Raises what a node raised.
    """
    config = {"configurable": {"thread_id": thread_id}}
    payload: dict[str, Any] | None = {"episode_id": job.episode_id, "seed": job.seed}
    snapshot = await graph.aget_state(config)
    # Nothing next and no task pending: the thread ended. (A step whose writes were saved but
    # whose checkpoint was not, after a crash or a full disk, shows no ``next`` either, but
    # still has its tasks: running on applies those writes and continues.)
    ended = snapshot.values and not snapshot.next and not snapshot.tasks
    if ended and "episode" not in snapshot.values:
        snapshot = await _continue_at_filter(graph, config, snapshot)
    if snapshot.values and not snapshot.next and "episode" in snapshot.values:
        return snapshot.values["episode"]  # a finished graph whose file write was lost
    if snapshot.values:
        payload = None  # continue from the checkpoint
    stream = graph.astream(
        payload, config, context=context, stream_mode="updates", durability=durability
    )
    episode = None
    # closed here, not by the garbage collector: with durability "exit" LangGraph writes
    # the checkpoint as the stream closes, which must happen while the saver is open. The
    # requests of this run of the graph are one episode for the prompt-prefix measure.
    with episode_prefixes():
        async with contextlib.aclosing(stream):
            async for update in stream:
                for node, values in update.items():
                    if on_node is not None:
                        on_node(node)
                    if isinstance(values, dict) and "episode" in values:
                        episode = values["episode"]  # the last step's output: no reload
                stop = should_stop is not None and episode is None
                if stop and await _said_stop(should_stop):  # type: ignore[arg-type]
                    return None  # a finished episode is kept
    if episode is None:
        snapshot = await graph.aget_state(config)
        episode = snapshot.values.get("episode")
    if episode is None:
        raise RuntimeError(f"the graph stopped before filter (next: {list(snapshot.next)})")
    return episode


async def _said_stop(should_stop: Callable[[], bool | Awaitable[bool]]) -> bool:
    stop = should_stop()
    if inspect.isawaitable(stop):
        stop = await stop
    return bool(stop)


async def _continue_at_filter(graph: Any, config: dict[str, Any], snapshot: Any) -> Any:
    """A thread stopped with nothing to run and no episode was checkpointed by a version
    whose last steps were ``link_album``, ``safety`` and ``finalize`` (now the steps of the
    ``filter`` node), before one of them: point it at ``filter``, which redoes all three
    (each skips what is already done). Graphs without those nodes are left as they are."""
    if not {"align_sharing", "filter"} <= set(graph.nodes):
        return snapshot
    await graph.aupdate_state(config, None, as_node="align_sharing")  # its edge: filter
    return await graph.aget_state(config)


def failure_record(
    job: EpisodeJob, exc: BaseException, failed_at: list[str], scrubber: Scrubber | None = None
) -> dict[str, Any]:
    """What ``failures/<id>.json`` holds: reason, traceback, the model's raw text if any,
    with the configured secrets masked (a server may echo a key into its error). The
    ``attempts`` count is set when the record is stored (``EpisodeRunner.save_failure``)."""
    record: dict[str, Any] = {
        "episode_id": job.episode_id,
        "seed": job.seed,
        "failed_at": failed_at,
        "error_type": type(exc).__name__,
        "reason": str(exc),
        "traceback": traceback.format_exception(exc),
        "time": time.time(),
        "attempts": 1,
    }
    if isinstance(exc, LLMOutputError):
        record["raw_text"] = exc.raw_text
    return scrubber.data(record) if scrubber else record


async def next_nodes(graph: Any, thread_id: str) -> list[str]:
    """The nodes a thread would run next (where a failed episode stopped); [] if unknown."""
    try:
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    except Exception:  # the failure record must still be written
        return []
    return list(snapshot.next)
