"""The provider layer: one async ``complete`` over several wire protocols.

Adapters (``openai_compatible``, ``azure_openai``, ``llamacpp``) only move messages and
text. Everything else is shared and lives in :class:`LLMClient`: structured output with
pydantic validation and bounded repair turns, retries with backoff that honour
``Retry-After``, a concurrency cap and optional requests-per-minute limit, usage and cost
accounting, and a content-addressed SQLite cache.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from mcu_sim.agents.llm.adapters import make_adapter
from mcu_sim.agents.llm.cache import Encoded, ResponseCache, cache_key, canonical_json
from mcu_sim.agents.llm.prefix import note_request
from mcu_sim.agents.llm.retry import (
    RateLimiter,
    RetryAfterWait,
    SendClock,
    StopBeforeDeadline,
    is_retryable,
    status_of,
)
from mcu_sim.agents.llm.structured import (
    describe_validation_error,
    extract_json,
    repair_message,
    schema_instructions,
)
from mcu_sim.agents.llm.types import (
    Adapter,
    Completion,
    EndpointFault,
    LLMError,
    LLMOutputError,
    LLMRequestError,
    LLMTransportError,
    Message,
    RawReply,
    Request,
    Rescue,
    Usage,
)
from mcu_sim.config import Config, LLMConfig, ProviderConfig, StepSettings
from mcu_sim.config_secrets import Scrubber, secret_values

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger("mcu_sim.llm")

# The vocabulary callers need with the client, importable from here.
__all__ = [
    "Completion",
    "EndpointFault",
    "LLMClient",
    "LLMError",
    "LLMOutputError",
    "LLMRequestError",
    "LLMTransportError",
    "Rescue",
    "Usage",
    "build_client",
    "json_schema_of",
]


@functools.lru_cache(maxsize=512)
def json_schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``schema``, built once per class (about a millisecond each time
    otherwise). Shared: callers must not mutate it."""
    return schema.model_json_schema()


@functools.lru_cache(maxsize=512)
def _schema_key_part(schema: type[BaseModel]) -> Encoded:
    """``schema``'s JSON schema as a cache-key part, encoded once per class."""
    return Encoded(canonical_json(json_schema_of(schema)))


# ----------------------------------------------------------------- the client


class LLMClient:
    """Provider-agnostic completion with validation, repair, retries, limits, cache, cost.

    One client may serve several event loops in turn (e.g. successive ``asyncio.run``
    calls): the concurrency semaphore is kept per loop.
    """

    def __init__(
        self,
        config: LLMConfig,
        adapter: Adapter,
        cache: ResponseCache | None = None,
        retry_initial_s: float = 1.0,
        retry_max_wait_s: float = 60.0,
        secrets: Iterable[str] = (),
    ) -> None:
        self.config = config
        # masked, beside the adapter's own, in errors, logs and cached answers: the run's
        # other secrets (:func:`mcu_sim.config_secrets.secret_values` of the whole config)
        self.scrubber = Scrubber(secrets)
        self.provider: ProviderConfig = config.provider
        self.adapter = adapter
        self.cache = cache
        self.rate_limiter = RateLimiter(self.provider.requests_per_minute)
        self.retry_initial_s = retry_initial_s
        self.retry_max_wait_s = retry_max_wait_s
        self.usage = Usage()
        self.network_calls = 0  # attempts sent, failed ones included
        self._semaphores: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"LLMClient(adapter={self.adapter!r}, cache={self.cache is not None})"

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
        validate: Callable[[Any], None] | None = None,
        rescue: Rescue | None = None,
        stop: list[str] | None = None,
        repair_turns: int | None = None,
    ) -> Completion:
        """Send ``messages``; return the ``schema``-validated object (or the text) and usage.

        ``validate`` is an optional callable run on the parsed object (on the text when there
        is no ``schema``); a ``ValueError`` it raises counts as a validation error and is fed
        back like any other. Only answers that pass validation are cached; a cached answer
        is validated again when read. ``stop`` lists stop sequences (plain-text requests of
        the stepwise strategy); ``repair_turns`` overrides ``llm.repair_turns`` for this call.

        ``rescue`` is the last resort once the repair turns are used up: called with the
        model's last text, it returns the object fixed by code and what it changed (or
        raises ``ValueError``, and the :class:`LLMOutputError` stands). The rescued object
        must pass ``schema`` and ``validate``; it is cached under this request's key like a
        valid answer, with its changes, so a re-run gets the same answer without a call.
        """
        settings = settings or StepSettings()
        json_schema = json_schema_of(schema) if schema else None
        request = Request(
            messages=list(messages),
            settings=settings,
            json_schema=json_schema,
            schema_name=schema.__name__ if schema else "",
            seed=seed if self.provider.supports_seed else None,
            stop=list(stop) if stop else None,
        )
        cache = self.cache if use_cache and self.config.cache.enabled else None
        key = ""
        if cache is not None:
            key = cache_key(
                self.adapter.identity(),
                settings.model_dump(),
                messages,
                _schema_key_part(schema) if schema else None,
                prompt_version,
                request.seed,
                self.provider.structured_output,
                *([{"stop": request.stop}] if request.stop else []),
            )
            entry = cache.get_entry(key)
            if entry is not None:
                hit, original = entry
                try:
                    value = self._parse(hit, schema, validate)
                except ValueError as exc:  # e.g. a stricter validator than when stored
                    log.warning("ignoring a cached answer that no longer validates: %s", exc)
                else:
                    # The run ledger records a free cache hit; the completion reports what the
                    # answer originally cost, so an episode's usage is the same on a re-run.
                    self.usage = self.usage + Usage(cached_calls=1)
                    usage = Usage.from_dict(original) if original else Usage(cached_calls=1)
                    fixed = list((original or {}).get("repairs_by_code") or [])
                    return Completion(value, hit, usage, cached=True, repairs_by_code=fixed)
        try:
            completion = await self._complete_with_repairs(
                request,
                schema,
                validate,
                self.config.repair_turns if repair_turns is None else repair_turns,
            )
        except LLMOutputError as exc:
            if rescue is None:
                raise
            completion = self._rescued(exc, rescue, schema, validate)
        if cache is not None:
            self._store(cache, key, completion)
        return completion

    def _store(self, cache: ResponseCache, key: str, completion: Completion) -> None:
        """Cache an answer with the endpoint's secrets masked: a model may echo the key or
        the URL it was called with, and the cache outlives the run. (The key hashes the
        request, which holds no secret, so a masked answer is still found.)"""
        stored: dict[str, Any] = completion.usage.as_dict()
        if completion.repairs_by_code:
            stored["repairs_by_code"] = [self.redact(str(c)) for c in completion.repairs_by_code]
        cache.put(key, self.redact(completion.text), stored)

    def redact(self, text: str) -> str:
        """``text`` with the adapter's secrets and the client's ``secrets`` masked."""
        return self.scrubber.text(self.adapter.redact(text))

    async def aclose(self) -> None:
        """Close the connections the adapter holds for the running event loop."""
        await self.adapter.aclose()

    # -- internals
    def _prepare(self, request: Request) -> Request:
        """Put the schema into the prompt when the endpoint will not enforce it."""
        mode = self.provider.structured_output
        if request.json_schema is None or mode in ("json_schema", "json_object_schema"):
            return request
        msgs = [dict(m) for m in request.messages]
        note = schema_instructions(request.json_schema)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = msgs[0]["content"] + "\n\n" + note
        else:
            msgs.insert(0, {"role": "system", "content": note})
        return replace(request, messages=msgs)

    def _parse(self, text: str, schema: type[T] | None, validate: Any) -> Any:
        if schema is None:
            if validate is not None:
                validate(text)
            return text
        value = schema.model_validate(extract_json(text))
        if validate is not None:
            validate(value)
        return value

    def _rescued(
        self, error: LLMOutputError, rescue: Rescue, schema: type[T] | None, validate: Any
    ) -> Completion:
        """The answer ``rescue`` makes of the last raw text, checked like any answer."""
        try:
            fixed, changes = rescue(error.raw_text)
            text = fixed.model_dump_json() if isinstance(fixed, BaseModel) else str(fixed)
            value = self._parse(text, schema, validate)
        except ValueError:
            raise error from None
        log.info("%s rescued by code: %s", schema.__name__ if schema else "answer", changes)
        return Completion(
            value, text, error.usage, repairs=error.attempts, repairs_by_code=list(changes)
        )

    async def _complete_with_repairs(
        self, request: Request, schema: type[T] | None, validate: Any, repair_turns: int
    ) -> Completion:
        request = self._prepare(request)
        total = Usage()
        messages = list(request.messages)
        text, last_error = "", ""
        for attempt in range(repair_turns + 1):
            sent = request if attempt == 0 else replace(request, messages=messages)
            reply = await self._send_with_retries(sent)
            total = total + self._usage_of(reply, request.settings)
            text = reply.text
            try:
                value = self._parse(text, schema, validate)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                last_error = describe_validation_error(exc)
                if reply.finish_reason == "length":
                    last_error = (
                        f"the answer was cut off at max_tokens={request.settings.max_tokens} "
                        f"before it was complete (write shorter values, or raise the step's "
                        f"llm.steps.<step>.max_tokens); {last_error}"
                    )
                log.info("%s invalid (turn %d): %s", request.schema_name, attempt, last_error)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    repair_message(last_error),
                ]
                continue
            return Completion(value, text, total, repairs=attempt)
        raise LLMOutputError(
            f"{request.schema_name or 'answer'} still invalid after "
            f"{repair_turns} repair turn(s): {last_error}",
            raw_text=text,
            attempts=repair_turns + 1,
            usage=total,
        )

    def _usage_of(self, reply: RawReply, settings: StepSettings) -> Usage:
        model = settings.model or self.provider.model
        price = self.provider.prices.get(model)
        cached = min(max(reply.cached_prompt_tokens, 0), reply.prompt_tokens)
        cost = 0.0
        if price:
            cached_price = price.input if price.cached_input is None else price.cached_input
            cost = (reply.prompt_tokens - cached) * price.input + cached * cached_price
            cost = (cost + reply.completion_tokens * price.output) / 1_000_000
        usage = Usage(
            1, 0, reply.prompt_tokens, reply.completion_tokens, cost,
            cached_prompt_tokens=cached, repeated_prompt_tokens=reply.repeated_prompt_tokens,
        )  # fmt: skip
        self.usage = self.usage + usage
        return usage

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = asyncio.Semaphore(self.provider.max_concurrency)
            self._semaphores[loop] = semaphore
        return semaphore

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            self.adapter.name,
            state.attempt_number,
            self.redact(f"{type(exc).__name__}: {exc}"),
            state.upcoming_sleep,
        )

    async def _send_once(self, request: Request, clock: SendClock) -> RawReply:
        await self.rate_limiter.wait()
        async with self._semaphore():
            if clock.first_sent is None:
                clock.first_sent = time.monotonic()
                clock.prefix = note_request(request.messages)
            self.network_calls += 1
            reply = await self.adapter.send(request)
        repeated, chars = clock.prefix
        if chars:
            reply.repeated_prompt_tokens = round(reply.prompt_tokens * repeated / chars)
        return reply

    def _retrying(self, clock: SendClock) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.provider.max_attempts)
            | StopBeforeDeadline(clock, self.provider.max_retry_seconds),
            wait=RetryAfterWait(self.retry_initial_s, self.retry_max_wait_s),
            retry=retry_if_exception(is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def _send_with_retries(self, request: Request) -> RawReply:
        """One request, retried on transient failures within the configured limits.

        The time budget counts from the moment the first attempt is sent: the wait for a
        concurrency slot or the rate limiter before it is queueing, not retrying, and at
        saturation it can be longer than the whole budget.
        """
        clock = SendClock()
        retrying = self._retrying(clock)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send_once(request, clock)
        except Exception as exc:
            surfaced = self._surfaced(exc, retrying, clock)
            if surfaced is exc:
                raise
            raise surfaced from None
        raise LLMTransportError("retry loop ended without a reply")  # pragma: no cover

    def _surfaced(self, exc: Exception, retrying: AsyncRetrying, clock: SendClock) -> Exception:
        """What a final failure is raised as: a transport or request error with a redacted
        message, raised ``from None`` (the SDK error it replaces is not redacted), or ``exc``
        itself when it is ours already or not an endpoint's answer."""
        detail = self.redact(f"{type(exc).__name__}: {exc}")
        if is_retryable(exc):
            attempts = retrying.statistics.get("attempt_number", "?")
            return LLMTransportError(
                f"{self.adapter.name} still failing after {attempts} attempt(s) in "
                f"{time.monotonic() - clock.started():.1f}s (limits: "
                f"llm.provider.max_attempts={self.provider.max_attempts}, "
                f"max_retry_seconds={self.provider.max_retry_seconds:g}): {detail}"
            )
        if isinstance(exc, LLMError):
            return exc
        status = status_of(exc)
        if status is not None:
            return LLMRequestError(
                f"{self.adapter.name} refused the request (HTTP {status}); check "
                f"llm.provider (model, base_url, api_key_env): {detail}",
                status_code=status,
            )
        return exc


def build_client(
    config: LLMConfig,
    environ: dict[str, str] | None = None,
    cache_path: str | None = None,
    **client_options: Any,
) -> LLMClient:
    """Make the client the config asks for (the SDK or llama.cpp is imported only by the
    adapter that needs it).

    ``client_options`` go to :class:`LLMClient` (``retry_initial_s``, ``retry_max_wait_s``).
    """
    adapter = make_adapter(config.provider, environ)
    cache = None
    if config.cache.enabled:
        cache = ResponseCache(cache_path or config.cache.path)
    return LLMClient(config, adapter, cache, **client_options)


def build_run_client(config: Config, **client_options: Any) -> LLMClient:
    """The client for a run, the debugger, time travel, Studio or the judge: the configured
    cache, and every secret the whole config holds masked (not only the provider's key) in
    what the client caches, logs and raises."""
    return build_client(
        config.llm,
        cache_path=config.llm.cache.path,
        secrets=secret_values(config),
        **client_options,
    )
