"""Retry policy of the provider layer: which failures are worth another try, how long to
wait (the server's ``Retry-After`` first), and a requests-per-minute limiter."""

from __future__ import annotations

import asyncio
import email.utils
import sys
import threading
import time
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential_jitter

from mcu_sim.agents.llm.types import EndpointFault

RETRY_STATUSES = frozenset({408, 409, 429})


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """429, 408, 409, 5xx, timeouts, connection errors and unusable bodies; nothing else."""
    if isinstance(exc, EndpointFault):
        return True
    openai = sys.modules.get("openai")  # an openai error implies openai is imported
    if openai is not None and isinstance(exc, openai.APIConnectionError):
        return True  # includes APITimeoutError
    status = status_of(exc)
    return status is not None and (status in RETRY_STATUSES or status >= 500)


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``Retry-After`` seconds or
    HTTP date), or None."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(when.timestamp() - time.time(), 0.0)
    return None


class RetryAfterWait:
    """tenacity wait: the server's Retry-After when given, else exponential with jitter.

    A Retry-After is honoured in full (not capped): if it does not fit in the remaining
    retry budget, :class:`StopBeforeDeadline` ends the retries instead of retrying too early.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        self.fallback = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc) if exc else None
        return asked if asked is not None else self.fallback(retry_state)


@dataclass
class SendClock:
    """When a request's first attempt left the queue (its concurrency slot and rate-limit
    turn taken): where its retry time budget starts."""

    first_sent: float | None = None
    # (repeated characters, characters) of the request as first sent, see agents/llm/prefix
    prefix: tuple[int, int] = (0, 0)

    def started(self) -> float:
        return self.first_sent if self.first_sent is not None else time.monotonic()


class StopBeforeDeadline:
    """tenacity stop: no retry whose wait would end ``max_seconds`` after the first attempt
    was sent (``stop_before_delay``, but not counting the time the first attempt queued for
    a concurrency slot or the rate limit, which at saturation can exceed the whole budget)."""

    def __init__(self, clock: SendClock, max_seconds: float) -> None:
        self.clock = clock
        self.max_seconds = max_seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        deadline = self.clock.started() + self.max_seconds
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= deadline


class RateLimiter:
    """Spaces request starts so that at most ``rpm`` begin per minute (any event loop)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()  # held only for arithmetic, never across an await

    async def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)
