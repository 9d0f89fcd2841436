"""Config errors worded for the person who has to fix the file.

:func:`explain` turns a pydantic ``ValidationError`` into lines that name the dotted key,
the closest valid key for a typo, and where a value came from when it was not the file.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from mcu_sim.redaction import MASK, is_secret_key, mask_url


class ConfigError(ValueError):
    """A configuration problem, worded for the person who has to fix the file."""


def unknown_key_message(path: str, key: str, valid: Any) -> str:
    """``Unknown key 'a.b'. Did you mean 'c'? Valid keys here: ...``."""
    options = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    if is_secret_key(key) and "api_key_env" in options:
        hint += (
            " Secrets never go in the config: put the key in an environment variable and "
            "name that variable in api_key_env."
        )
    listing = f" Valid keys here: {', '.join(options)}." if options else ""
    return f"Unknown key '{path}'.{hint}{listing}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds directly, or as the values of a ``dict[str, M]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        if len(args) == 2:
            return _model_in(args[1])
    return None


def model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk ``root`` along ``path`` (as in a pydantic error location)."""
    model: type[BaseModel] | None = root
    mapping_of: type[BaseModel] | None = None  # set after a dict[str, M] field
    for part in path:
        if mapping_of is not None:
            model, mapping_of = mapping_of, None
            continue
        if model is None or isinstance(part, int):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            mapping_of, model = _model_in(annotation), None
            if mapping_of is None:
                return None
        else:
            model = _model_in(annotation)
    return None if mapping_of is not None else model


SHOWN_CHARS = 80
MAX_LINES = 20


def _brief(value: Any, room: int, depth: int = 0) -> str:
    """A masked repr of ``value`` cut at about ``room`` characters, built by walking only
    as much of it as is shown: a value built from YAML aliases can be enormous, and is
    never expanded just to describe it."""
    if isinstance(value, str):
        return repr(mask_url(value))[:room]
    if isinstance(value, dict | list | tuple):
        if depth >= 3 or room < 8:
            return f"<{type(value).__name__} of {len(value)}>"
        is_dict = isinstance(value, dict)
        items = value.items() if is_dict else ((None, v) for v in value)
        parts: list[str] = []
        used = 2
        for key, item in items:
            if used >= room:
                parts.append("...")
                break
            shown = MASK if is_dict and is_secret_key(str(key)) else None
            text = shown or _brief(item, room - used, depth + 1)
            if is_dict:
                text = f"{_brief(key, 30, depth + 1)}: {text}"
            parts.append(text)
            used += len(text) + 2
        opening, closing = ("{", "}") if is_dict else ("[", "]")
        return opening + ", ".join(parts) + closing
    return repr(value)[:room]


def _show(value: Any, key: str) -> str:
    if is_secret_key(key):
        return repr(MASK)
    text = _brief(value, SHOWN_CHARS + 1)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _origin(path: str, origins: dict[str, str]) -> str:
    for key, source in origins.items():
        if key == path or key.startswith(path + ".") or path.startswith(key + "."):
            return f" (from {source})"
    return ""


def explain(
    error: ValidationError, root: type[BaseModel], origins: dict[str, str] | None = None
) -> str:
    """Turn a pydantic error on ``root`` into lines that name the key and, for typos, the fix.

    ``origins`` maps dotted keys set outside the file to where they came from.
    """
    lines: list[str] = []
    for number, item in enumerate(error.errors()):
        if number == MAX_LINES:
            lines.append(f"... and {error.error_count() - MAX_LINES} more problems.")
            break
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        start = len(lines)
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = model_at(root, loc[:-1])
            valid = parent.model_fields.keys() if parent else []
            lines.append(unknown_key_message(path, str(loc[-1]), valid))
        elif kind == "missing":
            lines.append(f"Missing required key '{path}'.")
        elif kind == "value_error":  # raised by our validators, which name their keys
            message = str(item["msg"]).removeprefix("Value error, ")
            named = re.search(r"'((?:llm|episode|run|images)\.[\w.-]+)'", message)
            path = named.group(1) if named else path
            lines.append(message)
        else:
            origin = _origin(path, origins or {})
            if origin:  # an environment variable or --set: often a secret, never echoed
                got = f"a {type(item.get('input')).__name__}, not shown"
            else:
                got = _show(item.get("input"), str(loc[-1]) if loc else "")
            lines.append(f"Invalid value for '{path}': {item['msg']} (got {got}).")
        if origins and len(lines) > start:
            lines[-1] += _origin(path, origins)
    return "\n".join(lines)
