"""An episode's checkpoint history: rows for ``mcu history``, resolving a ``--at`` reference
and finding the node that wrote a checkpoint (``as_node`` for updates and forks)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mcu_sim.debug.state import total_tokens

INPUT_NODE = "__input__"
START_NODE = "__start__"


class TimeTravelError(ValueError):
    """A checkpoint, episode or run directory could not be used; the message says why."""


class NoCheckpoints(TimeTravelError):
    """The episode's thread has no checkpoint in this store."""


@dataclass
class CheckpointRow:
    """One checkpoint of an episode, as ``mcu history`` shows it."""

    index: int
    checkpoint_id: str
    parent_id: str | None
    step: int
    source: str
    wrote: str
    next: tuple[str, ...]
    created_at: str
    tokens: int
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "next": list(self.next)}


@dataclass
class History:
    rows: list[CheckpointRow]
    snapshots: list[Any]  # StateSnapshot, same order as rows (oldest first)

    def by_id(self, checkpoint_id: str) -> Any:
        for snapshot in self.snapshots:
            if checkpoint_id_of(snapshot) == checkpoint_id:
                return snapshot
        raise TimeTravelError(f"no checkpoint {checkpoint_id}")


def checkpoint_id_of(snapshot: Any) -> str:
    return snapshot.config["configurable"]["checkpoint_id"]


def _parent_id(snapshot: Any) -> str | None:
    parent = snapshot.parent_config
    return parent["configurable"]["checkpoint_id"] if parent else None


async def thread_ids(graph: Any, limit: int = 20, prefix: str = "", scan: int = 200) -> list[str]:
    """Some episode ids that have checkpoints (for error messages): the threads of the
    saver's ``scan`` newest checkpoints (its ``alist``) that start with ``prefix`` (a run's
    ``<run id>/`` in a shared Postgres store), the prefix cut off."""
    found: list[str] = []
    try:
        async for item in graph.checkpointer.alist(None, limit=scan):
            thread = str(item.config["configurable"]["thread_id"])
            if thread.startswith(prefix) and thread not in found:
                found.append(thread)
                if len(found) >= limit:
                    break
    except Exception:  # the listing only decorates an error message
        return []
    return sorted(thread[len(prefix) :] for thread in found)


def _count_names(names: list[str]) -> str:
    counts = Counter(names)
    return ", ".join(n if c == 1 else f"{n} ×{c}" for n, c in counts.items())


def _wrote(snapshot: Any, parent: Any) -> str:
    source = snapshot.metadata.get("source")
    if source == "input":
        return "input"
    if source == "fork":
        return "copy (run from here)"
    if source == "update":
        return snapshot.metadata.get("mcu_note") or "update"
    names = [task.name for task in parent.tasks] if parent is not None else []
    if names == [START_NODE]:
        return "start"
    return _count_names(names) or "?"


async def load_history(graph: Any, thread_id: str, prefix: str = "") -> History:
    """All checkpoints of the episode's thread, oldest first (branches included).
    ``prefix``: what the run puts before episode ids in thread ids (none with SQLite)."""
    config = {"configurable": {"thread_id": thread_id}}
    snapshots = [s async for s in graph.aget_state_history(config)]
    if not snapshots:
        known = await thread_ids(graph, prefix=prefix)
        listing = ", ".join(known) if known else "none"
        episode_id = thread_id.removeprefix(prefix)
        raise NoCheckpoints(f"episode {episode_id} has no checkpoints here (episodes: {listing})")
    snapshots.reverse()
    by_id = {checkpoint_id_of(s): s for s in snapshots}
    rows = []
    for index, snapshot in enumerate(snapshots):
        parent_id = _parent_id(snapshot)
        rows.append(
            CheckpointRow(
                index=index,
                checkpoint_id=checkpoint_id_of(snapshot),
                parent_id=parent_id,
                step=int(snapshot.metadata.get("step", -1)),
                source=str(snapshot.metadata.get("source", "")),
                wrote=_wrote(snapshot, by_id.get(parent_id) if parent_id else None),
                next=tuple(snapshot.next),
                created_at=snapshot.created_at or "",
                tokens=total_tokens(snapshot.values),
                note=snapshot.metadata.get("mcu_note"),
            )
        )
    return History(rows, snapshots)


def resolve(history: History, at: str | int | None) -> Any:
    """The snapshot named by ``at``: None (the latest), a ``#`` index from the history
    table, a full checkpoint id, or a unique part of one (at least 6 characters)."""
    if at is None or at == "":
        return max(history.snapshots, key=lambda s: s.created_at or "")
    text = str(at).strip().removeprefix("#")
    if text.isdigit() and len(text) < 6:
        index = int(text)
        if index >= len(history.snapshots):
            raise TimeTravelError(f"no checkpoint #{index}; the history has {len(history.rows)}")
        return history.snapshots[index]
    matches = [s for s in history.snapshots if text in checkpoint_id_of(s)]
    if len(text) < 6 or len(matches) > 1:
        raise TimeTravelError(
            f"'{at}' matches {len(matches)} checkpoints; give a # from `mcu history` or more "
            "characters of the id"
        )
    if not matches:
        raise TimeTravelError(f"no checkpoint '{at}' in this episode; see `mcu history`")
    return matches[0]


def writer_node(history: History, snapshot: Any) -> str:
    """The node whose outgoing edges lead to ``snapshot.next`` (``as_node`` for updates)."""
    source = snapshot.metadata.get("source")
    if source == "input":
        return INPUT_NODE
    if source == "update" and snapshot.metadata.get("mcu_as_node"):
        return snapshot.metadata["mcu_as_node"]
    parent_id = _parent_id(snapshot)
    parent = history.by_id(parent_id) if parent_id else None
    if parent is None:
        raise TimeTravelError("cannot tell which node wrote this checkpoint (no parent)")
    if source in ("fork", "update"):
        return writer_node(history, parent)
    names = sorted({task.name for task in parent.tasks})
    if len(names) != 1:
        raise TimeTravelError(f"checkpoint was written by several nodes ({', '.join(names)})")
    return names[0]


def format_time(created_at: str) -> str:
    """ISO timestamp -> local ``YYYY-MM-DD HH:MM:SS``."""
    try:
        return dt.datetime.fromisoformat(created_at).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return created_at
