"""Graph state: plain, checkpointer-serialisable data with merge-by-key reducers.

Lists of sessions, album images and image requests are merged by their key, so a node (or a
fanned-out aligner branch) returns only the items it created or changed.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict


def _upsert(key: str):
    def merge(current: list[dict] | None, update: list[dict] | None) -> list[dict]:
        merged = {item[key]: item for item in current or []}
        for item in update or []:
            merged[item[key]] = item
        return list(merged.values())

    merge.__name__ = f"upsert_by_{key}"
    return merge


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
    device_images: Annotated[list[dict[str, Any]], _upsert("id")]
    sessions: Annotated[list[dict[str, Any]], _upsert("index")]
    image_requests: Annotated[list[dict[str, Any]], _upsert("id")]
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
