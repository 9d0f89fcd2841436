"""Ray backend: episodes as Ray tasks, image tools as Ray actors, same runner guarantees.

Who does what:

- The **driver** (:class:`RayEpisodeRunner`, the ``mcu run --backend ray`` process) holds
  the run lock and is the only writer of run files: manifest, episode files, shards, index
  and failure records. It submits at most ``max_in_flight`` tasks and writes each result as
  it arrives, exactly like the local runner.
- Each **task** runs one episode (or resumes it) in a worker process, with the LLM client
  (the response cache is a shared SQLite file in WAL mode), the same checkpointer as the
  local backend and the same :func:`~mcu_sim.runner.runner.drive_episode`; the worker keeps
  client, checkpointer, graph and event loop for its next task
  (:mod:`~mcu_sim.runner.ray_worker`). It returns the episode, or a failure record; it
  writes only checkpoints and images.
- A **monitor** actor adds up every task's usage after each step: it feeds the live display
  and stops every task cleanly (after its current step) once ``max_cost`` is reached.
- **Image tool actors** (one per GPU, or one CPU actor) each own an
  :class:`~mcu_sim.tools.toolbox.ImageToolbox`, so models load once per device and every
  episode shares them. Tasks reach them through :class:`RemoteToolbox`, which has the
  toolbox interface the aligner uses. QA scoring is batched across episodes: concurrent
  requests for a scorer are merged into one model call (:class:`BatchingScorer`).

Resume holds as in the local backend: a checkpoint per finished step, a finished episode
never rerun. On one machine the SQLite checkpointer in the run directory is shared by the
worker processes (WAL, busy timeout). On several machines set ``run.postgres_dsn_env``
(every node needs that variable) and put the run directory on a shared file system (tasks
write images there).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from mcu_sim.agents.llm.client import Usage
from mcu_sim.config import Config
from mcu_sim.runner.runner import (
    EpisodeJob,
    EpisodeRunner,
    RunReport,
    postgres_dsn,
    thread_id_for,
)

TASK_CPUS = 0.5  # an episode mostly waits on the LLM endpoint
MONITOR_EVERY_S = 0.5


# ---------------------------------------------------------------- inside a worker


def run_episode_task(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task (a plain function, so it can also be called directly).

    It runs on the worker's kept session (:mod:`mcu_sim.runner.ray_worker`: event loop of
    ``run.event_loop``, LLM client, checkpointer, compiled graph), with ``run.gc_tuning``
    for the task's length, as ``mcu run`` has for the run's."""
    from mcu_sim.runner.gc_tuning import tuned_gc
    from mcu_sim.runner.ray_worker import close_worker_session, worker_session

    session = worker_session(payload)
    try:
        with tuned_gc(session.config.run.gc_tuning):
            return session.run(_episode_in_worker(payload, session))
    except BaseException:
        close_worker_session()  # a broken loop or checkpointer is not kept for the next task
        raise


async def _episode_in_worker(payload: dict[str, Any], session: Any) -> dict[str, Any]:
    from mcu_sim.runner.checkpoints import prune_finished
    from mcu_sim.graphs.context import EpisodeContext
    from mcu_sim.runner.runner import drive_episode, failure_record, next_nodes
    from mcu_sim.runner.scrub import Scrubber

    config, llm, graph = session.config, session.llm, session.graph
    job = EpisodeJob(*payload["job"])
    executions: Counter = Counter()
    monitor = payload.get("monitor")
    actors = payload["tool_actors"]
    tools = RemoteToolbox(actors, payload["tool_info"]) if actors else None
    started = reported = llm.usage  # the client is the session's: count this task's share

    async def after_step(nodes: list[str]) -> bool:
        nonlocal reported
        if monitor is None:
            return False
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
        if episode is not None:  # the final checkpoint stays: safe before the driver writes
            await prune_finished(session.saver, payload["thread_id"], config)
    except Exception as exc:
        failed_at = await next_nodes(graph, payload["thread_id"])
        result = {"failure": failure_record(job, exc, failed_at, Scrubber.for_config(config))}
    await after_step([])
    result.update(usage=(llm.usage - started).as_dict(), executions=dict(executions))
    return result


def _drain(after_step: Any, pending: list[str]) -> Any:
    nodes = list(pending)
    pending.clear()
    return after_step(nodes)


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


# ---------------------------------------------------------------- image tools as actors


class BatchingScorer:
    """Wraps a QA scorer so concurrent ``score`` calls (from many episodes) become one call
    over all their images: the model runs on full batches instead of one request's two or
    three candidates. Requests arriving within ``window_s`` of the first are merged, up to
    ``max_images``."""

    def __init__(self, scorer: Any, window_s: float = 0.02, max_images: int = 64) -> None:
        self.scorer = scorer
        self.needs_texts = getattr(scorer, "needs_texts", False)
        self.name = getattr(scorer, "name", type(scorer).__name__)
        self.window_s = window_s
        self.max_images = max_images
        self.batches: list[int] = []  # images per model call, for benchmarks and tests
        self._queue: list[tuple[list[Any], list[str] | None, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._running: set[asyncio.Future] = set()

    def __getattr__(self, name: str) -> Any:  # thresholds, availability … of the scorer
        return getattr(self.scorer, name)

    async def score(self, images: list[Any], texts: list[str] | None = None) -> list[Any]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((list(images), list(texts) if texts is not None else None, future))
        if sum(len(item[0]) for item in self._queue) >= self.max_images:
            self._flush_now()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await future

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window_s)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # keep a reference until it is done
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[list[Any], list[str] | None, asyncio.Future]]) -> None:
        images = [image for item in batch for image in item[0]]
        with_texts = all(item[1] is not None for item in batch)
        texts = [t for item in batch for t in item[1] or []] if with_texts else None
        self.batches.append(len(images))
        try:
            scores = await self.scorer.score(images, texts)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for item_images, _, future in batch:
            if not future.done():
                future.set_result(scores[start : start + len(item_images)])
            start += len(item_images)


class ImageToolService:
    """The body of an image tool actor: one toolbox (models loaded once per device) shared
    by every episode, with QA scoring batched across episodes."""

    def __init__(self, images: dict[str, Any], batch_window_s: float = 0.02) -> None:
        from mcu_sim.tools.settings import ImagesConfig
        from mcu_sim.tools.toolbox import ImageToolbox

        self.settings = ImagesConfig.model_validate(images)
        self.batch_window_s = batch_window_s
        self.toolbox = ImageToolbox(self.settings)

    def describe(self) -> dict[str, Any]:
        modules = [*self.settings.router_order, "face"]
        return {
            "settings": self.settings.model_dump(mode="json"),
            "availability": {m: list(self.toolbox.availability(m)) for m in modules},
        }

    def _batched_scorers(self) -> None:
        if getattr(self, "_wrapped", False):
            return
        from mcu_sim.tools.qa import build_qa_scorers
        from mcu_sim.tools.toolbox import ImageToolbox

        scorers = build_qa_scorers(self.settings)
        batched = {n: BatchingScorer(s, self.batch_window_s) for n, s in scorers.items()}
        self.toolbox = ImageToolbox(self.settings, tools=self.toolbox._tools, scorers=batched)
        self._wrapped = True

    def batch_sizes(self) -> dict[str, list[int]]:
        scorers = self.toolbox.scorers() if getattr(self, "_wrapped", False) else {}
        return {name: list(s.batches) for name, s in scorers.items()}

    async def execute(self, module: str, description: str, **options: Any) -> list[dict]:
        return await self.toolbox.execute(module, description, **options)

    async def generate_face(self, face: dict[str, Any], episode_id: str, run_dir: Path) -> dict:
        return await self.toolbox.generate_face(face, episode_id, run_dir)

    async def judge_candidates(self, candidates: list[dict], description: str, run_dir: Path):
        self._batched_scorers()
        return await self.toolbox.judge_candidates(candidates, description, run_dir)

    def pairwise_similarity(self, paths: list[str]) -> Any:
        """DialogCC's image-image CLIP similarity, with the actor's CLIP scorer."""
        from mcu_sim.tools.base import ToolUnavailable

        similarity, why = self.toolbox.image_similarity()
        if similarity is None:
            raise ToolUnavailable("clip", why)
        return similarity([Path(p) for p in paths])


class RemoteToolbox:
    """The toolbox interface of :class:`~mcu_sim.tools.toolbox.ImageToolbox`, served by
    image tool actors. Availability is read once (``info``), calls go round-robin."""

    def __init__(self, actors: list[Any], info: dict[str, Any]) -> None:
        from mcu_sim.tools.settings import ImagesConfig

        self._actors = list(actors)
        self._next = itertools.count()
        self.settings = ImagesConfig.model_validate(info["settings"])
        self._availability = {m: tuple(v) for m, v in info["availability"].items()}

    def _actor(self) -> Any:
        return self._actors[next(self._next) % len(self._actors)]

    @property
    def router_order(self) -> list[str]:
        return list(self.settings.router_order)

    @property
    def qa_settings(self) -> Any:
        return self.settings.qa

    @property
    def face(self) -> Any:
        return True if self.availability("face")[0] else None

    def availability(self, module: str) -> tuple[bool, str]:
        return self._availability.get(module, (False, f"unknown image module {module!r}"))

    def disable(self, module: str, reason: str) -> None:
        self._availability[module] = (False, reason)

    async def execute(self, module: str, description: str, **options: Any) -> list[dict]:
        return await self._actor().execute.remote(module, description, **options)

    async def generate_face(self, face: dict[str, Any], episode_id: str, run_dir: Path) -> dict:
        return await self._actor().generate_face.remote(face, episode_id, run_dir)

    async def judge_candidates(self, candidates: list[dict], description: str, run_dir: Path):
        return await self._actor().judge_candidates.remote(candidates, description, run_dir)

    def image_similarity(self) -> tuple[Any, str]:
        """Pairwise image similarity served by an actor (the filters call it synchronously)."""
        if "clip" not in self.settings.qa.scorers or not self.settings.qa.enabled:
            return None, "no CLIP scorer among images.qa.scorers"

        def similarity(paths: list[Any]) -> Any:
            import ray

            return ray.get(self._actor().pairwise_similarity.remote([str(p) for p in paths]))

        return similarity, ""


# ---------------------------------------------------------------- the driver


@functools.cache
def _remote(kind: str) -> Any:
    """The Ray-wrapped task and actor classes (made once, when Ray is first needed)."""
    import ray

    if kind == "task":
        return ray.remote(max_retries=0)(run_episode_task)
    if kind == "monitor":
        return ray.remote(num_cpus=0)(RunMonitor)
    return ray.remote(ImageToolService)


class RayEpisodeRunner(EpisodeRunner):
    """:class:`~mcu_sim.runner.runner.EpisodeRunner` with episodes run as Ray tasks.

    ``address`` is a Ray cluster (``ray://…`` or ``auto``); None starts a local Ray (or
    uses the one already initialised in this process). ``task_cpus`` is the CPU share Ray
    reserves per episode task.
    """

    backend = "ray"

    def __init__(
        self,
        config: Config,
        out_dir: str | Path,
        *,
        address: str | None = None,
        task_cpus: float = TASK_CPUS,
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
        self._usage = Usage()
        self.tool_actors: list[Any] = []
        self.qa_batches: dict[str, list[int]] = {}  # scorer -> images per model call

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
            await self._execute_on_ray(jobs, report)
        finally:
            self.qa_batches = self._collect_batch_sizes()
            for actor in self.tool_actors:
                ray.kill(actor)
            self.tool_actors = []
            if started_ray:
                ray.shutdown()

    def _collect_batch_sizes(self) -> dict[str, list[int]]:
        """Images per QA model call, per scorer, over every tool actor (for benchmarks)."""
        import ray

        sizes: dict[str, list[int]] = {}
        for actor in self.tool_actors:
            try:
                served = ray.get(actor.batch_sizes.remote(), timeout=30)
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
        return self.tool_actors, ray.get(self.tool_actors[0].describe.remote())

    async def _execute_on_ray(self, jobs: list[EpisodeJob], report: RunReport) -> None:
        monitor = _remote("monitor").remote(self.max_cost)
        actors, info = self._start_tool_actors()
        shared = postgres_dsn(self.config) is not None
        from mcu_sim.runner.ray_worker import session_key

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
        task = _remote("task").options(num_cpus=self.task_cpus)
        queue = list(reversed(jobs))
        pending: dict[asyncio.Future, EpisodeJob] = {}
        refs: dict[asyncio.Future, Any] = {}
        try:
            while queue or pending:
                while queue and len(pending) < self.max_in_flight and not self._over_budget():
                    job = queue.pop()
                    thread = thread_id_for(self.run_id, job.episode_id, shared)
                    payload = {**base, "job": [job.episode_id, job.seed], "thread_id": thread}
                    ref = task.remote(payload)
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
                    refs.pop(future)
                    await self._collect(job, future, report)
        except (asyncio.CancelledError, KeyboardInterrupt):
            import ray

            for ref in refs.values():  # each stops at once; its checkpoints stay
                ray.cancel(ref)
            raise
        finally:
            await self._poll_monitor(monitor)

    async def _poll_monitor(self, monitor: Any) -> None:
        totals = await monitor.totals.remote()
        self._usage = Usage.from_dict(totals["usage"])
        if totals["stopped"] and not self._budget_hit.is_set():
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
            await self.store_episode(job, result["episode"], report)
        elif "failure" in result:
            await self.save_failure(job, result["failure"], report)
        else:
            self._emit("stopped", episode_id=job.episode_id)
