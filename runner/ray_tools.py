"""Image tools served by Ray actors (``mcu run --backend ray``).

Each image tool actor (one per GPU, or one CPU actor) runs an :class:`ImageToolService`:
one :class:`~mcu_sim.tools.toolbox.ImageToolbox`, so models load once per device and every
episode shares them, with QA scoring batched across episodes (:class:`BatchingScorer`) and
so is SDXL and PhotoMaker generation (:class:`~mcu_sim.tools.batching.BatchingGenerator`,
``images.batching``).
Episode tasks reach the actors through :class:`RemoteToolbox`, which has the toolbox
interface the aligner uses.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any


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
        self.toolbox = ImageToolbox(self.settings, batch_generation=True)

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
        self.toolbox = ImageToolbox(
            self.settings, tools=self.toolbox.tools(), scorers=batched, batch_generation=True
        )
        self._wrapped = True

    def batch_sizes(self) -> dict[str, list[int]]:
        scorers = self.toolbox.scorers() if getattr(self, "_wrapped", False) else {}
        return {name: list(s.batches) for name, s in scorers.items()}

    def generation_batches(self) -> dict[str, list[int]]:
        """Requests per SDXL / PhotoMaker pipeline call, by module."""
        return self.toolbox.generation_batches()

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
