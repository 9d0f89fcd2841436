"""What the two released STARK layouts share: names, id and value mappings, size limits, and
one episode seen the way STARK sees it (a single persona sentence and commonsense relation,
an album indexed from 0, one image per sharing turn).

The released layouts are described in ``docs/stark_layouts.md``. ``stark_hf`` and
``stark_json`` turn an :class:`Episode` into rows through :func:`stark_view` and turn rows
back into the neutral record that :mod:`mcu_sim.dataset.importer` validates.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mcu_sim.personas.schema import Commonsense, Episode, ImageRecord, PersonaAttribute

# PEACOK relation names as STARK spells them (utils/persona_utils.py) <-> ours.
RELATION_TO_STARK = {
    "routine_habit": "routine",
    "characteristic": "characteristic",
    "experience": "experience",
    "goal_plan": "goal",
    "relationship": "relationship",
}
RELATION_FROM_STARK = {v: k for k, v in RELATION_TO_STARK.items()}
# Aligner module names as the stark-dialogue card spells them <-> ours.
MODULE_TO_STARK = {"personalized_t2i": "p-t2i", "retrieval": "retrieval", "web_search": "web"}
MODULE_FROM_STARK = {v: k for k, v in MODULE_TO_STARK.items()}
NEW_IMAGE = "new added image"  # STARK's image_id_from_mobile for a photo new to the album
NON_VERBAL = "<non verbal>"  # postprocess_final_dataset.py's text for an empty turn

# Refuse, rather than load, records no real dialogue reaches.
MAX_SESSIONS = 50
MAX_TURNS = 1_000
MAX_TEXT = 100_000  # characters in one value (an utterance, a description)
MAX_LITERAL = 5_000_000  # characters of one Python-literal or JSON string before parsing

_STARK_ID = re.compile(r"^(\d{1,6}):([A-Za-z0-9._-]{1,100})$")
_OURS_FROM_STARK = re.compile(r"^stark-(\d{1,6})-([A-Za-z0-9._-]{1,100})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class RecordError(ValueError):
    """One imported record is refused; ``position`` says where it was."""

    def __init__(self, position: str, message: str) -> None:
        super().__init__(f"{position}: {message}")
        self.position = position


def stark_unique_id(episode_id: str) -> str:
    """Our id in STARK's ``{seed}:{id}-{relation}`` form when it came from there."""
    match = _OURS_FROM_STARK.match(episode_id)
    return f"{match.group(1)}:{match.group(2)}" if match else episode_id


def episode_id_from_stark(unique_id: str) -> str:
    """STARK's ``0:<uuid>-experience`` becomes ``stark-0-<uuid>-experience`` (reversible);
    any other id keeps what the episode-id pattern allows."""
    match = _STARK_ID.match(unique_id)
    if match:
        return f"stark-{match.group(1)}-{match.group(2)}"
    cleaned = _UNSAFE.sub("_", unique_id)[:128].lstrip("._-")
    return cleaned or "stark-unnamed"


def safe_key(key: str, position: str) -> str:
    """An image key or path from imported data: relative and inside the input folder."""
    if len(key) > 1_000 or "\x00" in key:
        raise RecordError(position, "image key is not a plausible key")
    for pure in (PurePosixPath(key), PureWindowsPath(key)):
        if pure.is_absolute() or pure.drive or pure.root:
            raise RecordError(position, f"image key {key[:80]!r} is an absolute path")
        if ".." in pure.parts:
            raise RecordError(position, f"image key {key[:80]!r} climbs out of the input folder")
    return key


def inside(root: Path, path: Path) -> bool:
    """``path`` (symlinks resolved) lies under ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def bounded_text(value: Any, position: str, field: str) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT:
        raise RecordError(position, f"{field} has {len(text):,} characters (limit {MAX_TEXT:,})")
    return text


# ---------------------------------------------------------------- one episode as STARK sees it


def focus(episode: Episode) -> tuple[PersonaAttribute, Commonsense | None]:
    """The persona sentence and commonsense inference the narrative was built from (STARK
    keeps one of each per episode): the ones its sentence form quotes, else the first."""
    form = episode.narrative.sentence_form
    attribute = next((a for a in episode.persona if a.sentence in form), episode.persona[0])
    same = [c for c in episode.commonsense if c.relation == episode.narrative.relation]
    inference = next((c for c in same if c.text in form), same[0] if same else None)
    return attribute, inference


def event_numbers(episode: Episode) -> dict[int, int]:
    """Our event ids -> STARK's, where session n is event n: the sessions' events first, in
    session order, then any others in date order."""
    order = [s.event_id for s in episode.sessions]
    order += [e.id for e in episode.events.chronological() if e.id not in order]
    return {event_id: n for n, event_id in enumerate(order, start=1)}


def album_positions(episode: Episode) -> dict[int, int]:
    """Our album ids (from 1, in order added) -> STARK's list positions (from 0)."""
    ordered = sorted(episode.device_images, key=lambda d: (d.added_in_session, d.id))
    return {d.id: n for n, d in enumerate(ordered)}


def album_images(episode: Episode) -> dict[int, ImageRecord | None]:
    """The image of each album entry: its album request's, else the sharing request that
    added it to the album."""
    by_id = {r.id: r for r in episode.image_requests}
    found: dict[int, ImageRecord | None] = {}
    for device in episode.device_images:
        request = next(
            (
                r
                for r in episode.image_requests
                if r.origin == "album" and r.device_image_id == device.id
            ),
            by_id.get(device.request_id or ""),
        )
        found[device.id] = request.image if request and request.status == "aligned" else None
    return found


def stark_view(episode: Episode) -> dict[str, Any]:
    """The episode reduced to what STARK's layouts can hold (plain values, dates as
    ``YYYY.MM.DD``); both exporters format this."""
    attribute, inference = focus(episode)
    positions = album_positions(episode)
    images = album_images(episode)
    requests = {r.id: r for r in episode.image_requests}
    numbers = event_numbers(episode)
    ordered = sorted(episode.device_images, key=lambda d: positions[d.id])
    sessions = []
    for session in episode.sessions:
        turns = []
        for turn in session.turns:
            sharing, image = None, None
            if turn.sharing:
                ref = turn.sharing.image_id_from_mobile
                sharing = {
                    "rationale": turn.sharing.rationale,
                    "image_description": turn.sharing.image_description,
                    "image_source": turn.sharing.image_source,
                    "keywords": list(turn.sharing.keywords),
                    "image_id_from_mobile": (
                        NEW_IMAGE if ref == "new" else "" if ref is None else positions[ref]
                    ),
                }
                request = requests.get(turn.request_id or "")
                if request and request.status == "aligned":
                    image = request.image
            turns.append(
                {"id": turn.id, "speaker": turn.speaker, "utterance": turn.utterance}
                | {"sharing": sharing, "image": image}
            )
        sessions.append(
            {
                "index": session.index,
                "date": session.date.strftime("%Y.%m.%d"),
                "event": session.event,
                "time_interval": session.time_interval or "",
                "experience": session.experience or "",
                "album": [
                    {"description": d.description, "image": images[d.id]}
                    for d in ordered
                    if d.added_in_session < session.index
                ],
                "turns": turns,
            }
        )
    demo = episode.demographics
    return {
        "unique_id": stark_unique_id(episode.episode_id),
        "name": demo.name,
        "age": str(demo.age),
        "gender": demo.gender.capitalize(),
        "birthplace": demo.birthplace,
        "residence": demo.residence,
        "face_description": episode.face.prompt,
        "face_image": episode.face.image if episode.face.status == "generated" else None,
        "persona_category": episode.persona_category,
        "persona_sentence": attribute.sentence,
        "persona_key": attribute.entity.key,
        "persona_value": attribute.entity.value,
        "relation": RELATION_TO_STARK[episode.narrative.relation],
        "inference": inference.text if inference else "",
        "sentence_form": episode.narrative.sentence_form,
        "events": [
            {
                "id": numbers[e.id],
                "event": e.event,
                "date": e.date.strftime("%Y.%m.%d"),
                "caused_by": (
                    {
                        "caused_by:id": numbers[e.caused_by.id],
                        "caused_by:time_interval": e.caused_by.time_interval,
                        "caused_by:experience_op": e.caused_by.experience_op,
                        "caused_by:experience": e.caused_by.experience,
                    }
                    if e.caused_by
                    else {}
                ),
            }
            for e in sorted(episode.events.events, key=lambda e: numbers[e.id])
        ],
        "final_album": [d.description for d in ordered],
        "sessions": sessions,
    }
