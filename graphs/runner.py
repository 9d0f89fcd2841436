"""Batch runner: many episodes concurrently, durable checkpoints, resume, budget.

Each episode is a LangGraph thread (``thread_id`` = episode id) on a SQLite checkpointer in
the run directory. A re-run of the same command continues unfinished episodes from their last
checkpoint and never redoes a finished one. There is always a sequential path
(``max_in_flight=1``) for debugging.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim import __version__
from mcu_sim.agents.llm import LLMClient, LLMOutputError, Usage, build_client
from mcu_sim.config import Config, redacted
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.graphs.outputs import RunDir, atomic_write_json, atomic_write_text
from mcu_sim.personas.schema import SCHEMA_VERSION


class FingerprintMismatch(RuntimeError):
    """The run directory was made with a different config."""


class BudgetExceeded(RuntimeError):
    pass


@dataclass
class EpisodeJob:
    episode_id: str
    seed: int


@dataclass
class RunReport:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped_for_budget: bool = False
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    executions: Counter = field(default_factory=Counter)


def episode_id_for(seed: int) -> str:
    return f"ep-{seed:08d}"


def plan_jobs(episodes: int, base_seed: int) -> list[EpisodeJob]:
    """Episode i gets seed ``base_seed + i``; its id is derived from that seed."""
    return [EpisodeJob(episode_id_for(base_seed + i), base_seed + i) for i in range(episodes)]


async def open_checkpointer(path: Path) -> Any:
    """An AsyncSqliteSaver on ``path`` with WAL and a busy timeout."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await aiosqlite.connect(str(path), timeout=30)
    await conn.execute("PRAGMA busy_timeout=30000")
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    return saver


def write_manifest(run: RunDir, config: Config, jobs: list[EpisodeJob], force: bool) -> None:
    """Create the manifest, or check the existing one matches this config."""
    fingerprint = config.fingerprint()
    existing = run.read_manifest()
    if existing and existing.get("config_fingerprint") != fingerprint and not force:
        raise FingerprintMismatch(
            f"{run.root} was generated with config {existing.get('config_fingerprint')}, "
            f"but the current config is {fingerprint}. Resuming would mix two datasets. "
            "Use a new --out directory, restore the old config, or pass --force-config to "
            "continue anyway."
        )
    seeds = sorted({job.seed for job in jobs} | set((existing or {}).get("seeds", [])))
    manifest = {
        "mcu_sim_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "config_fingerprint": fingerprint,
        "previous_fingerprints": (existing or {}).get("previous_fingerprints", [])
        + (
            [existing["config_fingerprint"]]
            if existing and force and existing.get("config_fingerprint") != fingerprint
            else []
        ),
        "seeds": seeds,
        "episodes_planned": len(seeds),
        "episodes_finished": len(run.finished_ids()),
        "episodes_failed": len(run.failed_ids()),
        "provider": {"kind": config.llm.provider.kind, "model": config.llm.provider.model},
    }
    atomic_write_json(run.manifest, manifest)
    import yaml

    atomic_write_text(
        run.root / "config.yaml",
        yaml.safe_dump(redacted(config.model_dump(mode="json")), sort_keys=False),
    )


class EpisodeRunner:
    """Runs episode jobs into one run directory."""

    def __init__(
        self,
        config: Config,
        out_dir: str | Path,
        *,
        llm: LLMClient | None = None,
        tools: Any = None,
        use_cache: bool = True,
        max_in_flight: int | None = None,
        max_cost: float | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        graph_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.run = RunDir(out_dir)
        self.llm = llm
        self.tools = tools if tools is not None else build_toolbox(config)
        self.use_cache = use_cache
        self.max_in_flight = max_in_flight or config.run.max_in_flight
        self.max_cost = max_cost
        self.on_event = on_event or (lambda kind, data: None)
        self.graph_factory = graph_factory
        self.executions: Counter = Counter()
        self._budget_hit = asyncio.Event()

    def _emit(self, kind: str, **data: Any) -> None:
        self.on_event(kind, data)

    def _client(self) -> LLMClient:
        if self.llm is None:
            cache_path = self.config.llm.cache.path
            self.llm = build_client(self.config.llm, cache_path=cache_path)
        return self.llm

    def _graph(self, checkpointer: Any) -> Any:
        if self.graph_factory:
            return self.graph_factory().compile(checkpointer=checkpointer)
        from mcu_sim.graphs.episode import build_episode_graph

        return build_episode_graph().compile(checkpointer=checkpointer)

    async def run_jobs(self, jobs: list[EpisodeJob], force_config: bool = False) -> RunReport:
        self.run.create()
        write_manifest(self.run, self.config, jobs, force_config)
        self.run.rebuild_index()
        report = RunReport()
        start = time.monotonic()
        llm = self._client()
        usage_before = llm.usage
        todo = []
        for job in jobs:
            if self.run.is_finished(job.episode_id):
                report.skipped.append(job.episode_id)
            else:
                todo.append(job)
        self._emit("plan", total=len(jobs), skipped=len(report.skipped))
        saver = await open_checkpointer(self.run.checkpoints)
        try:
            graph = self._graph(saver)
            await self._run_all(graph, todo, report)
        finally:
            await saver.conn.close()
        report.usage = _minus(llm.usage, usage_before)
        report.seconds = time.monotonic() - start
        report.executions = self.executions
        report.stopped_for_budget = self._budget_hit.is_set()
        write_manifest(self.run, self.config, jobs, force=True)
        return report

    async def _run_all(self, graph: Any, jobs: list[EpisodeJob], report: RunReport) -> None:
        queue: asyncio.Queue[EpisodeJob] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)

        async def worker() -> None:
            while not queue.empty() and not self._budget_hit.is_set():
                job = queue.get_nowait()
                await self._run_one(graph, job, report)

        workers = [
            asyncio.create_task(worker()) for _ in range(min(self.max_in_flight, max(len(jobs), 1)))
        ]
        await asyncio.gather(*workers)

    def _over_budget(self) -> bool:
        if self.max_cost is None or self.llm is None:
            return False
        if self.llm.usage.cost_usd >= self.max_cost:
            self._budget_hit.set()
        return self._budget_hit.is_set()

    async def _run_one(self, graph: Any, job: EpisodeJob, report: RunReport) -> None:
        config = {"configurable": {"thread_id": job.episode_id}}
        context = EpisodeContext(
            config=self.config,
            llm=self._client(),
            run_dir=self.run.root,
            tools=self.tools,
            use_cache=self.use_cache,
            executions=self.executions,
        )
        self._emit("start", episode_id=job.episode_id)
        try:
            snapshot = await graph.aget_state(config)
            payload = None if snapshot.values else {"episode_id": job.episode_id, "seed": job.seed}
            if snapshot.values and not snapshot.next and "episode" in snapshot.values:
                payload = None  # finished in the graph; only the file write was lost
            else:
                async for update in graph.astream(
                    payload, config, context=context, stream_mode="updates"
                ):
                    for node in update:
                        self._emit("node", episode_id=job.episode_id, node=node)
                    if self._over_budget():
                        self._emit("budget", episode_id=job.episode_id)
                        return
            final = await graph.aget_state(config)
            episode = final.values.get("episode")
            if episode is None:
                raise RuntimeError(f"graph stopped before finalize (next: {final.next})")
            self.run.write_episode(episode)
            report.finished.append(job.episode_id)
            self._emit("done", episode_id=job.episode_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad episode never stops the run
            await self._record_failure(graph, config, job, exc)
            report.failed[job.episode_id] = f"{type(exc).__name__}: {exc}"
            self._emit("failed", episode_id=job.episode_id, error=str(exc))

    async def _record_failure(
        self, graph: Any, config: dict[str, Any], job: EpisodeJob, exc: Exception
    ) -> None:
        try:
            snapshot = await graph.aget_state(config)
            next_nodes = list(snapshot.next)
        except Exception:  # pragma: no cover - the record must still be written
            next_nodes = []
        record = {
            "episode_id": job.episode_id,
            "seed": job.seed,
            "failed_at": next_nodes,
            "error_type": type(exc).__name__,
            "reason": str(exc),
            "traceback": traceback.format_exception(exc),
            "time": time.time(),
        }
        if isinstance(exc, LLMOutputError):
            record["raw_text"] = exc.raw_text
        self.run.write_failure(job.episode_id, record)


def _minus(after: Usage, before: Usage) -> Usage:
    return Usage(
        after.calls - before.calls,
        after.cached_calls - before.cached_calls,
        after.prompt_tokens - before.prompt_tokens,
        after.completion_tokens - before.completion_tokens,
        after.cost_usd - before.cost_usd,
    )


def build_toolbox(config: Config) -> Any:
    """The image toolbox from ``config.images`` (None when images are disabled)."""
    from mcu_sim.tools.settings import ImagesConfig
    from mcu_sim.tools.toolbox import ImageToolbox

    settings = ImagesConfig.model_validate(config.images)
    return ImageToolbox(settings) if settings.enabled else None


def failed_jobs(run: RunDir) -> list[EpisodeJob]:
    import json

    jobs = []
    for episode_id in run.failed_ids():
        record = json.loads((run.failures / f"{episode_id}.json").read_text())
        jobs.append(EpisodeJob(episode_id, int(record["seed"])))
    return jobs
