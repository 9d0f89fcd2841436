"""The vocabulary of the provider layer: errors, usage, what goes to an adapter and what comes
back, and the adapter protocol.

The bottom of ``agents/llm``: it imports none of its sibling modules, so the client, the
adapters and the retry policy can all import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcu_sim.config import StepSettings

Message = dict[str, str]


class LLMError(RuntimeError):
    """Base class of errors from the provider layer."""


class LLMOutputError(LLMError):
    """The model never produced a valid answer; ``raw_text`` keeps its last attempt."""

    def __init__(
        self, message: str, raw_text: str, attempts: int, usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.attempts = attempts
        self.usage = usage or Usage()


class LLMTransportError(LLMError):
    """The endpoint kept failing (429/5xx/timeouts/bad bodies) after the bounded retries."""


class LLMRequestError(LLMError):
    """The endpoint refused the request (a 4xx such as 400/401/404): retrying cannot help."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class EndpointFault(LLMError):
    """The endpoint answered with something unusable (a body that is not JSON, no choices).

    Raised by adapters; retried like a 5xx and surfaced as :class:`LLMTransportError`.
    """


@dataclass
class Usage:
    """Token and cost counts; add them up per node, episode or run with ``+``.

    ``calls`` counts requests answered by the endpoint (repair turns included, retried
    failures not); ``cached_calls`` counts answers served from the cache, which cost nothing.

    ``cached_prompt_tokens`` are the prompt tokens the endpoint says it served from its own
    prompt cache (OpenAI's ``usage.prompt_tokens_details.cached_tokens``), priced at
    ``Price.cached_input``. ``repeated_prompt_tokens`` are the prompt tokens that repeat a
    prefix already sent in the same episode, as measured by :mod:`mcu_sim.agents.llm.prefix`
    (what a prefix-caching endpoint could serve from cache). Both are part of
    ``prompt_tokens``; :meth:`as_dict` writes them only when not zero.
    """

    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_prompt_tokens: int = 0
    repeated_prompt_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__))

    def __sub__(self, other: Usage) -> Usage:
        """What was spent since ``other`` was read (``client.usage - before``)."""
        return Usage(*(getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__))

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
            **{
                key: value
                for key in ("cached_prompt_tokens", "repeated_prompt_tokens")
                if (value := getattr(self, key))
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: data.get(k, 0) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    """What ``complete`` returns: the validated object (or text) and what it cost.

    ``repairs`` counts the repair turns the model needed; ``repairs_by_code`` lists what a
    ``rescue`` changed when the model never got it right (empty otherwise). Both survive the
    cache: a rescued answer read back carries the same ``repairs_by_code``.
    """

    value: Any
    text: str
    usage: Usage
    cached: bool = False
    repairs: int = 0
    repairs_by_code: list[str] = field(default_factory=list)


Rescue = Callable[[str], tuple[Any, list[str]]]
"""``rescue(raw_text) -> (object, changes)``: the last resort of ``LLMClient.complete``."""


@dataclass
class RawReply:
    """One answer as an adapter read it, before any validation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    finish_reason: str | None = None  # "length": cut off at max_tokens
    # of prompt_tokens, those the endpoint served from its prompt cache (when it says so)
    cached_prompt_tokens: int = 0
    # of prompt_tokens, those repeating a prefix of the episode (set by the client)
    repeated_prompt_tokens: int = 0


@dataclass
class Request:
    """One request as the client hands it to an adapter."""

    messages: list[Message]
    settings: StepSettings
    json_schema: dict[str, Any] | None
    schema_name: str
    seed: int | None = None
    # stop sequences (sent only when given: a structured request carries none)
    stop: list[str] | None = None

    def sampling(self) -> dict[str, Any]:
        """The sampling arguments every wire protocol takes under these names."""
        s = self.settings
        return {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "max_tokens": s.max_tokens,
        }


class Adapter(Protocol):
    """A wire protocol. It sends one request and returns the text; no retries here."""

    name: str

    async def send(self, request: Request) -> RawReply: ...

    def identity(self) -> dict[str, Any]:
        """What distinguishes this endpoint in cache keys (never the API key)."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with this adapter's secrets masked (for errors and logs)."""
        ...

    async def aclose(self) -> None:
        """Close the connections the running event loop holds (if any)."""
        ...
