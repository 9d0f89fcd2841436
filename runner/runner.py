"""Batch runner: many episodes concurrently, durable checkpoints, resume, budget.

Each episode is a LangGraph thread (``thread_id`` = episode id) on a durable checkpointer:
SQLite in the run directory by default, Postgres when ``run.postgres_dsn_env`` names a
variable holding a connection string. A re-run of the same command continues unfinished
episodes from their last checkpoint and never redoes or duplicates a finished one (its
episode file is the record); a changed config fingerprint is refused unless forced.
``max_in_flight=1`` is the sequential path for debugging;
:mod:`mcu_sim.runner.ray_backend` runs the same jobs on Ray, and
:func:`mcu_sim.runner.backends.make_runner` picks one from the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcu_sim.agents.llm.client import LLMClient, Usage, build_client
from mcu_sim.config import Config
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.runner.checkpoints import (
    checkpointer_for,
    forget_finished,
    postgres_dsn,
    thread_id_for,
)
from mcu_sim.runner.drive import (
    STORE_STEP,
    compile_graph,
    drive_episode,
    failure_record,
    next_nodes,
)
from mcu_sim.runner.episode_store import EpisodeWriter
from mcu_sim.runner.jobs import (  # noqa: F401 - re-exported
    EpisodeJob,
    RunReport,
    failed_jobs,
    is_planned,
    manifest_jobs,
    plan_jobs,
    unique_jobs,
)
from mcu_sim.runner.manifest import (  # noqa: F401 - re-exported
    FingerprintMismatch,
    RunLocked,
    episode_id_for,
    finish_manifest,
    run_lock,
    start_manifest,
)
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.scrub import Scrubber, scrubbed_logging
from mcu_sim.runner.shards import ShardWriter
from mcu_sim.runner.write_errors import RunStorageError, storage_error, storage_failure

EventHandler = Callable[[str, dict[str, Any]], None]
_NO_TOOLS = object()  # images disabled: distinct from "not built yet"


class BudgetExceeded(RuntimeError):
    """Kept for callers that catch it; the runner itself stops cleanly instead of raising."""


class EpisodeRunner:
    """Runs episode jobs into one run directory (asyncio, ``max_in_flight`` at a time)."""

    backend = "local"

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
        on_event: EventHandler | None = None,
        graph_factory: Callable[[], Any] | None = None,
        shard_size: int | None = None,
    ) -> None:
        self.config = config
        self.run = RunDir(out_dir)
        self.llm = llm
        self._owns_llm = llm is None
        self._tools = tools
        self.use_cache = use_cache
        self.max_in_flight = max_in_flight or config.run.max_in_flight
        self.max_cost = max_cost
        self.on_event = on_event or (lambda kind, data: None)
        self.graph_factory = graph_factory
        self.shard_size = shard_size or getattr(config.run, "shard_size", 1000)
        self.executions: Counter = Counter()
        self.run_id = ""
        self.fingerprint: str | None = None
        self.shards: ShardWriter | None = None
        self.episodes: EpisodeWriter | None = None
        self._budget_hit = asyncio.Event()
        self._usage_start = Usage()
        self.scrubber = Scrubber.for_config(config)
        self._storage_error: BaseException | None = None  # the first write that failed

    # -------------------------------------------------------------- accounting
    @property
    def tools(self) -> Any:
        """The injected toolbox, else one built from ``config.images`` on first use."""
        if self._tools is None:
            self._tools = _NO_TOOLS if (box := build_toolbox(self.config)) is None else box
        return None if self._tools is _NO_TOOLS else self._tools

    @property
    def usage(self) -> Usage:
        """LLM usage of this invocation so far (what the budget is checked against)."""
        if self.llm is None:
            return Usage()
        return self.llm.usage - self._usage_start

    def _emit(self, kind: str, **data: Any) -> None:
        self.on_event(kind, data)

    def _client(self) -> LLMClient:
        if self.llm is None:
            self.llm = build_client(
                self.config.llm,
                cache_path=self.config.llm.cache.path,
                secrets=self.scrubber.secrets,
            )
        return self.llm

    def _over_budget(self) -> bool:
        if self.max_cost is not None and self.usage.cost_usd >= self.max_cost:
            if not self._budget_hit.is_set():
                self._emit("budget", cost_usd=self.usage.cost_usd, max_cost=self.max_cost)
            self._budget_hit.set()
        return self._budget_hit.is_set()

    def _should_stop(self) -> bool:
        """Start no new episode (and stop those in flight after their step): the budget
        is spent, or the run folder cannot be written."""
        return self._storage_error is not None or self._over_budget()

    def _storage_trouble(self, exc: BaseException) -> bool:
        """Whether ``exc`` comes from storage that cannot be written (then the run stops)."""
        error = storage_failure(exc)
        if error is None:
            return False
        if self._storage_error is None:
            self._storage_error = error
            self._emit("storage", error=self.scrubber.text(f"{type(error).__name__}: {error}"))
        return True

    # -------------------------------------------------------------- the run
    async def run_jobs(self, jobs: list[EpisodeJob], force_config: bool = False) -> RunReport:
        """Run ``jobs``; skip finished ones, resume unfinished ones; never raise for one
        episode's failure (it is recorded in ``failures/``). Raises
        :class:`~mcu_sim.runner.write_errors.RunStorageError` when the run folder (or
        another file the run writes) cannot be written: the run stops, keeping every
        finished episode, and a re-run resumes it. Log records are masked meanwhile."""
        self._storage_error = None
        try:
            with scrubbed_logging(self.scrubber):
                self.run.create()
                with run_lock(self.run):
                    return await self._run_locked(jobs, force_config)
        except Exception as exc:
            error = self._storage_error or storage_failure(exc)
            if error is None or isinstance(exc, RunStorageError):
                raise
            command = f"mcu run --resume {self.run.root}"
            raise storage_error(error, self.run.root, command) from exc

    async def _run_locked(self, jobs: list[EpisodeJob], force_config: bool) -> RunReport:
        report = RunReport(backend=self.backend)
        start = time.monotonic()
        self._budget_hit.clear()
        jobs = unique_jobs(jobs)
        seeds = [job.seed for job in jobs if is_planned(job)]  # forks are listed apart
        manifest = start_manifest(self.run, self.config, seeds, force_config, self.backend)
        self.run_id = manifest["run_id"]
        self.fingerprint = manifest["config_fingerprint"]
        self.shards = ShardWriter(self.run, self.shard_size)
        self.episodes = EpisodeWriter(self.run, self.shards, self.scrubber)
        await asyncio.to_thread(self._prepare_files)
        todo = []
        for job in jobs:
            if self.run.is_finished(job.episode_id):
                report.skipped.append(job.episode_id)
            else:
                todo.append(job)
        self._emit("plan", total=len(jobs), skipped=len(report.skipped), todo=len(todo))
        self._usage_start = self.llm.usage if self.llm is not None else Usage()
        try:
            await self._execute(todo, report)
        except (asyncio.CancelledError, KeyboardInterrupt):
            report.interrupted = True
            raise
        finally:
            report.usage = self.usage
            report.seconds = time.monotonic() - start
            report.executions = self.executions
            report.stopped_for_budget = self._budget_hit.is_set()
            try:
                await asyncio.to_thread(self._close_files, manifest, report)
            except Exception as exc:
                if not self._storage_trouble(exc):
                    raise
            finally:
                if self._owns_llm and self.llm is not None:
                    await self.llm.aclose()
        if self._storage_error is not None:
            raise self._storage_error
        return report

    def _prepare_files(self) -> None:
        self.run.sync_index()
        assert self.shards is not None
        self.shards.load()

    def _close_files(self, manifest: dict[str, Any], report: RunReport) -> None:
        assert self.shards is not None
        self.shards.flush()
        if not report.interrupted and self._storage_error is None:  # done on resume
            report.run_removals = self._apply_run_rules()
        shards = len(self.run.shard_state().get("shards", []))
        finish_manifest(self.run, manifest, report, shards)

    def _apply_run_rules(self) -> dict[str, int]:
        """The run-level filter (DialogCC's over-matched database images) over every
        finished episode; rewritten episodes reach the shards through an atomic rebuild."""
        from mcu_sim.dataset.filter_run import apply_run_rules
        from mcu_sim.graphs.quality import filter_settings

        return apply_run_rules(self.run, filter_settings(self.config), self.shard_size)

    async def _execute(self, jobs: list[EpisodeJob], report: RunReport) -> None:
        """Local backend: one event loop, ``max_in_flight`` episodes at a time."""
        self._client()
        async with checkpointer_for(self.config, self.run.checkpoints) as saver:
            graph = compile_graph(saver, self.graph_factory, self.config)
            shared = postgres_dsn(self.config) is not None

            async def one(job: EpisodeJob) -> None:
                thread = thread_id_for(self.run_id, job.episode_id, shared)
                await self._run_one(graph, job, report, thread)

            await run_bounded(jobs, one, self.max_in_flight, self._should_stop)

    async def _run_one(
        self, graph: Any, job: EpisodeJob, report: RunReport, thread_id: str
    ) -> None:
        context = EpisodeContext(
            config=self.config,
            llm=self._client(),
            run_dir=self.run.root,
            tools=self.tools,
            use_cache=self.use_cache,
            executions=self.executions,
            config_fingerprint=self.fingerprint,
        )
        self._emit("start", episode_id=job.episode_id)
        try:
            episode = await drive_episode(
                graph,
                job,
                context,
                thread_id,
                on_node=lambda node: self._emit("node", episode_id=job.episode_id, node=node),
                should_stop=self._should_stop,
                durability=self.config.run.durability,
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._emit("stopped", episode_id=job.episode_id)
            raise
        except Exception as exc:  # one bad episode never stops the run; a full disk does
            if self._storage_trouble(exc):
                self._emit("stopped", episode_id=job.episode_id)
                return
            await self.store_failure(job, exc, await next_nodes(graph, thread_id), report)
            return
        if episode is None:
            self._emit("stopped", episode_id=job.episode_id)
            return
        if await self.store_episode(job, episode, report):
            await forget_finished(graph.checkpointer, thread_id, self.config)

    async def store_episode(
        self, job: EpisodeJob, episode: dict[str, Any], report: RunReport
    ) -> bool:
        """Write the episode file, its index line and (when full) its shard; whether it was
        written. A write that fails (disk full, a bad path) is that episode's failure, not
        the run's: the graph is finished and its checkpoints stay, so ``retry-failed`` only
        writes it again."""
        try:
            assert self.episodes is not None
            shards = await self.episodes.write(episode)
        except Exception as exc:
            if self._storage_trouble(exc):  # its checkpoints stay: a re-run writes it
                self._emit("stopped", episode_id=job.episode_id)
                return False
            await self.store_failure(job, exc, [STORE_STEP], report)
            return False
        report.finished.append(episode["episode_id"])
        self._emit("done", episode_id=episode["episode_id"])
        for path in shards:
            self._emit("shard", path=str(path))
        return True

    async def store_failure(
        self, job: EpisodeJob, exc: BaseException, failed_at: list[str], report: RunReport
    ) -> None:
        await self.save_failure(job, failure_record(job, exc, failed_at, self.scrubber), report)

    async def save_failure(
        self, job: EpisodeJob, record: dict[str, Any], report: RunReport
    ) -> None:
        """Store a failure record (masked, ``attempts`` counted on from an older record)."""
        record = self.scrubber.data(record)
        path = self.run.failure_path(job.episode_id)
        if path.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError):  # an unreadable one
                record["attempts"] = int(self.run.read_failure(job.episode_id)["attempts"]) + 1
        try:
            await asyncio.to_thread(self.run.write_failure, job.episode_id, record)
        except Exception as exc:
            if self._storage_trouble(exc):
                return  # no room for the record: the episode is retried on resume anyway
            raise
        report.failed[job.episode_id] = f"{record['error_type']}: {record['reason']}"
        self._emit("failed", episode_id=job.episode_id, error=report.failed[job.episode_id])


async def run_bounded(
    jobs: list[EpisodeJob],
    run_one: Callable[[EpisodeJob], Awaitable[None]],
    limit: int,
    stop: Callable[[], bool],
) -> None:
    """Run ``run_one`` over ``jobs`` with at most ``limit`` at once; start no new job once
    ``stop()`` is true. Cancelling the caller cancels every job in flight."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue and not stop():
            await run_one(queue.pop())

    workers = [asyncio.create_task(worker()) for _ in range(min(limit, max(len(jobs), 1)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def build_toolbox(config: Config) -> Any:
    """The image toolbox from ``config.images`` (None when images are disabled)."""
    from mcu_sim.tools.settings import ImagesConfig
    from mcu_sim.tools.toolbox import ImageToolbox

    settings = ImagesConfig.model_validate(config.images)
    return ImageToolbox(settings) if settings.enabled else None
