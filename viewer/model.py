"""View models: what the episode template shows, derived from a validated :class:`Episode`.

Templates stay free of lookups; everything cross-referenced (a turn's image request, a
removal mark's target, the gap between sessions) is resolved here once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from mcu_sim.graphs.filters import shown_album_photo
from mcu_sim.personas.intervals import describe_gap
from mcu_sim.personas.schema import (
    ASSISTANT,
    DeviceImage,
    Episode,
    ImageRecord,
    ImageRequest,
    PersonaAttribute,
    Removal,
    Session,
    Turn,
)
from mcu_sim.viewer.images import ImageResolver

TARGET = re.compile(r"^(?:(episode)|persona\[(\d+)\]|session\[(\d+)\]|image:([^#]+)(?:#(\d+))?)$")


@dataclass
class Marks:
    """Removal marks grouped by what they point at (see ``graphs/filters.py`` targets)."""

    episode: list[Removal] = field(default_factory=list)
    persona: dict[int, list[Removal]] = field(default_factory=lambda: defaultdict(list))
    session: dict[int, list[Removal]] = field(default_factory=lambda: defaultdict(list))
    image: dict[tuple[str, int], list[Removal]] = field(default_factory=lambda: defaultdict(list))
    other: list[Removal] = field(default_factory=list)

    @classmethod
    def of(cls, removals: list[Removal]) -> Marks:
        marks = cls()
        for removal in removals:
            match = TARGET.match(removal.target.strip())
            if not match:
                marks.other.append(removal)
            elif match.group(1):
                marks.episode.append(removal)
            elif match.group(2) is not None:
                marks.persona[int(match.group(2))].append(removal)
            elif match.group(3) is not None:
                marks.session[int(match.group(3))].append(removal)
            else:
                marks.image[(match.group(4), int(match.group(5) or 0))].append(removal)
        return marks

    def for_image(self, request_id: str, position: int = 0) -> list[Removal]:
        return self.image.get((request_id, position), [])


@dataclass
class Picture:
    """One image slot: the picture itself or a placeholder that says why it is missing."""

    request_id: str
    status: str
    src: str | None
    problem: str | None
    caption: str
    tooltip: str
    module: str | None
    marks: list[Removal]
    alternatives: list[Picture] = field(default_factory=list)
    width: int | None = None
    height: int | None = None


@dataclass
class Bubble:
    turn: Turn
    side: str  # "user" | "assistant"
    picture: Picture | None


@dataclass
class SessionView:
    session: Session
    gap: str | None
    previous: int | None
    marks: list[Removal]
    bubbles: list[Bubble]


@dataclass
class AlbumView:
    image: DeviceImage
    picture: Picture | None


@dataclass
class EpisodeView:
    episode: Episode
    face: Picture | None
    persona: list[tuple[PersonaAttribute, list[Removal]]]
    album: list[AlbumView]
    sessions: list[SessionView]
    marks: Marks
    requests: list[ImageRequest]
    counts: dict[str, int]


def fmt_score(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def scores_text(scores: dict[str, float | str | None]) -> str:
    return ", ".join(f"{k}={fmt_score(v)}" for k, v in sorted(scores.items()))


def tooltip(request: ImageRequest, record: ImageRecord | None, rationale: str | None) -> str:
    lines = [
        f"request: {request.id} ({request.origin}, {request.status})",
        f"module: {(record.module if record else None) or request.module or 'none'}",
        f"description: {request.description}",
    ]
    if request.planned_description and request.planned_description != request.description:
        lines.append(f"planned description: {request.planned_description}")
    if rationale:
        lines.append(f"rationale: {rationale}")
    if request.keywords:
        lines.append(f"keywords: {', '.join(request.keywords)}")
    if request.image_source:
        lines.append(f"source: {request.image_source}")
    if record is not None:
        if record.scores:
            lines.append(f"QA scores: {scores_text(record.scores)}")
        lines.append(f"size: {record.width}x{record.height}")
        if record.source_url:
            lines.append(f"url: {record.source_url}")
        if record.db_id:
            lines.append(f"database id: {record.db_id}")
        if record.seed is not None:
            lines.append(f"seed: {record.seed}")
    if request.reason:
        lines.append(f"reason: {request.reason}")
    if request.attempts:
        lines.append(f"attempts logged: {len(request.attempts)}")
    return "\n".join(lines)


def picture(
    request: ImageRequest, resolve: ImageResolver, marks: Marks, rationale: str | None = None
) -> Picture:
    record = request.image if request.status == "aligned" else None
    found = resolve(record) if record else None
    if record is None:
        problem = request.reason or f"image request {request.status}"
    else:
        problem = found.problem if found else None
    alternatives = []
    for position, alt in enumerate(request.alternatives, start=1):
        alt_found = resolve(alt)
        alternatives.append(
            Picture(
                request.id,
                "alternative",
                alt_found.src,
                alt_found.problem,
                f"alternative {position}",
                f"alternative {position} ({alt.module})\nQA scores: {scores_text(alt.scores)}",
                alt.module,
                marks.for_image(request.id, position),
                width=alt.width,
                height=alt.height,
            )
        )
    return Picture(
        request_id=request.id,
        status=request.status,
        src=found.src if found else None,
        problem=problem,
        caption=request.description,
        tooltip=tooltip(request, record, rationale),
        module=(record.module if record else None) or request.module,
        marks=marks.for_image(request.id),
        alternatives=alternatives,
        width=record.width if record else None,
        height=record.height if record else None,
    )


def face_picture(episode: Episode, resolve: ImageResolver) -> Picture | None:
    face = episode.face
    if face is None:  # an augmented dialogue has no simulated person
        return None
    found = resolve(face.image) if face.image else None
    problem = found.problem if found else (face.reason or f"no portrait (face {face.status})")
    lines = [f"status: {face.status}", f"seed: {face.seed}", f"prompt: {face.prompt}"]
    if face.image is not None:
        lines.append(f"module: {face.image.module}")
        if face.image.scores:
            lines.append(f"QA scores: {scores_text(face.image.scores)}")
    return Picture(
        "face",
        face.status,
        found.src if found else None,
        problem,
        face.prompt,
        "\n".join(lines),
        face.image.module if face.image else None,
        [],
        width=face.image.width if face.image else None,
        height=face.image.height if face.image else None,
    )


def build_sessions(
    episode: Episode, requests: dict[str, ImageRequest], resolve: ImageResolver, marks: Marks
) -> list[SessionView]:
    views: list[SessionView] = []
    previous: Session | None = None
    # A turn showing an album photo carries a copy of its record; the filter marks sit on the
    # album request, so they are looked up there too.
    album_sources = shown_album_photo(episode)
    for session in episode.sessions:
        bubbles = []
        for turn in session.turns:
            side = "assistant" if turn.speaker == ASSISTANT else "user"
            request = requests.get(turn.request_id or "")
            shown = None
            if request is not None:
                rationale = turn.sharing.rationale if turn.sharing else None
                shown = picture(request, resolve, marks, rationale)
                if request.id in album_sources:
                    shown.marks = [*shown.marks, *marks.for_image(album_sources[request.id])]
            bubbles.append(Bubble(turn, side, shown))
        dated = previous and previous.date and session.date
        gap = describe_gap(previous.date, session.date) if dated else None  # type: ignore[union-attr]
        views.append(
            SessionView(
                session,
                gap,
                previous.index if previous else None,
                marks.session.get(session.index, []),
                bubbles,
            )
        )
        previous = session
    return views


def build_view(episode: Episode, resolve: ImageResolver) -> EpisodeView:
    marks = Marks.of(episode.removals)
    requests = {r.id: r for r in episode.image_requests}
    album = []
    for image in episode.device_images:
        request = requests.get(image.request_id or "")
        album.append(AlbumView(image, picture(request, resolve, marks) if request else None))
    sessions = build_sessions(episode, requests, resolve, marks)
    aligned = sum(1 for r in episode.image_requests if r.status == "aligned")
    counts = {
        "sessions": len(episode.sessions),
        "turns": sum(len(s.turns) for s in episode.sessions),
        "sharing": sum(1 for s in episode.sessions for t in s.turns if t.sharing),
        "requests": len(episode.image_requests),
        "aligned": aligned,
        "removals": len(episode.removals),
    }
    return EpisodeView(
        episode=episode,
        face=face_picture(episode, resolve),
        persona=[(a, marks.persona.get(i, [])) for i, a in enumerate(episode.persona or [])],
        album=album,
        sessions=sessions,
        marks=marks,
        requests=episode.image_requests,
        counts=counts,
    )
