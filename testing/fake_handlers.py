"""What the fake endpoint answers: replies, injected faults and handlers.

A handler is ``handler(body) -> Reply | Fault | str | dict | list``: ``str`` is the answer
text, a dict or list is sent as JSON text. :class:`ScriptedHandler` plays a list of
outcomes in order, :func:`route_by_schema` answers per role, and
:func:`schema_example_handler` answers any schema with a minimal valid instance. The server
itself is :class:`mcu_sim.testing.fake_openai.FakeOpenAIServer`, which re-exports all of
these names.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class Reply:
    """A normal answer. Token counts default to whitespace-separated word counts;
    ``cached_tokens``, when given, is reported as OpenAI's
    ``usage.prompt_tokens_details.cached_tokens`` (prompt tokens served from its cache)."""

    content: str | dict[str, Any] | list[Any] = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    cached_tokens: int | None = None

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """The ``usage`` object of the answer, given its token counts."""
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = prompt + completion
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return json.dumps(self.content)


@dataclass
class Fault:
    """An injected failure; build with the class methods."""

    kind: Literal["status", "delay", "malformed", "disconnect"]
    status_code: int = 500
    retry_after: float | str | None = None
    seconds: float = 0.0
    then: Reply | None = None
    message: str = ""

    @classmethod
    def status(cls, code: int, retry_after: float | str | None = None, message: str = "") -> Fault:
        """An HTTP error with an OpenAI-style error body (and ``Retry-After`` if given)."""
        return cls("status", status_code=code, retry_after=retry_after, message=message)

    @classmethod
    def delay(cls, seconds: float, then: Reply | str | dict[str, Any] | None = None) -> Fault:
        """Answer only after ``seconds`` (past the client timeout, the client gives up)."""
        return cls("delay", seconds=seconds, then=as_reply(then) if then is not None else None)

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200, ``application/json``, with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without answering."""
        return cls("disconnect")


Outcome = Reply | Fault | str | dict[str, Any] | list[Any]
Handler = Callable[[dict[str, Any]], Outcome]


def as_reply(outcome: Outcome) -> Reply | Fault:
    if isinstance(outcome, Reply | Fault):
        return outcome
    return Reply(outcome)


def schema_name(body: dict[str, Any]) -> str | None:
    """The schema name in an OpenAI-style ``json_schema`` response format, if any."""
    response_format = body.get("response_format") or {}
    return (response_format.get("json_schema") or {}).get("name")


def request_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks for (``json_schema`` or ``json_object`` + schema)."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return response_format.get("schema")


def system_prompt(body: dict[str, Any]) -> str:
    """The first system message's text ("" if none)."""
    for message in body.get("messages") or []:
        if message.get("role") == "system":
            return str(message.get("content") or "")
    return ""


STRING_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "someone@example.com",
    "uri": "http://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example_for_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A small instance that satisfies ``schema`` (types, enums, bounds, required keys)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return example_for_schema(defs[ref.rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combo in ("anyOf", "oneOf", "allOf"):
        if schema.get(combo):
            return example_for_schema(schema[combo][0], defs)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: example_for_schema(v, defs) for k, v in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 0)
        count = min(count, int(schema.get("maxItems", count)))
        return [example_for_schema(schema.get("items") or {}, defs) for _ in range(count)]
    if kind == "string":
        if schema.get("format") in STRING_FORMATS:
            return STRING_FORMATS[schema["format"]]
        size = max(int(schema.get("minLength", 1)), 1)
        return ("x" * size)[: int(schema.get("maxLength", size))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low + (1 if "exclusiveMinimum" in schema else 0)
        return int(value) if kind == "integer" else float(value)
    return {"boolean": False, "null": None}.get(kind)


def schema_example_handler(body: dict[str, Any]) -> Outcome:
    """Answer schema requests with a minimal valid instance, anything else with "ok"."""
    schema = request_schema(body)
    return Reply(example_for_schema(schema)) if schema else Reply("ok")


class ScriptedHandler:
    """Returns the scripted outcomes in order (thread-safe). When the script is used up it
    calls ``default`` if given, else answers HTTP 500 and sets ``exhausted``."""

    def __init__(self, outcomes: Iterable[Outcome], default: Handler | None = None) -> None:
        self._outcomes = list(outcomes)
        self._lock = threading.Lock()
        self.default = default
        self.exhausted = False

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def __call__(self, body: dict[str, Any]) -> Outcome:
        with self._lock:
            if self._outcomes:
                return self._outcomes.pop(0)
            if self.default is None:
                self.exhausted = True
                return Fault.status(500, message="ScriptedHandler ran out of replies")
        return self.default(body)


def route_by_schema(routes: dict[str, Handler | Outcome], fallback: Handler | None = None):
    """A handler that answers per role, keyed by the request's schema name."""

    def handler(body: dict[str, Any]) -> Outcome:
        route = routes.get(schema_name(body) or "")
        if route is None:
            if fallback is None:
                return Fault.status(400, message=f"no route for schema {schema_name(body)!r}")
            return fallback(body)
        return route(body) if callable(route) else route

    return handler
