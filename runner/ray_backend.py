"""Ray backend: episodes as Ray tasks, image tools as Ray actors, same runner guarantees.

Who does what:

- The **driver** (:class:`RayEpisodeRunner`, the ``mcu run --backend ray`` process) holds
  the run lock and is the only writer of run files: manifest, episode files, shards, index
  and failure records. It submits at most ``max_in_flight`` tasks and writes each result as
  it arrives, exactly like the local runner.
- Each **task** runs one episode (or resumes it) in a worker process, with the LLM client
  (the response cache is a shared SQLite file in WAL mode), the same checkpointer as the
  local backend and the same :func:`~mcu_sim.runner.drive.drive_episode`; the worker keeps
  client, checkpointer, graph and event loop for its next task
  (:mod:`~mcu_sim.runner.ray_worker`). It returns the episode, or a failure record; it
  writes only checkpoints and images. With ``run.keep_checkpoints: last`` the driver
  deletes a finished episode's thread once it has written the episode file.
- A **monitor** actor adds up every task's usage after each step: it feeds the live display
  and stops every task cleanly (after its current step) once ``max_cost`` is reached.
- **Image tool actors** (one per GPU, or one CPU actor) each own an
  :class:`~mcu_sim.tools.toolbox.ImageToolbox`, so models load once per device and every
  episode shares them (:mod:`~mcu_sim.runner.ray_tools`).

Resume holds as in the local backend: a checkpoint per finished step, a finished episode
never rerun. On one machine the SQLite checkpointer in the run directory is shared by the
worker processes (WAL, busy timeout). On several machines set ``run.postgres_dsn_env``
(every node needs that variable) and put the run directory on a shared file system (tasks
write images there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any

from mcu_sim.agents.llm.client import Usage
from mcu_sim.config import Config
from mcu_sim.runner.checkpoints import (
    checkpointer_for,
    forget_finished,
    postgres_dsn,
    thread_id_for,
)
from mcu_sim.runner.jobs import EpisodeJob, RunReport
from mcu_sim.runner.ray_tools import ImageToolService
from mcu_sim.runner.ray_worker import EpisodeActor, run_episode_task, session_key
from mcu_sim.runner.runner import EpisodeRunner

TASK_CPUS = 0.5  # an episode mostly waits on the LLM endpoint
MONITOR_EVERY_S = 0.5


class RunMonitor:
    """Usage of every task, summed as steps finish; says stop once the budget is spent."""

    def __init__(self, max_cost: float | None) -> None:
        self.max_cost = max_cost
        self.usage = Usage()
        self.steps = 0
        self.stopped = False

    def report(self, usage: dict[str, Any], steps: int) -> bool:
        self.usage = self.usage + Usage.from_dict(usage)
        self.steps += steps
        if self.max_cost is not None and self.usage.cost_usd >= self.max_cost:
            self.stopped = True
        return self.stopped

    def stop(self) -> None:
        self.stopped = True

    def totals(self) -> dict[str, Any]:
        return {"usage": self.usage.as_dict(), "steps": self.steps, "stopped": self.stopped}


# ---------------------------------------------------------------- the driver


@functools.cache
def _remote(kind: str) -> Any:
    """The Ray-wrapped task and actor classes (made once, when Ray is first needed)."""
    import ray

    if kind == "task":
        return ray.remote(max_retries=0)(run_episode_task)
    if kind == "monitor":
        return ray.remote(num_cpus=0)(RunMonitor)
    if kind == "episodes":
        return ray.remote(max_restarts=0)(EpisodeActor)
    return ray.remote(ImageToolService)


class RayEpisodeRunner(EpisodeRunner):
    """:class:`~mcu_sim.runner.runner.EpisodeRunner` with episodes run as Ray tasks.

    ``address`` is a Ray cluster (``ray://…`` or ``auto``); None starts a local Ray (or
    uses the one already initialised in this process). ``task_cpus`` is the CPU share Ray
    reserves per episode task (or per episode actor). ``episode_actors``: how many
    :class:`~mcu_sim.runner.ray_worker.EpisodeActor` run the episodes, each with many in
    flight (``None``: one per CPU of the cluster); ``0`` runs one task per episode instead.
    """

    backend = "ray"

    def __init__(
        self,
        config: Config,
        out_dir: str | Path,
        *,
        address: str | None = None,
        task_cpus: float = TASK_CPUS,
        episode_actors: int | None = None,
        **options: Any,
    ) -> None:
        if options.get("llm") is not None or options.get("graph_factory") is not None:
            raise ValueError(
                "the Ray backend builds its LLM client and graph inside each task from the "
                "config; pass neither llm= nor graph_factory="
            )
        if options.get("tools") is not None:
            raise ValueError("the Ray backend serves image tools from actors; omit tools=")
        super().__init__(config, out_dir, **options)
        self.address = address
        self.task_cpus = task_cpus
        self.episode_actors = episode_actors
        self.started = {"tasks": 0, "actors": 0}  # what the run asked Ray for (benchmarks)
        self._usage = Usage()
        self.tool_actors: list[Any] = []
        self.qa_batches: dict[str, list[int]] = {}  # scorer -> images per model call
        self.generation_batches: dict[str, list[int]] = {}  # module -> requests per call
        self._saver: Any = None  # the driver's, to delete finished threads (keep: last)

    @property
    def usage(self) -> Usage:
        return self._usage

    def _over_budget(self) -> bool:
        if self.max_cost is not None and self._usage.cost_usd >= self.max_cost:
            self._budget_hit.set()
        return self._budget_hit.is_set()

    async def _execute(self, jobs: list[EpisodeJob], report: RunReport) -> None:
        import ray

        started_ray = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            started_ray = True
        try:
            async with self._thread_cleaner():
                await self._execute_on_ray(jobs, report)
        finally:
            self.qa_batches = self._collect_batch_sizes("batch_sizes")
            self.generation_batches = self._collect_batch_sizes("generation_batches")
            for actor in self.tool_actors:
                ray.kill(actor)
            self.tool_actors = []
            if started_ray:
                ray.shutdown()

    @contextlib.asynccontextmanager
    async def _thread_cleaner(self) -> Any:
        """With ``run.keep_checkpoints: last``, the run's checkpointer opened in the driver
        for the time of the run, to delete each finished episode's thread."""
        if self.config.run.keep_checkpoints != "last":
            yield
            return
        async with checkpointer_for(self.config, self.run.checkpoints) as saver:
            self._saver = saver
            try:
                yield
            finally:
                self._saver = None

    def _collect_batch_sizes(self, method: str) -> dict[str, list[int]]:
        """Batch sizes over every tool actor (for benchmarks): ``batch_sizes`` gives images
        per QA model call by scorer, ``generation_batches`` requests per SDXL / PhotoMaker
        pipeline call by module."""
        import ray

        sizes: dict[str, list[int]] = {}
        for actor in self.tool_actors:
            try:
                served = ray.get(getattr(actor, method).remote(), timeout=30)
            except Exception:  # a dead actor: its figures are lost, the run is not
                continue
            for name, batches in served.items():
                sizes.setdefault(name, []).extend(batches)
        return sizes

    def _start_tool_actors(self) -> tuple[list[Any], dict[str, Any] | None]:
        import ray

        from mcu_sim.tools.settings import ImagesConfig

        settings = ImagesConfig.model_validate(self.config.images)
        if not settings.enabled:
            return [], None
        gpus = int(ray.cluster_resources().get("GPU", 0))
        images = settings.model_dump(mode="json")
        if gpus:
            images["device"] = "cuda"
            cls = _remote("tools").options(num_gpus=1, num_cpus=1, max_concurrency=64)
        else:
            cls = _remote("tools").options(num_cpus=0, max_concurrency=64)
        self.tool_actors = [cls.remote(images) for _ in range(max(gpus, 1))]
        self.started["actors"] += len(self.tool_actors)
        return self.tool_actors, ray.get(self.tool_actors[0].describe.remote())

    async def _execute_on_ray(self, jobs: list[EpisodeJob], report: RunReport) -> None:
        monitor = _remote("monitor").remote(self.max_cost)
        actors, info = self._start_tool_actors()
        shared = postgres_dsn(self.config) is not None
        config_dump, run_root = self.config.model_dump(mode="json"), str(self.run.root.resolve())
        base = {
            "config": config_dump,
            "run_root": run_root,
            "session_key": session_key(config_dump, run_root),  # hashed once, not per task
            "use_cache": self.use_cache,
            "monitor": monitor,
            "tool_actors": actors,
            "tool_info": info,
        }
        submit, release, workers = self._submitter()
        queue = list(reversed(jobs))
        pending: dict[asyncio.Future, EpisodeJob] = {}
        refs: dict[asyncio.Future, Any] = {}
        told_to_stop = False
        try:
            while queue or pending:
                while queue and len(pending) < self.max_in_flight and not self._should_stop():
                    job = queue.pop()
                    thread = thread_id_for(self.run_id, job.episode_id, shared)
                    payload = {**base, "job": [job.episode_id, job.seed], "thread_id": thread}
                    ref = submit(payload)
                    future = asyncio.wrap_future(ref.future())
                    pending[future], refs[future] = job, ref
                    self._emit("start", episode_id=job.episode_id)
                if not pending:
                    break
                done, _ = await asyncio.wait(
                    pending, timeout=MONITOR_EVERY_S, return_when=asyncio.FIRST_COMPLETED
                )
                await self._poll_monitor(monitor)
                for future in done:
                    job = pending.pop(future)
                    release(refs.pop(future))
                    await self._collect(job, future, report)
                if self._storage_error is not None and not told_to_stop:
                    # the episodes in flight stop after their step, as for the budget
                    await asyncio.wrap_future(monitor.stop.remote().future())
                    told_to_stop = True
        except (asyncio.CancelledError, KeyboardInterrupt):
            import ray

            for ref in refs.values():  # each stops at once; its checkpoints stay
                ray.cancel(ref)
            raise
        finally:
            await self._poll_monitor(monitor)
            await self._stop_workers(workers)

    def _submitter(self) -> tuple[Any, Any, list[Any]]:
        """How an episode is submitted: to the episode actor with the fewest in flight, or
        as a task of its own (``episode_actors=0``); how its end is told (``release``);
        and the actors started for it."""
        import ray

        count = self.episode_actors
        if count is None:
            count = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if count == 0:
            task = _remote("task").options(num_cpus=self.task_cpus)

            def as_task(payload: dict[str, Any]) -> Any:
                self.started["tasks"] += 1
                return task.remote(payload)

            return as_task, lambda ref: None, []
        cls = _remote("episodes").options(
            num_cpus=self.task_cpus, max_concurrency=max(1, self.max_in_flight)
        )
        actors = [cls.remote() for _ in range(count)]
        self.started["actors"] += count
        load = [0] * count
        actor_of: dict[Any, int] = {}

        def to_actor(payload: dict[str, Any]) -> Any:
            pick = min(range(count), key=load.__getitem__)
            load[pick] += 1
            self.started["tasks"] += 1
            ref = actors[pick].run.remote(payload)
            actor_of[ref] = pick
            return ref

        def release(ref: Any) -> None:
            load[actor_of.pop(ref)] -= 1

        return to_actor, release, actors

    async def _stop_workers(self, actors: list[Any]) -> None:
        """Close each episode actor's checkpointer and client, then end it."""
        import ray

        for actor in actors:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(actor.close.remote().future()), 30)
            ray.kill(actor)

    async def _poll_monitor(self, monitor: Any) -> None:
        totals = await monitor.totals.remote()
        self._usage = Usage.from_dict(totals["usage"])
        if totals["stopped"] and self._storage_error is None and not self._budget_hit.is_set():
            self._emit("budget", cost_usd=self._usage.cost_usd, max_cost=self.max_cost)
            self._budget_hit.set()

    async def _collect(self, job: EpisodeJob, future: asyncio.Future, report: RunReport) -> None:
        try:
            result = future.result()
        except Exception as exc:  # the worker died or the task could not run
            await self.store_failure(job, exc, [], report)
            return
        self.executions.update(result.get("executions", {}))
        if "episode" in result:
            stored = await self.store_episode(job, result["episode"], report)
            if stored and self._saver is not None:
                shared = postgres_dsn(self.config) is not None
                thread = thread_id_for(self.run_id, job.episode_id, shared)
                await forget_finished(self._saver, thread, self.config)
        elif "failure" in result:
            await self.save_failure(job, result["failure"], report)
        elif "storage" in result:  # its checkpoints stay: a re-run continues it
            self._storage_trouble(result["storage"])
            self._emit("stopped", episode_id=job.episode_id)
        else:
            self._emit("stopped", episode_id=job.episode_id)
