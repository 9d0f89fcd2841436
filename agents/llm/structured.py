"""Structured output helpers: find JSON in a reply (never ``eval``), put a schema into a
prompt, word validation errors so the model can repair its answer, and check or adapt a
schema for constrained decoding."""

from __future__ import annotations

import json
import math
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


def unbounded_fields(schema: dict[str, Any], path: str = "$") -> list[str]:
    """Paths of strings without ``maxLength`` and arrays without ``maxItems`` in a JSON schema.

    Constrained decoding with a small model only terminates reliably when every string and
    array is bounded; role schemas can assert this returns ``[]``.
    """
    defs = schema.get("$defs", {})
    found: list[str] = []

    def visit(node: Any, where: str, seen: frozenset[str]) -> None:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                visit(defs.get(name), where, seen | {name})
            return
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and not {"enum", "const"} & set(node):
            found.append(where)
        if kind == "array":
            if "maxItems" not in node and "prefixItems" not in node:
                found.append(where)
            visit(node.get("items"), f"{where}[]", seen)
        for prop, sub in (node.get("properties") or {}).items():
            visit(sub, f"{where}.{prop}", seen)
        for combo in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(combo) or []:
                visit(sub, where, seen)
        if isinstance(node.get("additionalProperties"), dict):
            visit(node["additionalProperties"], f"{where}.*", seen)

    visit(schema, path, frozenset())
    return found


MAX_ENUM_RANGE = 256


def grammar_schema(schema: Any) -> Any:
    """``schema`` with small integer ranges spelled out as enums.

    llama.cpp's JSON-schema-to-grammar conversion enforces ``maxLength``, ``maxItems`` and
    ``enum`` but ignores ``minimum``/``maximum``; an integer range of at most
    ``MAX_ENUM_RANGE`` values becomes an ``enum`` so the grammar enforces it as well.
    """
    if isinstance(schema, list):
        return [grammar_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: grammar_schema(value) for key, value in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low = out.get("minimum", out.get("exclusiveMinimum"))
        high = out.get("maximum", out.get("exclusiveMaximum"))
        if isinstance(low, int | float) and isinstance(high, int | float):
            first = math.ceil(low) + (1 if "exclusiveMinimum" in out and low == int(low) else 0)
            last = math.floor(high) - (1 if "exclusiveMaximum" in out and high == int(high) else 0)
            if 0 < last - first + 1 <= MAX_ENUM_RANGE:
                out["enum"] = list(range(first, last + 1))
    return out
