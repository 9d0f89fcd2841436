"""Graph state: plain, checkpointer-serialisable data with merge-by-key reducers.

Lists of sessions, album images and image requests are merged by their key, so a node (or a
fanned-out aligner branch) returns only the items it created or changed.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict, get_type_hints


def _upsert(key: str):
    def merge(current: list[dict] | None, update: list[dict] | None) -> list[dict]:
        merged = {item[key]: item for item in current or []}
        for item in update or []:
            merged[item[key]] = item
        return list(merged.values())

    merge.__name__ = f"upsert_by_{key}"
    return merge


# Reducers are module constants: with postponed annotations every get_type_hints call
# evaluates the annotations again, and a fresh closure per call would make the same key
# look like a different channel to LangGraph.
upsert_by_id = _upsert("id")
upsert_by_index = _upsert("index")


def merge_usage(current: dict[str, dict] | None, update: dict[str, dict] | None) -> dict[str, dict]:
    """Sum per-node usage counters."""
    merged = {name: dict(values) for name, values in (current or {}).items()}
    for name, values in (update or {}).items():
        slot = merged.setdefault(name, {})
        for field, value in values.items():
            slot[field] = slot.get(field, 0) + value
    return merged


def merge_dict(current: dict | None, update: dict | None) -> dict:
    return {**(current or {}), **(update or {})}


def append(current: list | None, update: list | None) -> list:
    return [*(current or []), *(update or [])]


class EpisodeState(TypedDict, total=False):
    episode_id: str
    seed: int
    n_sessions: int
    start_date: str
    demographics: dict[str, Any]
    persona_category: dict[str, str]
    face: dict[str, Any]
    persona: list[dict[str, Any]]
    persona_focus: int
    commonsense: list[dict[str, Any]]
    narrative: dict[str, Any]
    events: dict[str, Any]
    device_images: Annotated[list[dict[str, Any]], upsert_by_id]
    sessions: Annotated[list[dict[str, Any]], upsert_by_index]
    image_requests: Annotated[list[dict[str, Any]], upsert_by_id]
    usage: Annotated[dict[str, dict[str, float]], merge_usage]
    prompt_versions: Annotated[dict[str, str], merge_dict]
    removals: Annotated[list[dict[str, Any]], append]
    notes: Annotated[list[str], append]
    episode: dict[str, Any]


def node_reads(*fields: str):
    """Decorator recording which state fields a node reads (shown by the debugger)."""

    def mark(func):
        func.reads = fields
        return func

    return mark


def _reducers() -> dict[str, Any]:
    hints = get_type_hints(EpisodeState, include_extras=True)
    return {name: h.__metadata__[0] for name, h in hints.items() if hasattr(h, "__metadata__")}


REDUCERS: dict[str, Any] = _reducers()


def merge_updates(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One node update equal to applying ``first`` then ``second``: fields with a reducer are
    combined by it (every reducer here is associative), the others are overwritten.

    For a node that runs several steps in one superstep: each step sees the state as the
    graph would have made it, ``merge_updates(state, update)``, and the node returns the
    merged updates."""
    merged = dict(first)
    for field, value in second.items():
        reducer = REDUCERS.get(field)
        merged[field] = reducer(merged[field], value) if reducer and field in merged else value
    return merged
