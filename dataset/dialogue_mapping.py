"""Where the parts of a dialogue sit in an input record: a small declarative mapping.

A mapping names, with dotted paths, the dialogue id, the list of sessions, and inside a
session its date, its turns and in a turn the speaker, the text and (optionally) the gold
image-sharing marker. A path segment may be a pattern (``session_*``): for ``sessions`` all
matching keys are taken, ordered by the number in them; elsewhere the first match. Two
layouts beyond nested objects are covered:

- ``sessions: "session*:"`` (a pattern ending in ``:``) groups flat columns by their prefix,
  as in ``session1:date``, ``session1:utterances`` (the STARK Hugging Face layout);
- ``turns: null`` reads the speaker, text and gold paths as parallel lists in the session.

``sessions: null`` reads the record itself as the one session. A turn is a gold image turn
when its gold value is present and neither null nor empty. Shipped mappings live in
``dataset/mappings/*.yaml``; see ``plain.yaml`` for the layout read when none is given.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

MAPPINGS_PACKAGE = "mcu_sim.dataset"
NUMBER = re.compile(r"\d+")
DATE_FORMATS = ("%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%d %B %Y", "%B %d, %Y")
MAX_SESSIONS = 1000
MAX_TURNS = 10_000
MAX_TEXT_CHARS = 100_000


class RecordError(ValueError):
    """A record that does not fit the mapping: which key, and why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DialogueMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Dialogue id; None: the record's position.")
    sessions: str | None = Field("sessions", description="None: the record is one session.")
    date: str | None = Field(None, description="Inside a session; optional.")
    turns: str | None = Field("turns", description="None: parallel lists in the session.")
    speaker: str = "speaker"
    text: str = "text"
    gold: str | None = Field(None, description="Gold image-turn marker; optional.")

    def with_options(self, options: list[str]) -> DialogueMapping:
        """This mapping with ``key=path`` options applied (``key=`` clears an optional key)."""
        update: dict[str, Any] = {}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or key not in type(self).model_fields:
                known = ", ".join(type(self).model_fields)
                raise ValueError(f"--map {option!r}: expected key=path with key one of {known}")
            update[key] = value.strip() or None
        return self.model_validate({**self.model_dump(), **update})


def shipped_mappings() -> dict[str, Path]:
    folder = resources.files(MAPPINGS_PACKAGE).joinpath("mappings")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_mapping(
    name_or_path: str | Path | None, options: list[str] | None = None
) -> DialogueMapping:
    """A shipped mapping by name (``plain``, ``episode``, ``stark-hf``, ``stark-json``), a
    YAML file, or the plain layout when None; then ``key=path`` options."""
    shipped = shipped_mappings()
    name = str(name_or_path or "plain")
    if name in shipped:
        path = shipped[name]
    else:
        path = Path(name)
        if not path.is_file():
            raise ValueError(
                f"mapping {name!r} is neither a shipped one ({', '.join(sorted(shipped))}) "
                "nor a YAML file"
            )
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"mapping {path} must be a YAML mapping of key: path")
    data.pop("example", None)  # the documented example record
    return DialogueMapping.model_validate(data).with_options(options or [])


# ---------------------------------------------------------------- paths


def _number(key: str) -> tuple[int, str]:
    found = NUMBER.search(key)
    return (int(found.group()) if found else 0, key)


def _step(value: Any, segment: str, where: str) -> Any:
    if isinstance(value, list) and segment.isdigit():
        index = int(segment)
        if index >= len(value):
            raise RecordError(where, f"index {index} out of range ({len(value)} items)")
        return value[index]
    if not isinstance(value, dict):
        raise RecordError(where, f"expected an object, found {type(value).__name__}")
    if any(ch in segment for ch in "*?["):
        keys = sorted((k for k in value if fnmatch.fnmatchcase(str(k), segment)), key=_number)
        if not keys:
            raise RecordError(where, "no key matches the pattern")
        return value[keys[0]]
    if segment not in value:
        raise RecordError(where, "missing")
    return value[segment]


def get_path(record: Any, path: str, prefix: str = "") -> Any:
    """The value at dotted ``path``; :class:`RecordError` naming the key otherwise."""
    value = record
    walked: list[str] = []
    for segment in path.split("."):
        walked.append(segment)
        value = _step(value, segment, prefix + ".".join(walked))
    return value


def _optional(record: Any, path: str | None, prefix: str = "") -> Any:
    if not path:
        return None
    try:
        return get_path(record, path, prefix)
    except RecordError:
        return None


# ---------------------------------------------------------------- records


def _sessions(record: Any, mapping: DialogueMapping) -> list[tuple[str, Any]]:
    """(label for messages, session object) in order."""
    path = mapping.sessions
    if not path:
        return [("", record)]
    if path.endswith(":") and "*" in path:  # flat columns grouped by prefix
        if not isinstance(record, dict):
            raise RecordError(path, f"expected an object, found {type(record).__name__}")
        groups: dict[str, dict[str, Any]] = {}
        for key, value in record.items():
            head, sep, field = str(key).partition(":")
            if sep and fnmatch.fnmatchcase(head + ":", path):
                groups.setdefault(head + ":", {})[field] = value
        if not groups:
            raise RecordError(path, "no column matches the session prefix")
        return [(k, groups[k]) for k in sorted(groups, key=_number)]
    head, _, last = path.rpartition(".")
    if any(ch in last for ch in "*?["):
        parent = get_path(record, head) if head else record
        if not isinstance(parent, dict):
            raise RecordError(path, "expected an object holding the session keys")
        keys = sorted((k for k in parent if fnmatch.fnmatchcase(str(k), last)), key=_number)
        if not keys:
            raise RecordError(path, "no key matches the session pattern")
        return [(f"{k}.", parent[k]) for k in keys]
    sessions = get_path(record, path)
    if not isinstance(sessions, list):
        raise RecordError(path, f"expected a list of sessions, found {type(sessions).__name__}")
    return [(f"{path}.{i}.", s) for i, s in enumerate(sessions)]


def is_gold(value: Any) -> bool:
    return value is not None and value not in ("", [], {}, False)


def _text(value: Any, key: str) -> str:
    if value is None:
        raise RecordError(key, "is null")
    if isinstance(value, dict | list):
        raise RecordError(key, f"expected text, found {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_TEXT_CHARS:
        raise RecordError(key, f"{len(text)} characters (at most {MAX_TEXT_CHARS})")
    return text


def _turns(session: Any, mapping: DialogueMapping, label: str) -> list[tuple[str, str, bool]]:
    if mapping.turns is None:  # parallel lists
        speakers = get_path(session, mapping.speaker, label)
        texts = get_path(session, mapping.text, label)
        golds = _optional(session, mapping.gold, label)
        if not isinstance(speakers, list) or not isinstance(texts, list):
            raise RecordError(label + mapping.text, "expected parallel lists of speakers and texts")
        if len(speakers) != len(texts):
            raise RecordError(
                label + mapping.text, f"{len(texts)} texts for {len(speakers)} speakers"
            )
        golds = (
            golds if isinstance(golds, list) and len(golds) == len(texts) else [None] * len(texts)
        )
        items = [
            (
                _text(s, f"{label}{mapping.speaker}.{i}"),
                _text(t, f"{label}{mapping.text}.{i}"),
                is_gold(g),
            )
            for i, (s, t, g) in enumerate(zip(speakers, texts, golds, strict=True))
        ]
    else:
        turns = get_path(session, mapping.turns, label)
        if not isinstance(turns, list):
            raise RecordError(
                label + mapping.turns, f"expected a list, found {type(turns).__name__}"
            )
        items = []
        for i, turn in enumerate(turns):
            where = f"{label}{mapping.turns}.{i}."
            speaker = _text(get_path(turn, mapping.speaker, where), where + mapping.speaker)
            text = _text(get_path(turn, mapping.text, where), where + mapping.text)
            items.append((speaker, text, is_gold(_optional(turn, mapping.gold, where))))
    if not items:
        raise RecordError(label + (mapping.turns or mapping.text), "a session with no turns")
    if len(items) > MAX_TURNS:
        raise RecordError(label + (mapping.turns or mapping.text), f"over {MAX_TURNS} turns")
    return items


def parse_date(value: Any) -> str | None:
    """An ISO date from the common spellings, or None (a date is optional)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.strftime("%Y-%m-%d")
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()[:40]
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text[: len(text)], fmt).date().isoformat()
        except ValueError:
            continue
    try:
        return dt.datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        return None


def read_dialogue(record: Any, mapping: DialogueMapping, position: int) -> dict[str, Any]:
    """The dialogue in ``record``: ``{"source_id", "sessions": [{"date", "turns": [{"speaker",
    "text"}]}], "gold_turns"}``; gold turns are 1-based ``[session, turn]`` positions, kept
    apart from the turns, or None when the mapping declares no gold marker."""
    source_id = None
    if mapping.id:
        raw = get_path(record, mapping.id)
        source_id = _text(raw, mapping.id)[:512]
    sessions_out, gold = [], []
    sessions = _sessions(record, mapping)
    if len(sessions) > MAX_SESSIONS:
        raise RecordError(mapping.sessions or "sessions", f"over {MAX_SESSIONS} sessions")
    for number, (label, session) in enumerate(sessions, start=1):
        turns = _turns(session, mapping, label)
        date = parse_date(_optional(session, mapping.date, label))
        sessions_out.append(
            {"date": date, "turns": [{"speaker": s, "text": t} for s, t, _ in turns]}
        )
        gold += [[number, i] for i, (_, _, g) in enumerate(turns, start=1) if g]
    if not sessions_out:
        raise RecordError(mapping.sessions or "sessions", "no sessions")
    return {
        "source_id": source_id,
        "sessions": sessions_out,
        "gold_turns": gold if mapping.gold else None,
    }
