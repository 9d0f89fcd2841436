"""What the judge is shown of an episode, and which criteria apply to it.

Episodes are read as plain dicts, so runs of every kind work: MCU episodes, augmented
dialogues (no persona, no events, one session) and imported records. Code decides which
criteria apply, from what the episode holds; the model is only asked about those:

- coherence: always (there is a dialogue);
- consistency: two sessions or more (there are past sessions to contradict);
- image-sharing turn relevance: at least one shared image;
- image-dialogue relevance: at least one shared image that was aligned (has a picture);
- image-persona relevance: the same, and a persona;
- time interval: a later session states the time since the one before;
- experience: a session states the user's experience.

Shared images are listed with their descriptions; with ``vision`` the pictures themselves
go along as OpenAI image content parts (base64 ``data:`` URLs of the run's files, read
through the viewer's resolver, which refuses paths outside the run and files that are not
images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.agents.judge import RATING_CRITERIA, VERSUS_CRITERIA
from mcu_sim.personas.schema import ImageRecord
from mcu_sim.viewer.images import ImageResolver


@dataclass
class Shown:
    """An episode (or one session) as the judge sees it."""

    view: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)  # content parts
    criteria: tuple[str, ...] = ()
    not_applicable: dict[str, str] = field(default_factory=dict)  # criterion -> why


@dataclass
class _Picture:
    label: str
    description: str
    record: dict[str, Any] | None  # the aligned image, if any


class ImageParts:
    """Makes image content parts from a run's files (``vision``), bounded in number."""

    def __init__(self, run_dir: Path, vision: bool, detail: str, limit: int) -> None:
        self.resolver = ImageResolver(run_dir, run_dir, embed=True) if vision else None
        self.detail = detail
        self.limit = limit

    def parts(self, pictures: list[_Picture]) -> tuple[list[dict[str, Any]], set[str]]:
        """(content parts, labels of the pictures attached)."""
        if self.resolver is None:
            return [], set()
        parts: list[dict[str, Any]] = []
        attached: set[str] = set()
        for picture in pictures:
            if picture.record is None or len(attached) >= self.limit:
                continue
            source = self.resolver(ImageRecord.model_validate(picture.record))
            if source.src is None:
                continue
            parts.append({"type": "text", "text": f"Image {picture.label}:"})
            parts.append(
                {"type": "image_url", "image_url": {"url": source.src, "detail": self.detail}}
            )
            attached.add(picture.label)
        return parts, attached


def _user_name(episode: dict[str, Any]) -> str | None:
    return ((episode.get("demographics") or {}).get("name")) or None


def _session_lines(
    session: dict[str, Any], requests: dict[str, dict[str, Any]], prefix: str, start: int
) -> tuple[list[str], list[_Picture]]:
    lines: list[str] = []
    pictures: list[_Picture] = []
    for turn in session.get("turns") or []:
        speaker = turn.get("speaker") or "?"
        if turn.get("utterance"):
            lines.append(f"{speaker}: {turn['utterance']}")
        sharing = turn.get("sharing")
        if not sharing:
            continue
        label = f"{prefix}{start + len(pictures)}"
        request = requests.get(turn.get("request_id") or "") or {}
        aligned = request.get("status") == "aligned" and request.get("image")
        description = sharing.get("image_description") or request.get("description") or ""
        lines.append(f"[{speaker} shares image {label}: {description}]")
        pictures.append(_Picture(label, description, request["image"] if aligned else None))
    return lines, pictures


def _session_view(session: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    return {
        "index": session.get("index"),
        "date": session.get("date"),
        "time_interval": session.get("time_interval"),
        "event": session.get("event"),
        "experience": session.get("experience"),
        "lines": lines,
    }


def _requests(episode: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r.get("id", ""): r for r in episode.get("image_requests") or []}


def _image_list(pictures: list[_Picture], attached: set[str]) -> list[dict[str, Any]]:
    return [
        {"label": p.label, "description": p.description, "attached": p.label in attached}
        for p in pictures
    ]


def show_episode(episode: dict[str, Any], images: ImageParts) -> Shown:
    """The rating view of ``episode``: persona, sessions, images, applicable criteria."""
    requests = _requests(episode)
    sessions, pictures = [], []
    for session in episode.get("sessions") or []:
        lines, found = _session_lines(session, requests, "#", len(pictures) + 1)
        sessions.append(_session_view(session, lines))
        pictures += found
    persona = [p.get("sentence", "") for p in episode.get("persona") or [] if p.get("sentence")]
    parts, attached = images.parts(pictures)
    view = {
        "name": _user_name(episode),
        "persona": persona,
        "sessions": sessions,
        "images": _image_list(pictures, attached),
        "images_attached": bool(attached),
    }
    why = _not_applicable(sessions, pictures, persona)
    criteria = tuple(c for c in RATING_CRITERIA if c not in why)
    return Shown(view, parts, criteria, why)


def _not_applicable(
    sessions: list[dict[str, Any]], pictures: list[_Picture], persona: list[str]
) -> dict[str, str]:
    why: dict[str, str] = {}
    if len(sessions) < 2:
        why["consistency"] = "a single session: no past session to contradict"
    if not pictures:
        for name in ("image_sharing_turn_relevance", "image_dialogue_relevance"):
            why[name] = "no image is shared"
    elif not any(p.record for p in pictures):
        why["image_dialogue_relevance"] = "no shared image was aligned (no picture)"
    if "image_dialogue_relevance" in why:
        why["image_persona_relevance"] = why["image_dialogue_relevance"]
    elif not persona:
        why["image_persona_relevance"] = "the episode has no persona"
    if not any(s.get("time_interval") for s in sessions[1:]):
        why["time_interval"] = "no session states the time since the previous one"
    if not any(s.get("experience") for s in sessions):
        why["experience"] = "no session states the user's experience"
    return why


def show_session(
    episode: dict[str, Any], session_index: int, prefix: str, images: ImageParts
) -> Shown:
    """One session of ``episode`` as a head-to-head dialogue (images labelled ``prefix``1…)."""
    session = next(s for s in episode["sessions"] if s.get("index") == session_index)
    lines, pictures = _session_lines(session, _requests(episode), prefix, 1)
    parts, attached = images.parts(pictures)
    view = {
        "lines": lines,
        "images": _image_list(pictures, attached),
        "images_attached": bool(attached),
    }
    return Shown(view, parts, (), {})


def versus_criteria(first: Shown, second: Shown) -> tuple[tuple[str, ...], dict[str, str]]:
    """The head-to-head criteria that apply to this pair (image ones need an image)."""
    why: dict[str, str] = {}
    if not first.view["images"] and not second.view["images"]:
        why["image_sharing_turn_relevance"] = "neither dialogue shares an image"
        why["image_dialogue_consistency"] = "neither dialogue shares an image"
    return tuple(c for c in VERSUS_CRITERIA if c not in why), why
