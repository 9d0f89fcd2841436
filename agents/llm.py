"""The provider layer: one async ``complete`` over several wire protocols.

Adapters (``openai_compatible``, ``azure_openai``, ``llamacpp``) only move messages and
text. Everything else is shared and lives in :class:`LLMClient`: structured output with
pydantic validation and bounded repair turns, retries with backoff that honour
``Retry-After``, a concurrency cap and optional requests-per-minute limit, usage and cost
accounting, and a content-addressed SQLite cache.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from mcu_sim.agents.cache import ResponseCache, cache_key
from mcu_sim.config import LLMConfig, ProviderConfig, StepSettings

Message = dict[str, str]
T = TypeVar("T", bound=BaseModel)


class LLMError(RuntimeError):
    """Base class of errors from the provider layer."""


class LLMOutputError(LLMError):
    """The model never produced a valid answer; ``raw_text`` keeps its last attempt."""

    def __init__(self, message: str, raw_text: str, attempts: int) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.attempts = attempts


class LLMTransportError(LLMError):
    """The endpoint kept failing after the bounded retries."""


@dataclass
class Usage:
    """Token and cost counts; add them up per node, episode or run with ``+``."""

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.calls + other.calls,
            self.cached_calls + other.cached_calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 8),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: data.get(k, 0) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    """What ``complete`` returns: the validated object (or text) and what it cost."""

    value: Any
    text: str
    usage: Usage
    cached: bool = False
    repairs: int = 0


@dataclass
class RawReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class Request:
    messages: list[Message]
    settings: StepSettings
    json_schema: dict[str, Any] | None
    schema_name: str
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    """A wire protocol. It sends one request and returns the text; no retries here."""

    name: str

    async def send(self, request: Request) -> RawReply: ...

    def identity(self) -> dict[str, Any]:
        """What distinguishes this endpoint in cache keys (never the API key)."""
        ...


# ----------------------------------------------------------------- retry policy


def _status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(exc, "status", None)


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection errors are worth another try; nothing else."""
    import openai

    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    status = _status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` / ``retry-after-ms``)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class RetryAfterWait:
    """tenacity wait: the server's Retry-After when given, else exponential with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.fallback = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self.maximum = maximum

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc) if exc else None
        if asked is not None:
            return min(max(asked, 0.0), self.maximum)
        return self.fallback(retry_state)


class RateLimiter:
    """Spaces request starts so that at most ``rpm`` begin per minute."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


# ----------------------------------------------------------------- structured output

JSON_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """Parse JSON from a reply that may wrap it in prose or a code fence. Never ``eval``."""
    stripped = text.strip()
    candidates = [stripped]
    candidates += [m.group(1).strip() for m in JSON_BLOCK.finditer(text)]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            candidates.append(stripped[start : end + 1])
    last_error: json.JSONDecodeError | None = None
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError as exc:
            last_error = exc
    raise ValueError(f"no JSON object found ({last_error})")


def schema_instructions(schema: dict[str, Any]) -> str:
    return (
        "Answer with one JSON object only, no prose, that validates against this JSON schema:\n"
        + json.dumps(schema, separators=(",", ":"))
    )


def repair_message(error: str) -> Message:
    return {
        "role": "user",
        "content": (
            "Your answer could not be used: "
            + error[:1500]
            + "\nReply again with the corrected JSON object only."
        ),
    }


def describe_validation_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        ]
        return "; ".join(parts[:12])
    return str(exc)


# ----------------------------------------------------------------- the client


class LLMClient:
    """Provider-agnostic completion with validation, repair, retries, limits, cache, cost."""

    def __init__(
        self,
        config: LLMConfig,
        adapter: Adapter,
        cache: ResponseCache | None = None,
        retry_initial_s: float = 1.0,
        retry_max_wait_s: float = 60.0,
    ) -> None:
        self.config = config
        self.provider: ProviderConfig = config.provider
        self.adapter = adapter
        self.cache = cache
        self.semaphore = asyncio.Semaphore(self.provider.max_concurrency)
        self.rate_limiter = RateLimiter(self.provider.requests_per_minute)
        self.retry_initial_s = retry_initial_s
        self.retry_max_wait_s = retry_max_wait_s
        self.usage = Usage()
        self.network_calls = 0

    # -- public API
    async def complete(
        self,
        messages: list[Message],
        schema: type[T] | None = None,
        settings: StepSettings | None = None,
        *,
        prompt_version: str = "",
        seed: int | None = None,
        use_cache: bool = True,
        validate: Any = None,
    ) -> Completion:
        """Send ``messages``; return the ``schema``-validated object (or the text) and usage.

        ``validate`` is an optional callable run on the parsed object; a ``ValueError`` it
        raises counts as a validation error and is fed back like any other.
        """
        settings = settings or StepSettings()
        json_schema = schema.model_json_schema() if schema else None
        request = Request(
            messages=list(messages),
            settings=settings,
            json_schema=json_schema,
            schema_name=schema.__name__ if schema else "",
            seed=seed if self.provider.supports_seed else None,
        )
        key = cache_key(
            self.adapter.identity(),
            settings.model_dump(),
            messages,
            json_schema,
            prompt_version,
            request.seed,
            self.provider.structured_output,
        )
        caching = use_cache and self.cache is not None and self.config.cache.enabled
        if caching:
            hit = self.cache.get(key)
            if hit is not None:
                usage = Usage(calls=1, cached_calls=1)
                value = self._parse(hit, schema, validate) if schema else hit
                return Completion(value, hit, usage, cached=True)
        completion = await self._complete_with_repairs(request, schema, validate)
        if caching:
            self.cache.put(key, completion.text)
        return completion

    # -- internals
    def _prepare(self, request: Request) -> Request:
        if request.json_schema is None or self.provider.structured_output == "json_schema":
            return request
        msgs = [dict(m) for m in request.messages]
        note = schema_instructions(request.json_schema)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = msgs[0]["content"] + "\n\n" + note
        else:
            msgs.insert(0, {"role": "system", "content": note})
        return Request(msgs, request.settings, request.json_schema, request.schema_name,
                       request.seed, request.extra)

    def _parse(self, text: str, schema: type[T] | None, validate: Any) -> Any:
        if schema is None:
            return text
        data = extract_json(text)
        value = schema.model_validate(data)
        if validate is not None:
            validate(value)
        return value

    async def _complete_with_repairs(
        self, request: Request, schema: type[T] | None, validate: Any
    ) -> Completion:
        request = self._prepare(request)
        total = Usage()
        messages = list(request.messages)
        text = ""
        for attempt in range(self.config.repair_turns + 1):
            turn = Request(messages, request.settings, request.json_schema,
                           request.schema_name, request.seed, request.extra)
            reply = await self._send_with_retries(turn)
            total = total + self._usage_of(reply, request.settings)
            text = reply.text
            try:
                value = self._parse(text, schema, validate)
            except (ValueError, ValidationError) as exc:
                error = describe_validation_error(exc)
                messages = [*messages, {"role": "assistant", "content": text},
                            repair_message(error)]
                last_error = error
                continue
            return Completion(value, text, total, repairs=attempt)
        raise LLMOutputError(
            f"{request.schema_name or 'answer'} still invalid after "
            f"{self.config.repair_turns} repair turn(s): {last_error}",
            raw_text=text,
            attempts=self.config.repair_turns + 1,
        )

    def _usage_of(self, reply: RawReply, settings: StepSettings) -> Usage:
        model = settings.model or self.provider.model
        price = self.provider.prices.get(model)
        cost = 0.0
        if price:
            cost = (reply.prompt_tokens * price.input + reply.completion_tokens * price.output)
            cost /= 1_000_000
        usage = Usage(1, 0, reply.prompt_tokens, reply.completion_tokens, cost)
        self.usage = self.usage + usage
        return usage

    async def _send_with_retries(self, request: Request) -> RawReply:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.provider.max_attempts)
            | stop_after_delay(self.provider.max_retry_seconds),
            wait=RetryAfterWait(self.retry_initial_s, self.retry_max_wait_s),
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.rate_limiter.wait()
                    async with self.semaphore:
                        self.network_calls += 1
                        return await self.adapter.send(request)
        except Exception as exc:
            if is_retryable(exc):
                raise LLMTransportError(
                    f"{self.adapter.name} failed after {self.provider.max_attempts} attempts "
                    f"or {self.provider.max_retry_seconds:.0f}s: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        raise LLMTransportError("retry loop ended without a reply")  # pragma: no cover

    async def aclose(self) -> None:
        close = getattr(self.adapter, "aclose", None)
        if close:
            await close()


def build_client(
    config: LLMConfig,
    environ: dict[str, str] | None = None,
    cache_path: str | None = None,
) -> LLMClient:
    """Make the client the config asks for. Imports the chosen adapter lazily."""
    from mcu_sim.agents import adapters

    adapter = adapters.make_adapter(config.provider, environ)
    cache = None
    if config.cache.enabled:
        cache = ResponseCache(cache_path or config.cache.path)
    return LLMClient(config, adapter, cache)
