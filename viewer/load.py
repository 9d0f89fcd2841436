"""Find what ``mcu view`` was pointed at and read it: one episode file or a whole run.

Nothing here renders; it only turns paths into validated episodes and failure records,
and keeps a bad file from hiding the rest of a run (it becomes an "invalid" entry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcu_sim.personas.schema import Episode


class ViewerError(Exception):
    """A target the viewer cannot show; the message says what to pass instead."""


@dataclass
class EpisodeEntry:
    """One card of a run index: a finished episode, a failure record, or an unreadable file."""

    episode_id: str
    status: str  # complete | filtered | failed | invalid
    episode: Episode | None = None
    source: Path | None = None
    failure: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def name(self) -> str:
        if self.episode is None:
            return ""
        if self.episode.demographics is None:  # augmented: the dialogue's own id
            return (self.episode.source.source_id or "") if self.episode.source else ""
        return self.episode.demographics.name


@dataclass
class RunContents:
    root: Path
    entries: list[EpisodeEntry]
    manifest: dict[str, Any] | None = None


def run_root_of(episode_file: Path) -> Path:
    """Image paths in an episode are relative to its run directory: the folder holding
    ``episodes/``, or the file's own folder for an episode copied elsewhere."""
    folder = episode_file.resolve().parent
    return folder.parent if folder.name == "episodes" else folder


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "episodes").is_dir() or (path / "failures").is_dir())


def read_json(path: Path) -> Any:
    """Parsed JSON, or a :class:`ViewerError` for anything unreadable (missing, not UTF-8,
    not JSON, nested too deeply for the parser)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ViewerError(f"{path}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise ViewerError(f"{path}: not a readable JSON file (nested too deeply)") from None


def load_episode(path: Path) -> Episode:
    """Read and validate one episode file; a clear :class:`ViewerError` otherwise."""
    data = read_json(path)
    try:
        return Episode.model_validate(data)
    except ValidationError as exc:
        raise ViewerError(
            f"{path} is not a valid episode ({exc.error_count()} problems; "
            f"`mcu validate {path}` lists them):\n{exc}"
        ) from None
    except RecursionError:
        raise ViewerError(f"{path} is not a valid episode (nested too deeply)") from None


def _text(value: Any, limit: int = 2000) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)[:limit]
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def failure_fields(record: Any) -> dict[str, Any]:
    """A failure record as the index shows it, whatever the file held: ``reason`` and
    ``error_type`` as text, ``failed_at`` as a list of node names, ``seed`` an int or None."""
    if not isinstance(record, dict):
        return {"reason": f"unexpected failure record: {_text(record, 200)}"}
    failed_at = record.get("failed_at")
    if failed_at is None:
        nodes: list[str] = []
    elif isinstance(failed_at, list):
        nodes = [_text(node, 200) for node in failed_at]
    else:
        nodes = [_text(failed_at, 200)]
    seed = record.get("seed")
    reason = record.get("reason")
    return {
        "error_type": _text(record.get("error_type") or "error", 200),
        "failed_at": nodes,
        "reason": _text(reason) if reason not in (None, "") else "",
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }


def resolve_episode(target: Path) -> Path:
    """An episode file, or ``RUN_DIR/<episode id>`` as a shorthand."""
    if target.is_file():
        return target
    candidate = target.parent / "episodes" / f"{target.name}.json"
    if target.suffix != ".json" and candidate.is_file():
        return candidate
    raise ViewerError(
        f"{target} is neither an episode JSON file nor a run directory (a folder with "
        "episodes/); pass e.g. runs/x/episodes/ep-00000001.json or runs/x"
    )


def load_run(root: Path) -> RunContents:
    """Every finished episode, every failure record, and unreadable files as invalid."""
    entries: dict[str, EpisodeEntry] = {}
    for path in sorted((root / "episodes").glob("*.json")):
        try:
            episode = load_episode(path)
        except ViewerError as exc:
            entries[path.stem] = EpisodeEntry(path.stem, "invalid", source=path, problem=str(exc))
            continue
        entries[episode.episode_id] = EpisodeEntry(
            episode.episode_id, episode.status, episode=episode, source=path
        )
    for path in sorted((root / "failures").glob("*.json")):
        if path.stem in entries:  # finished after a retry; the runner removes these anyway
            continue
        try:
            record = read_json(path)
        except ViewerError as exc:
            record = {"reason": str(exc)}
        entries[path.stem] = EpisodeEntry(
            path.stem, "failed", source=path, failure=failure_fields(record)
        )
    manifest = None
    if (root / "manifest.json").is_file():
        try:
            manifest = read_json(root / "manifest.json")
        except ViewerError:
            manifest = None
        if not isinstance(manifest, dict):  # a list, a number: nothing the index can use
            manifest = None
    return RunContents(root, [entries[k] for k in sorted(entries)], manifest)
