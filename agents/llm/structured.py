"""Structured output helpers: find JSON in a reply (never ``eval``), put a schema into a
prompt, and word validation errors so the model can repair its answer."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from pydantic import ValidationError

Message = dict[str, str]

JSON_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """Parse JSON from a reply that may wrap it in prose or a code fence. Never ``eval``.

    Tried in order: the whole reply, fenced blocks, then for objects before arrays the span
    from the first opener to the last closer and the first complete value (a whole object
    followed by chatter).
    """
    try:  # the common case, a bare JSON reply, at C speed; anything else takes the slow path
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    stripped = text.strip()
    attempts: list[Any] = [stripped, *(m.group(1).strip() for m in JSON_BLOCK.finditer(text))]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            attempts.append(stripped[start : end + 1])
        if start >= 0:
            attempts.append(start)  # an int: raw-decode the first value starting there
    # strict=False: raw control characters (a newline inside a string) are accepted; small
    # models emit them even under a grammar, and the schema still judges the content.
    decoder = json.JSONDecoder(strict=False)
    last_error: json.JSONDecodeError | None = None
    for attempt in attempts:
        try:
            if isinstance(attempt, int):
                return decoder.raw_decode(stripped, attempt)[0]
            return decoder.decode(attempt)
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
