"""Batched generation across callers: concurrent requests to one SDXL tool become one call.

:class:`BatchingGenerator` wraps an SDXL tool (:class:`~mcu_sim.tools.face.FaceGenerator`,
:class:`~mcu_sim.tools.photomaker.PhotoMakerGenerator`) and has its ``generate`` interface.
Requests from different episodes that arrive within ``window_s`` of the first one of their
group, or until ``max_batch`` have queued, are grouped by their key (size and steps: one
wrapper per tool, so per pipeline) and rendered by one ``generate_batch`` call, each with its
own seed's generator; every caller gets its own candidate back. The image actors of the Ray
backend use it, as they batch QA scoring (:class:`~mcu_sim.runner.ray_tools.BatchingScorer`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcu_sim.tools.sdxl import GenerationRequest

Waiting = tuple[GenerationRequest, asyncio.Future]


class BatchingGenerator:
    """Wraps an SDXL tool so that concurrent ``generate`` calls share pipeline calls."""

    def __init__(self, tool: Any, window_s: float = 0.02, max_batch: int = 8) -> None:
        if not 0.0 <= window_s <= 1.0:
            raise ValueError(f"window_s must be within 0..1 s, not {window_s}")
        if not 1 <= max_batch <= 64:
            raise ValueError(f"max_batch must be within 1..64, not {max_batch}")
        self.tool = tool
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches: list[int] = []  # requests per pipeline call, for benchmarks and tests
        self._queues: dict[tuple[int, int, int], list[Waiting]] = {}
        self._flushers: dict[tuple[int, int, int], asyncio.Task] = {}
        self._running: set[asyncio.Future] = set()

    def __getattr__(self, name: str) -> Any:  # available(), load(), pipe … of the tool
        return getattr(self.tool, name)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The tool's ``generate`` (same arguments), batched with concurrent callers."""
        return await self.submit(self.tool.request(*args, **kwargs))

    async def submit(self, request: GenerationRequest) -> Any:
        """The candidate of one checked request (``tool.request(...)``)."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(request.key, [])
        queue.append((request, future))
        if len(queue) >= self.max_batch:
            self._flush_now(request.key)
        elif request.key not in self._flushers:
            self._flushers[request.key] = asyncio.create_task(self._flush_later(request.key))
        return await future

    async def _flush_later(self, key: tuple[int, int, int]) -> None:
        await asyncio.sleep(self.window_s)
        self._flushers.pop(key, None)
        self._flush_now(key)

    def _flush_now(self, key: tuple[int, int, int]) -> None:
        flusher = self._flushers.pop(key, None)
        if flusher is not None and flusher is not asyncio.current_task():
            flusher.cancel()
        batch = self._queues.pop(key, [])
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # keep a reference until it is done
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[Waiting]) -> None:
        self.batches.append(len(batch))
        try:
            found = await self.tool.generate_batch([request for request, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exception=exc)
                return
            # one bad request (or memory for the whole batch) must not fail the others:
            # each is retried alone, as it would have run unbatched
            for waiting in batch:
                await self._run([waiting])
            return
        for (_, future), candidate in zip(batch, found, strict=True):
            _settle(future, result=candidate)


def _settle(
    future: asyncio.Future, result: Any = None, exception: BaseException | None = None
) -> None:
    if future.done():  # the caller went away
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
