"""Time travel over an episode's checkpoints, with LangGraph's own checkpoint API.

An episode is a thread on its run's checkpointer, opened exactly as the batch runner opens
it (:func:`~mcu_sim.runner.checkpoints.checkpointer_for` and
:func:`~mcu_sim.runner.checkpoints.thread_id_for`): ``<run>/checkpoints.sqlite`` with the
episode id as thread id, or the Postgres database named by ``run.postgres_dsn_env`` with
``<run id>/<episode id>``. From Python::

    ref = parse_episode_ref("runs/x/ep-00000011")
    rows = await history(ref)                          # oldest first
    await show(ref, at=rows[3].checkpoint_id, field="persona.0.sentence")
    forked = await fork(ref, at=rows[3].checkpoint_id, sets={"persona.0.sentence": "..."})
    result = await replay(parse_episode_ref(f"runs/x/{forked.episode_id}"))

``history`` reads ``aget_state_history``; ``fork`` copies a checkpoint's state into a new
thread with ``aupdate_state(as_node=<the node that wrote it>)`` so the fork continues with the
same next node; ``replay`` invokes the graph from a checkpoint config
(``{"configurable": {"thread_id": ..., "checkpoint_id": ...}}``) and writes the finished
episode with :meth:`RunDir.write_episode`. A fork is listed in the run manifest, so ``mcu run
--resume`` continues it. The ``mcu history|show|fork|replay`` commands call these functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.config import Config, load_config
from mcu_sim.debug.history import (  # noqa: F401 - part of this module's API
    CheckpointRow,
    History,
    NoCheckpoints,
    TimeTravelError,
    checkpoint_id_of,
    format_time,
    load_history,
    resolve,
    thread_ids,
    writer_node,
)
from mcu_sim.debug.state import (
    StateEditError,
    get_path,
    set_path,
    validate_field,
)
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.runner.outputs import RunDir, atomic_write_json
from mcu_sim.runner.shards import rebuild_shards


@dataclass(frozen=True)
class EpisodeRef:
    """One episode (thread) in one run directory."""

    run: RunDir
    episode_id: str

    def __str__(self) -> str:
        return str(self.run.root / self.episode_id)


def parse_episode_ref(text: str | Path) -> EpisodeRef:
    """``RUN_DIR/EPISODE_ID`` (also ``RUN_DIR/episodes/EPISODE_ID.json``) -> :class:`EpisodeRef`."""
    path = Path(text)
    episode_id = path.name.removesuffix(".json")
    root = path.parent.parent if path.parent.name == "episodes" else path.parent
    run = RunDir(root)
    if not episode_id or not (run.checkpoints.is_file() or run.manifest.is_file()):
        raise TimeTravelError(
            f"'{text}' does not name an episode: expected RUN_DIR/EPISODE_ID where RUN_DIR "
            "is a run directory (manifest.json, checkpoints.sqlite), e.g. "
            "runs/default/ep-00000011"
        )
    return EpisodeRef(run, episode_id)


@dataclass
class ForkResult:
    episode_id: str
    checkpoint_id: str
    next: tuple[str, ...]
    config: dict[str, Any]


@dataclass
class ReplayResult:
    episode_id: str
    path: Path | None
    nodes: list[str] = field(default_factory=list)
    next: tuple[str, ...] = ()


# ---------------------------------------------------------------- opening a run


@dataclass
class RunGraph:
    """The compiled episode graph on a run's checkpointer, and that run's thread ids."""

    graph: Any
    run: RunDir
    run_id: str
    shared: bool  # a shared (Postgres) store: thread ids carry the run id

    def thread_id(self, episode_id: str) -> str:
        from mcu_sim.runner.checkpoints import thread_id_for

        return thread_id_for(self.run_id, episode_id, self.shared)

    def thread(self, episode_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.thread_id(episode_id)}}

    async def history(self, episode_id: str) -> History:
        prefix = self.thread_id("")
        try:
            return await load_history(self.graph, self.thread_id(episode_id), prefix)
        except NoCheckpoints:
            if not self.run.is_finished(episode_id):
                raise
        raise NoCheckpoints(
            f"episode {episode_id} is finished and has no checkpoint history: they are "
            "deleted once the episode file is written when run.keep_checkpoints is last. "
            f"The episode is {self.run.episode_path(episode_id)} (mcu view shows it); "
            "run with run.keep_checkpoints=all to keep the history for debugging."
        ) from None


@asynccontextmanager
async def open_graph(run: RunDir, config: Config | None = None) -> AsyncIterator[RunGraph]:
    """The compiled episode graph on the run's checkpointer (closed on exit), opened as the
    batch runner opens it: SQLite in the run directory, or the configured Postgres.
    ``config`` defaults to the run's own ``config.yaml``."""
    from mcu_sim.runner.checkpoints import checkpointer_for, postgres_dsn
    from mcu_sim.runner.drive import compile_graph

    config = config or load_run_config(run)
    shared = postgres_dsn(config) is not None
    run_id = str((run.read_manifest() or {}).get("run_id") or "")
    if shared and not run_id:
        raise TimeTravelError(
            f"{run.root} has no manifest.json with a run id: its episodes cannot be found in "
            "the shared Postgres checkpoints (threads are named <run id>/<episode id>)"
        )
    run.create()
    async with checkpointer_for(config, run.checkpoints) as saver:
        yield RunGraph(compile_graph(saver, None, config), run, run_id, shared)


def load_run_config(run: RunDir, path: Path | None = None, overrides: list[str] = ()) -> Config:
    """``path`` if given, else the run's own ``config.yaml``, else the defaults."""
    if path is None and (run.root / "config.yaml").is_file():
        path = run.root / "config.yaml"
    return load_config(path, list(overrides))


def make_context(
    config: Config,
    run: RunDir,
    *,
    llm: Any = None,
    tools: Any = None,
    use_cache: bool = True,
    executions: Counter | None = None,
    step_overrides: dict[str, dict[str, Any]] | None = None,
) -> EpisodeContext:
    """An EpisodeContext like the batch runner's (client and toolbox built from config)."""
    from mcu_sim.agents.llm.client import build_run_client
    from mcu_sim.runner.runner import build_toolbox

    return EpisodeContext(
        config=config,
        llm=llm if llm is not None else build_run_client(config),
        run_dir=run.root,
        tools=tools if tools is not None else build_toolbox(config),
        use_cache=use_cache,
        executions=executions if executions is not None else Counter(),
        step_overrides=step_overrides or {},
    )


# ---------------------------------------------------------------- history


async def history(ref: EpisodeRef, config: Config | None = None) -> list[CheckpointRow]:
    """The episode's checkpoints, oldest first, as ``mcu history`` lists them."""
    async with open_graph(ref.run, config) as opened:
        return (await opened.history(ref.episode_id)).rows


# ---------------------------------------------------------------- show, edit, fork


async def show(
    ref: EpisodeRef, at: str | None = None, field: str | None = None, config: Config | None = None
) -> Any:
    """The state (or one field, dotted path) at a checkpoint (default: the latest)."""
    async with open_graph(ref.run, config) as opened:
        snapshot = resolve(await opened.history(ref.episode_id), at)
    values = dict(snapshot.values)
    return get_path(values, field) if field else values


def apply_sets(values: dict[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each ``path -> value`` applied and its field validated."""
    result = dict(values)
    for path, value in sets.items():
        name, top = set_path(result, path, value)
        result[name] = validate_field(name, top, result)
    return result


def _fork_values(snapshot: Any, new_id: str) -> dict[str, Any]:
    if snapshot.metadata.get("source") == "input":  # the raw input is a pending write
        values = dict(snapshot.tasks[0].result or {}) if snapshot.tasks else {}
    else:
        values = dict(snapshot.values)
    values["episode_id"] = new_id
    if isinstance(values.get("episode"), dict):
        values["episode"] = {**values["episode"], "episode_id": new_id}
    return values


async def _taken(opened: RunGraph, episode_id: str) -> bool:
    """Whether ``episode_id`` already has checkpoints or an episode file in this run."""
    if opened.run.is_finished(episode_id):
        return True
    return bool(await opened.graph.checkpointer.aget_tuple(opened.thread(episode_id)))


async def _fresh_id(opened: RunGraph, base: str) -> str:
    for n in range(1, 10_000):
        candidate = f"{base}-fork{n}"
        if not await _taken(opened, candidate):
            return candidate
    raise TimeTravelError(f"could not find a free fork id for {base}")


async def fork_snapshot(
    opened: RunGraph,
    history: History,
    snapshot: Any,
    new_id: str | None = None,
    sets: Mapping[str, Any] | None = None,
    source_episode: str = "",
) -> ForkResult:
    """Copy ``snapshot``'s state into a new thread (new episode id), with edits applied, and
    list the fork in the run manifest (so ``mcu run --resume`` continues it). The caller
    holds the run lock."""
    from mcu_sim.runner.manifest import record_fork

    graph = opened.graph
    base = source_episode or snapshot.values["episode_id"]
    new_id = new_id or await _fresh_id(opened, base)
    if await _taken(opened, new_id):
        raise TimeTravelError(f"episode {new_id} already exists in this run; pick another id")
    as_node = writer_node(history, snapshot)
    values = apply_sets(_fork_values(snapshot, new_id), sets or {})
    origin = f"{source_episode or '?'}@{checkpoint_id_of(snapshot)}"
    note = f"fork of {origin}" + (f", set {', '.join(sets)}" if sets else "")
    metadata = {"mcu_note": note, "mcu_as_node": as_node, "mcu_forked_from": origin}
    config = {**opened.thread(new_id), "metadata": metadata}
    new_config = await graph.aupdate_state(config, values, as_node)
    head = await graph.aget_state(new_config)
    record_fork(opened.run, new_id, int(values.get("seed", 0)), origin)
    return ForkResult(new_id, checkpoint_id_of(head), tuple(head.next), new_config)


async def fork(
    ref: EpisodeRef,
    at: str | None,
    sets: Mapping[str, Any] | None = None,
    new_id: str | None = None,
    config: Config | None = None,
) -> ForkResult:
    """A new episode whose state is the one at checkpoint ``at``, with ``sets`` applied
    (``{"persona.0.sentence": "..."}``); continue it with :func:`replay` or ``mcu run
    --resume``. Holds the run lock, like :func:`replay` and the debugger."""
    from mcu_sim.runner.manifest import run_lock

    with run_lock(ref.run):
        async with open_graph(ref.run, config) as opened:
            history = await opened.history(ref.episode_id)
            snapshot = resolve(history, at)
            try:
                return await fork_snapshot(opened, history, snapshot, new_id, sets, ref.episode_id)
            except StateEditError as exc:
                raise TimeTravelError(f"refused: {exc}") from None


# ---------------------------------------------------------------- replay


async def run_from(
    graph: Any,
    config: dict[str, Any],
    context: EpisodeContext,
    *,
    payload: dict[str, Any] | None = None,
    interrupt_before: Any = None,
    on_node: Callable[[str, Any], None] | None = None,
) -> list[str]:
    """Invoke the graph from a checkpoint config. ``payload`` None continues from there (the
    way to resume or time-travel); a payload starts a new thread."""
    ran: list[str] = []
    config = await invoke_config(graph, config) if payload is None else config
    async for update in graph.astream(
        payload, config, context=context, stream_mode="updates", interrupt_before=interrupt_before
    ):
        for node, written in update.items():
            if node == "__interrupt__":
                continue
            ran.append(node)
            if on_node:
                on_node(node, written)
    return ran


async def invoke_config(graph: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The config to continue from ``config``'s checkpoint: the bare thread when it is the
    thread's latest (so LangGraph just continues), else the checkpoint config itself (so
    LangGraph branches the thread there, the way to time-travel)."""
    configurable = config["configurable"]
    thread = {"configurable": {"thread_id": configurable["thread_id"]}}
    head = await graph.aget_state(thread)
    wanted = configurable.get("checkpoint_id")
    if wanted is None or (head.config and checkpoint_id_of(head) == wanted):
        return {**{k: v for k, v in config.items() if k != "configurable"}, **thread}
    return config


def write_if_finished(run: RunDir, snapshot: Any, shard_size: int = 1000) -> Path | None:
    """Write the episode file when the graph has reached the end of this thread.

    A new episode gets its file and index line (the next batch run adds it to a shard). An
    episode whose file already holds the same data is left alone; one that changed (time
    travel gave it a new ending) is rewritten, and the index and any shards are rebuilt
    so no reader sees the old version.
    """
    episode = snapshot.values.get("episode")
    if snapshot.next or not episode:
        return None
    path = run.episode_path(episode["episode_id"])
    if not path.is_file():
        return run.write_episode(episode)
    if run.read_episode(episode["episode_id"]) == episode:
        return path
    atomic_write_json(path, episode)
    run.rebuild_index()
    if run.shard_paths():
        rebuild_shards(run, int(run.shard_state().get("shard_size") or shard_size))
    return path


async def replay(
    ref: EpisodeRef,
    from_checkpoint: str | None = None,
    *,
    config: Config | None = None,
    llm: Any = None,
    tools: Any = None,
    use_cache: bool = True,
    executions: Counter | None = None,
    on_node: Callable[[str, Any], None] | None = None,
) -> ReplayResult:
    """Continue the graph from a checkpoint (default: the latest) to the end and write the
    finished episode file. Earlier nodes are not run again; ``executions`` counts the rest."""
    from mcu_sim.runner.manifest import run_lock

    config = config or load_run_config(ref.run)
    context = make_context(
        config, ref.run, llm=llm, tools=tools, use_cache=use_cache, executions=executions
    )
    try:
        with run_lock(ref.run):  # no batch run may write this directory meanwhile
            async with open_graph(ref.run, config) as opened:
                history = await opened.history(ref.episode_id)
                snapshot = resolve(history, from_checkpoint)
                nodes = await run_from(opened.graph, snapshot.config, context, on_node=on_node)
                head = await opened.graph.aget_state(opened.thread(ref.episode_id))
            path = write_if_finished(ref.run, head, config.run.shard_size)
    finally:
        if llm is None:
            await context.llm.aclose()
    return ReplayResult(ref.episode_id, path, nodes, tuple(head.next))
