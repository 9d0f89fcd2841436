"""State inspection for the debugger and the time-travel commands: dotted paths, schema
validation of edits, readable diffs, token totals and what each node reads.

Paths are dotted, list items by index: ``persona.0.sentence``, ``demographics.age``,
``events.events.2.caused_by`` (``persona[0].sentence`` is accepted too).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from mcu_sim.config import StepSettings
from mcu_sim.personas.schema import (
    Commonsense,
    Demographics,
    DeviceImage,
    Episode,
    EventGraph,
    Face,
    ImageRequest,
    Narrative,
    PersonaAttribute,
    Removal,
    Session,
)


class StateEditError(ValueError):
    """An edit was refused; the message says why and the state is unchanged."""


class PersonaCategory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str = Field(min_length=1)
    entity_key: str = Field(min_length=1)


# The schema each top-level state field must satisfy after an edit.
FIELD_TYPES: dict[str, Any] = {
    "episode_id": Annotated[str, Field(min_length=1, max_length=200)],
    "seed": int,
    "n_sessions": Annotated[int, Field(ge=1, le=20)],
    "start_date": dt.date,
    "demographics": Demographics,
    "persona_category": PersonaCategory,
    "face": Face,
    "persona": Annotated[list[PersonaAttribute], Field(min_length=1)],
    "persona_focus": Annotated[int, Field(ge=0)],
    "commonsense": Annotated[list[Commonsense], Field(min_length=1)],
    "narrative": Narrative,
    "events": EventGraph,
    "device_images": list[DeviceImage],
    "sessions": list[Session],
    "image_requests": list[ImageRequest],
    "usage": dict[str, dict[str, float]],
    "prompt_versions": dict[str, str],
    "removals": list[Removal],
    "notes": list[str],
    "episode": Episode,
}

# The LLM steps (``llm.steps`` keys) each node calls; ``rerun --set`` overrides these.
NODE_STEPS: dict[str, tuple[str, ...]] = {
    "persona": ("persona",),
    "commonsense": ("commonsense",),
    "narrative": ("narrative",),
    "events": ("events",),
    "device_images": ("device",),
    "session": ("dialogue", "summarizer"),
    "align_album": ("planner", "rewriter"),
    "align_sharing": ("planner", "rewriter"),
    "filter": ("judge",),
}

# The aligner branches get their input from a Send built from these fields.
FANOUT_READS = ("image_requests", "demographics", "face", "episode_id", "seed")


@cache
def _adapter(field: str) -> TypeAdapter:
    return TypeAdapter(FIELD_TYPES[field])


@cache
def reduced_fields() -> frozenset[str]:
    """State fields with a reducer: an edit must overwrite them, not merge into them."""
    from mcu_sim.graphs.state import EpisodeState

    hints = get_type_hints(EpisodeState, include_extras=True)
    return frozenset(name for name, hint in hints.items() if get_origin(hint) is Annotated)


# ---------------------------------------------------------------- paths


def split_path(path: str) -> list[str | int]:
    """``persona[0].sentence`` / ``persona.0.sentence`` -> ``["persona", 0, "sentence"]``."""
    text = re.sub(r"\[(-?\d+)\]", r".\1", path.strip())
    parts = [p for p in text.split(".")]
    if not text or not all(parts):
        raise StateEditError(f"'{path}' is not a field path; write it like persona.0.sentence")
    return [int(p) if re.fullmatch(r"-?\d+", p) else p for p in parts]


def join_path(parts: list[str | int] | tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in parts)


def _step_into(value: Any, part: str | int, where: str) -> Any:
    if isinstance(value, dict):
        if str(part) not in value:
            keys = ", ".join(sorted(map(str, value))) or "(none)"
            raise StateEditError(f"{where} has no key '{part}'; keys: {keys}")
        return value[str(part)]
    if isinstance(value, list):
        if not isinstance(part, int):
            raise StateEditError(f"{where} is a list; use an index (0..{len(value) - 1})")
        if not -len(value) <= part < len(value):
            raise StateEditError(f"{where} has {len(value)} items; index {part} is out of range")
        return value[part]
    raise StateEditError(f"{where} is a {type(value).__name__}, it has no '{part}'")


def get_path(values: dict[str, Any], path: str) -> Any:
    """The value at ``path``; a clear :class:`StateEditError` when it does not exist."""
    parts = split_path(path)
    if str(parts[0]) not in values:
        fields = ", ".join(sorted(values)) or "(empty state)"
        raise StateEditError(f"the state has no field '{parts[0]}' here; fields: {fields}")
    current: Any = values
    for index, part in enumerate(parts):
        current = _step_into(current, part, join_path(parts[:index]) or "the state")
    return current


def set_path(values: dict[str, Any], path: str, new: Any) -> tuple[str, Any]:
    """Return ``(field, new value of that top-level field)`` with ``path`` set to ``new``.

    ``values`` is not modified. A missing last key of a mapping is created (the schema
    then decides whether it is allowed).
    """
    parts = split_path(path)
    field = str(parts[0])
    if field not in FIELD_TYPES:
        raise StateEditError(f"'{field}' is not a state field; fields: {', '.join(FIELD_TYPES)}")
    if len(parts) == 1:
        return field, new
    if field not in values:
        raise StateEditError(f"'{field}' is not set yet at this checkpoint; edit it as a whole")
    top = copy.deepcopy(values[field])
    parent: Any = top
    for index, part in enumerate(parts[1:-1], start=1):
        parent = _step_into(parent, part, join_path(parts[:index]))
    last = parts[-1]
    where = join_path(parts[:-1])
    if isinstance(parent, dict):
        parent[str(last)] = new
    elif isinstance(parent, list):
        _step_into(parent, last, where)  # checks the index
        parent[int(last)] = new
    else:
        raise StateEditError(f"{where} is a {type(parent).__name__}; it has no '{last}'")
    return field, top


def parse_value(text: str) -> Any:
    """An inline value: JSON or YAML (``30``, ``"green tea"``, ``{key: food, value: tea}``)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StateEditError(f"the value is neither JSON nor YAML: {exc}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``PATH=VALUE`` (the value parsed as JSON/YAML)."""
    if "=" not in text:
        raise StateEditError(f"'{text}' must look like PATH=VALUE, e.g. persona.0.sentence=...")
    path, raw = text.split("=", 1)
    return path.strip(), parse_value(raw.strip())


def edit_in_editor(value: Any, editor: str | None = None) -> Any:
    """Open ``value`` as JSON in ``$VISUAL``/``$EDITOR`` (default vi); return the edited value."""
    command = editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    fd, name = tempfile.mkstemp(prefix="mcu-edit-", suffix=".json")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        try:
            result = subprocess.run([*shlex.split(command), str(path)], check=False)
        except OSError as exc:
            raise StateEditError(f"could not start the editor '{command}': {exc}") from None
        if result.returncode != 0:
            raise StateEditError(f"the editor exited with status {result.returncode}")
        return parse_value(path.read_text(encoding="utf-8"))
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- validation


def _explain(error: ValidationError, field: str) -> str:
    lines = []
    for item in error.errors():
        where = join_path([field, *item["loc"]])
        lines.append(f"{where}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(lines)


def validate_field(field: str, value: Any, values: dict[str, Any]) -> Any:
    """Check ``value`` against the field's schema; return it as plain JSON data.

    Raises :class:`StateEditError` with pydantic's messages when it does not fit.
    """
    if field not in FIELD_TYPES:
        raise StateEditError(f"'{field}' is not a state field; fields: {', '.join(FIELD_TYPES)}")
    adapter = _adapter(field)
    try:
        checked = adapter.validate_python(value)
    except ValidationError as exc:
        raise StateEditError(_explain(exc, field)) from None
    plain = adapter.dump_python(checked, mode="json", exclude_unset=True)
    _check_cross_fields({**values, field: plain})
    return plain


def _check_cross_fields(values: dict[str, Any]) -> None:
    persona = values.get("persona")
    focus = values.get("persona_focus")
    if isinstance(persona, list) and isinstance(focus, int) and focus >= len(persona):
        raise StateEditError(
            f"persona_focus is {focus} but persona has only {len(persona)} attributes"
        )
    episode = values.get("episode")
    episode_id = values.get("episode_id")
    if isinstance(episode, dict) and episode_id and episode.get("episode_id") != episode_id:
        raise StateEditError("episode.episode_id must equal episode_id")


def edit_update(values: dict[str, Any], path: str, new: Any) -> dict[str, Any]:
    """The validated state update that sets ``path`` to ``new`` (for ``update_state``)."""
    from langgraph.types import Overwrite

    field, top = set_path(values, path, new)
    checked = validate_field(field, top, values)
    return {field: Overwrite(checked) if field in reduced_fields() else checked}


def step_overrides(nodes: tuple[str, ...] | list[str], settings: dict[str, Any]) -> dict:
    """Per-step setting overrides for re-running ``nodes`` (validated as StepSettings)."""
    steps = sorted({step for node in nodes for step in NODE_STEPS.get(node, ())})
    if settings and not steps:
        raise StateEditError(f"{', '.join(nodes)} makes no LLM call; settings do not apply")
    unknown = set(settings) - set(StepSettings.model_fields)
    if unknown:
        known = ", ".join(StepSettings.model_fields)
        raise StateEditError(f"unknown setting {', '.join(sorted(unknown))}; settings: {known}")
    try:
        StepSettings.model_validate({**StepSettings().model_dump(), **settings})
    except ValidationError as exc:
        raise StateEditError(_explain(exc, "settings")) from None
    return {step: dict(settings) for step in steps} if settings else {}


# ---------------------------------------------------------------- diffs and summaries


@dataclass(frozen=True)
class Change:
    kind: Literal["added", "removed", "changed"]
    path: str
    old: Any = None
    new: Any = None


def leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """A new value as diff lines: one per item of a list or key of a mapping (not deeper,
    so a new persona shows as one line per attribute)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield f"{path}.{key}", item
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield f"{path}.{index}", item
    else:
        yield path, value


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Leaf-level differences from ``before`` to ``after``, paths in the edit syntax."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[Change] = []
        for key in [*before, *(k for k in after if k not in before)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                changes.append(Change("removed", sub, old=before[key]))
            elif key not in before:
                changes.extend(Change("added", p, new=v) for p, v in leaves(after[key], sub))
            else:
                changes.extend(diff(before[key], after[key], sub))
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for index in range(max(len(before), len(after))):
            sub = f"{path}.{index}"
            if index >= len(after):
                changes.append(Change("removed", sub, old=before[index]))
            elif index >= len(before):
                changes.append(Change("added", sub, new=after[index]))
            else:
                changes.extend(diff(before[index], after[index], sub))
        return changes
    return [Change("changed", path, old=before, new=after)]


def total_tokens(values: dict[str, Any]) -> int:
    """Prompt plus completion tokens over all nodes' usage so far."""
    usage = values.get("usage") or {}
    return int(
        sum(
            (item.get("prompt_tokens") or 0) + (item.get("completion_tokens") or 0)
            for item in usage.values()
            if isinstance(item, dict)
        )
    )


def node_reads(builder: Any, name: str) -> tuple[str, ...]:
    """The state fields node ``name`` reads (``@node_reads``), from the uncompiled graph."""
    spec = getattr(builder, "nodes", {}).get(name)
    runnable = getattr(spec, "runnable", None)
    for attr in ("afunc", "func"):
        reads = getattr(getattr(runnable, attr, None), "reads", None)
        if reads:
            return tuple(reads)
    if runnable is not None and hasattr(runnable, "get_graph"):  # a compiled subgraph
        return FANOUT_READS
    return ()
