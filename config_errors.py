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

from mcu_sim.redaction import MASK, is_secret_key, redacted


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


def _show(value: Any, key: str) -> str:
    if is_secret_key(key):
        return repr(MASK)
    text = repr(redacted(value))
    return text if len(text) <= 80 else text[:77] + "..."


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
    for item in error.errors():
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
            got = _show(item.get("input"), str(loc[-1]) if loc else "")
            lines.append(f"Invalid value for '{path}': {item['msg']} (got {got}).")
        if origins and len(lines) > start:
            lines[-1] += _origin(path, origins)
    return "\n".join(lines)
