"""The layout STARK's released generation code writes: ``make_final_dataset.py`` then
``postprocess_final_dataset.py`` (github.com/passing2961/Stark). A JSON array of episodes;
every value is the ``str()`` of what the pipeline held (Python-literal strings included),
except each session's dialogue, which the post-processing turned into a real list.

Session keys keep the release's spelling, its ``seesion`` typo included: ``session{n}:
mobile_device`` (album at the session's start, ids from 0), ``session{n}:dialogue``,
``session{n}:last_added_mobile_device_image`` (last session only), and
``seesion{n}:dialogue:{history_event,event,date,time_interval,experience}``. Session 1 has
no time interval or experience: pandas wrote ``nan`` there, and so do we.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mcu_sim.dataset.files import write_lines
from mcu_sim.dataset.stark_common import (
    MAX_LITERAL,
    MAX_SESSIONS,
    MAX_TURNS,
    NON_VERBAL,
    RecordError,
    bounded_text,
    stark_view,
)
from mcu_sim.personas.schema import Episode

MISSING = "nan"  # str(float("nan")): what the release holds where a session has no value
MAX_FILE = 4_000_000_000  # bytes of one JSON array file


def json_record(episode: Episode) -> dict[str, Any]:
    """One episode as the post-processed release stores it."""
    view = stark_view(episode)
    sessions = view["sessions"]
    history: list[str] = []
    blocks = []
    for number, session in enumerate(sessions, start=1):
        history.append(f"- {session['date']}: {session['event']}")
        album = [
            {"image_id": i, "image_description": a["description"]}
            for i, a in enumerate(session["album"])
        ]
        dialogue = []
        for turn in session["turns"]:
            sharing: Any = turn["sharing"] or ""
            utterance = turn["utterance"]
            if utterance == "" and not sharing:
                utterance = NON_VERBAL
            dialogue.append(
                {"utter_id": turn["id"], "speaker": turn["speaker"], "utter": utterance}
                | {"sharing_info": sharing}
            )
        block = {
            f"seesion{number}:dialogue:history_event": str(list(history)),
            f"seesion{number}:dialogue:event": session["event"],
            f"seesion{number}:dialogue:date": session["date"],
            f"seesion{number}:dialogue:time_interval": session["time_interval"] or MISSING,
            f"seesion{number}:dialogue:experience": session["experience"] or MISSING,
            f"session{number}:mobile_device": str(album),
            f"session{number}:dialogue": dialogue,
        }
        if number == len(sessions):
            final = [
                {"image_id": i, "image_description": d} for i, d in enumerate(view["final_album"])
            ]
            block[f"session{number}:last_added_mobile_device_image"] = str(final)
        blocks.append(block)
    return {
        "unique_id": view["unique_id"],
        "name": view["name"],
        "age": view["age"],
        "gender": view["gender"],
        "birthplace": view["birthplace"],
        "residence": view["residence"],
        "persona_category": view["persona_category"],
        "persona-attr:sent": view["persona_sentence"],
        "persona-attr:key": view["persona_key"],
        "persona-attr:value": view["persona_value"],
        "commonsense_relation": view["relation"],
        "narrative_sentence_form": view["sentence_form"],
        "event-sequence": str(view["events"]),
        "episode": blocks,
    }


def write_stark_json(episodes: Iterable[Episode], target: Path) -> int:
    """A JSON array written element by element (tab-indented like the release)."""
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        yield "["
        for episode in episodes:
            text = json.dumps(json_record(episode), ensure_ascii=False, indent="\t")
            yield ("," if count else "") + text
            count += 1
        yield "]"

    write_lines(target, lines())
    return count


# ---------------------------------------------------------------- reading


def literal(value: Any, position: str, field: str) -> Any:
    """A value the release stores as ``str()`` of a Python object: parsed with
    ``ast.literal_eval`` (never ``eval``) after a size bound; real JSON values pass."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_LITERAL:
        raise RecordError(position, f"{field} is {len(value):,} characters long")
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise RecordError(position, f"{field} is not a Python literal") from None


def _missing(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return "" if text in (MISSING, "None") else text


def _session_value(block: dict[str, Any], number: int, name: str) -> Any:
    for key in (f"seesion{number}:dialogue:{name}", f"session{number}:dialogue:{name}"):
        if key in block:
            return block[key]
    return ""


def record_from_json(item: Any, position: str) -> dict[str, Any]:
    """One released element as the neutral record the importer validates."""
    if not isinstance(item, dict):
        raise RecordError(position, "is not a JSON object")
    blocks = item.get("episode")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= MAX_SESSIONS:
        raise RecordError(position, "'episode' must be a list of 1 to 50 sessions")
    sessions: list[dict[str, Any]] = []
    album: list[dict[str, Any]] = []
    for number, block in enumerate(blocks, start=1):
        where = f"{position} session {number}"
        if not isinstance(block, dict):
            raise RecordError(where, "is not a JSON object")
        dialogue = literal(block.get(f"session{number}:dialogue", []), where, "dialogue")
        if not isinstance(dialogue, list):
            raise RecordError(where, "dialogue is not a list")
        if len(dialogue) > MAX_TURNS:
            raise RecordError(where, f"{len(dialogue):,} turns (limit {MAX_TURNS:,})")
        if number == 1:
            device = literal(block.get("session1:mobile_device", "[]"), where, "mobile_device")
            if not isinstance(device, list):
                raise RecordError(where, "mobile_device is not a list")
            album = [
                {"description": bounded_text(d.get("image_description"), where, "album")}
                | {"image": None, "module": None}
                for d in device
                if isinstance(d, dict)
            ]
        turns = []
        for n, turn in enumerate(dialogue, start=1):
            if not isinstance(turn, dict):
                raise RecordError(f"{where} turn {n}", "is not an object")
            utterance = bounded_text(turn.get("utter"), f"{where} turn {n}", "utter")
            sharing = turn.get("sharing_info") or None
            if isinstance(sharing, list):  # several images in one turn: the first is kept
                sharing = sharing[0] if sharing else None
            turns.append(
                {
                    "id": turn.get("utter_id", n),
                    "speaker": turn.get("speaker", ""),
                    "utterance": "" if utterance == NON_VERBAL else utterance,
                    "sharing": sharing,
                    "image": None,
                    "module": None,
                }
            )
        sessions.append(
            {
                "date": _missing(_session_value(block, number, "date")),
                "event": _missing(_session_value(block, number, "event")),
                "time_interval": _missing(_session_value(block, number, "time_interval")),
                "experience": _missing(_session_value(block, number, "experience")),
                "turns": turns,
            }
        )
    text = {
        k: bounded_text(item.get(k), position, k)
        for k in ("name", "age", "gender", "birthplace", "residence", "persona_category")
    }
    return {
        "position": position,
        "unique_id": str(item.get("unique_id") or ""),
        **text,
        "human_face_description": "",
        "face_image": None,
        "persona_sentence": bounded_text(item.get("persona-attr:sent"), position, "persona"),
        "persona_entity_key": bounded_text(item.get("persona-attr:key"), position, "key"),
        "persona_entity_value": bounded_text(item.get("persona-attr:value"), position, "value"),
        "persona_commonsense_relation": str(item.get("commonsense_relation") or ""),
        "persona_commonsense_inference": "",
        "narrative_sentence_form": bounded_text(
            item.get("narrative_sentence_form"), position, "narrative_sentence_form"
        ),
        "events": literal(item.get("event-sequence", "[]"), position, "event-sequence"),
        "album": album,
        "sessions": sessions,
    }


def iter_items(path: Path) -> Iterator[tuple[Any, Path, str]]:
    """Elements of one JSON array file (or of every ``*.json`` in a folder)."""
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    for file in files:
        if file.stat().st_size > MAX_FILE:
            raise RecordError(file.name, f"is {file.stat().st_size:,} bytes (limit {MAX_FILE:,})")
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise RecordError(file.name, "is not a JSON array of episodes")
        root = file.parent
        for number, item in enumerate(data, start=1):
            yield item, root, f"{file.name} item {number}"
