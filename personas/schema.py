"""The episode schema: everything one simulation produces, versioned and cross-validated.

Graph state stores these models as plain dicts (``model_dump(mode="json")``) so any
checkpointer can serialize them; :class:`Episode` validates the assembled whole.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcu_sim.personas.intervals import parse_interval
from mcu_sim.personas.source import SourceRecord

SCHEMA_VERSION = "1.0"
ASSISTANT = "AI Assistant"
DATE_FORMAT = "%Y.%m.%d"
# Episode ids name files (episodes/<id>.json, view/<id>.html): a letter or digit first,
# then letters, digits, ".", "_" or "-" only, so an id can never be a path.
EPISODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

Gender = Literal["male", "female"]
Relation = Literal["routine_habit", "characteristic", "experience", "goal_plan", "relationship"]
ExperienceOp = Literal["add", "update"]
ImageSource = Literal["internet", "mobile"]
RequestStatus = Literal["pending", "aligned", "unaligned"]
TimeUnit = Literal["hour", "day", "week", "month", "year"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ the person


class Demographics(Model):
    age_group: str = Field(pattern=r"^\d{2}-\d{2}$")
    age: int = Field(ge=1, le=120)
    gender: Gender
    birthplace: str
    residence: str
    name: str = Field(min_length=1, max_length=40)

    def sentence(self) -> str:
        return (
            f"I am a {self.age}-year-old {self.gender}. I was born in {self.birthplace}, "
            f"I currently reside in {self.residence}."
        )

    @model_validator(mode="after")
    def _age_in_group(self) -> Demographics:
        low, high = (int(x) for x in self.age_group.split("-"))
        if not low <= self.age <= high:
            raise ValueError(f"age {self.age} is outside its group {self.age_group}")
        return self


class ImageRecord(Model):
    """An image on disk beside the episode. State never holds pixels, only this."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    module: str
    source_url: str | None = None
    db_id: str | None = None
    seed: int | None = None
    scores: dict[str, float | str | None] = Field(default_factory=dict)


class Face(Model):
    prompt: str
    attributes: dict[str, str]
    seed: int
    status: Literal["pending", "generated", "unavailable"] = "pending"
    reason: str | None = None
    image: ImageRecord | None = None


class PersonaEntity(Model):
    key: str = Field(min_length=1, max_length=60)
    value: str = Field(min_length=1, max_length=120)


class PersonaAttribute(Model):
    """A persona sentence and its triple ``(e1, r, e2)``; ``e2`` is a key-value entity."""

    sentence: str = Field(min_length=3, max_length=300)
    subject: str = "I"
    relation: str
    entity: PersonaEntity

    @property
    def triple(self) -> tuple[str, str, tuple[str, str]]:
        return (self.subject, self.relation, (self.entity.key, self.entity.value))

    def dedup_key(self) -> tuple[str, str, str]:
        return (self.relation.lower(), self.entity.key.lower(), self.entity.value.strip().lower())


class Commonsense(Model):
    relation: Relation
    text: str = Field(min_length=2, max_length=300)


class Narrative(Model):
    relation: Relation
    sentence_form: str
    narrative: str = Field(min_length=10)


# ------------------------------------------------------------------ events


class CausedBy(Model):
    id: int
    time_interval: str
    experience_op: ExperienceOp
    experience: str = Field(min_length=2, max_length=400)

    @field_validator("time_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        amount, unit = parse_interval(value)
        return f"{amount} {unit}"


class Event(Model):
    id: int = Field(ge=1)
    event: str = Field(min_length=5, max_length=800)
    date: dt.date
    time: dt.time | None = Field(
        None, description="Time of day, derived by code so hour intervals keep their hours."
    )
    caused_by: CausedBy | None = None


class EventGraph(Model):
    """Temporal event graph. Ids are unique, edges resolve, dates never go backwards."""

    events: list[Event] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> EventGraph:
        by_id: dict[int, Event] = {}
        for event in self.events:
            if event.id in by_id:
                raise ValueError(f"event id {event.id} appears twice")
            by_id[event.id] = event
        for event in self.events:
            edge = event.caused_by
            if edge is None:
                continue
            cause = by_id.get(edge.id)
            if cause is None:
                raise ValueError(
                    f"event {event.id} is caused_by event {edge.id}, which does not exist "
                    f"(ids: {sorted(by_id)})"
                )
            if edge.id == event.id:
                raise ValueError(f"event {event.id} cannot cause itself")
            if event.date < cause.date:
                raise ValueError(
                    f"event {event.id} ({event.date:%Y.%m.%d}) is dated before its cause, "
                    f"event {edge.id} ({cause.date:%Y.%m.%d})"
                )
        return self

    def chronological(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.date, e.time or dt.time(), e.id))


# ------------------------------------------------------------------ album and dialogue


class DeviceImage(Model):
    id: int = Field(ge=1)
    description: str = Field(min_length=3, max_length=400)
    categories: list[str] = Field(default_factory=list, max_length=6)
    added_in_session: int = Field(0, ge=0, description="0 = on the phone before session 1")
    request_id: str | None = None


class SharingInfo(Model):
    rationale: str
    image_description: str = Field(min_length=3)
    image_source: ImageSource
    keywords: list[str] = Field(default_factory=list)
    image_id_from_mobile: int | Literal["new"] | None = None

    @model_validator(mode="after")
    def _mobile_id(self) -> SharingInfo:
        if self.image_source == "internet" and self.image_id_from_mobile not in (None,):
            raise ValueError("an internet image has no image_id_from_mobile")
        if self.image_source == "mobile" and self.image_id_from_mobile is None:
            raise ValueError("a mobile image needs image_id_from_mobile (an album id or 'new')")
        return self


class Turn(Model):
    id: int = Field(ge=1)
    speaker: str
    utterance: str = ""
    sharing: SharingInfo | None = None
    request_id: str | None = None


class Session(Model):
    index: int = Field(ge=1)
    date: dt.date | None = None  # required (with event_id) in an "mcu" episode
    event_id: int | None = None
    event: str = ""
    time_interval: str | None = None
    experience_op: ExperienceOp | None = None
    experience: str | None = None
    turns: list[Turn] = Field(min_length=1)
    summary: str | None = None
    safety: dict[str, str] | None = Field(
        None, description="Text-safety verdict: label, reason, checker."
    )


class ImageRequest(Model):
    """One image to align: a sharing moment or an album photo. Never silently dropped."""

    id: str
    origin: Literal["sharing", "album"]
    session: int | None = None
    turn_id: int | None = None
    device_image_id: int | None = None
    description: str
    keywords: list[str] = Field(default_factory=list)
    image_source: ImageSource | None = None
    status: RequestStatus = "pending"
    reason: str | None = None
    module: str | None = None
    planned_description: str | None = None
    image: ImageRecord | None = None
    alternatives: list[ImageRecord] = Field(
        default_factory=list, description="Other candidates that also passed QA."
    )
    attempts: list[dict] = Field(default_factory=list)


class Removal(Model):
    rule: str
    target: str
    reason: str
    scores: dict[str, float | str | None] = Field(default_factory=dict)
    threshold: float | str | None = None


# ------------------------------------------------------------------ the episode


class Episode(Model):
    schema_version: str = SCHEMA_VERSION
    episode_id: str = Field(pattern=EPISODE_ID_PATTERN)
    # "augmented": an existing dialogue given images (mcu augment); no person, no events
    kind: Literal["mcu", "augmented"] = "mcu"
    source: SourceRecord | None = None
    seeds: dict[str, int]
    config_fingerprint: str
    prompt_versions: dict[str, str] = Field(default_factory=dict)
    usage: dict[str, dict[str, float]] = Field(default_factory=dict)
    demographics: Demographics | None = None  # these: required when kind is "mcu"
    face: Face | None = None
    persona_category: str | None = None
    persona_entity_key: str | None = None
    persona: list[PersonaAttribute] | None = Field(None, min_length=1)
    commonsense: list[Commonsense] | None = Field(None, min_length=1)
    narrative: Narrative | None = None
    events: EventGraph | None = None
    device_images: list[DeviceImage] = Field(default_factory=list)
    sessions: list[Session] = Field(min_length=1)
    image_requests: list[ImageRequest] = Field(default_factory=list)
    removals: list[Removal] = Field(default_factory=list)
    status: Literal["complete", "filtered"] = "complete"

    @model_validator(mode="after")
    def _cross_checks(self) -> Episode:
        if self.kind == "augmented":
            if self.source is None:
                raise ValueError("an augmented episode needs its source record")
        else:
            missing = [name for name in MCU_FIELDS if getattr(self, name) is None]
            if missing:
                raise ValueError(f"an mcu episode needs {', '.join(missing)}")
            assert self.demographics is not None and self.events is not None
            check_speakers(self.sessions, self.demographics.name)
            check_session_dates(self.sessions, self.events)
        check_album_references(self.sessions, self.device_images)
        check_requests(self.sessions, self.image_requests)
        check_requests_settled(self.image_requests)
        return self


MCU_FIELDS = (
    "demographics",
    "face",
    "persona_category",
    "persona_entity_key",
    "persona",
    "commonsense",
    "narrative",
    "events",
)


def check_speakers(sessions: list[Session], user_name: str) -> None:
    allowed = {user_name, ASSISTANT}
    for session in sessions:
        for turn in session.turns:
            if turn.speaker not in allowed:
                raise ValueError(
                    f"session {session.index} turn {turn.id}: speaker {turn.speaker!r} is "
                    f"neither the user ({user_name!r}) nor {ASSISTANT!r}"
                )


def check_session_dates(sessions: list[Session], graph: EventGraph) -> None:
    by_id = {e.id: e for e in graph.events}
    previous: dt.date | None = None
    for session in sessions:
        event = by_id.get(session.event_id)
        if event is None:
            raise ValueError(f"session {session.index} refers to unknown event {session.event_id}")
        if session.date != event.date:
            raise ValueError(
                f"session {session.index} is dated {session.date} but its event is {event.date}"
            )
        if previous and session.date < previous:
            raise ValueError(f"session {session.index} is dated before the session before it")
        previous = session.date


def album_at(device_images: list[DeviceImage], session_index: int) -> set[int]:
    """Ids on the phone when ``session_index`` starts (images added in earlier sessions)."""
    return {d.id for d in device_images if d.added_in_session < session_index}


def check_album_references(sessions: list[Session], device_images: list[DeviceImage]) -> None:
    for session in sessions:
        album = album_at(device_images, session.index)
        for turn in session.turns:
            ref = turn.sharing.image_id_from_mobile if turn.sharing else None
            if isinstance(ref, int) and ref not in album:
                raise ValueError(
                    f"session {session.index} turn {turn.id} shares album image {ref}, but the "
                    f"album then held ids {sorted(album)}"
                )


def check_requests(sessions: list[Session], requests: list[ImageRequest]) -> None:
    """Request ids are unique, and every sharing turn points at a request that exists."""
    ids = {r.id for r in requests}
    if len(ids) != len(requests):
        raise ValueError("image request ids must be unique")
    for session in sessions:
        for turn in session.turns:
            if not turn.sharing:
                continue
            if turn.request_id is None:
                raise ValueError(
                    f"session {session.index} turn {turn.id} shares an image but has no image "
                    "request (request_id is None): every sharing moment must be aligned or "
                    "marked unaligned"
                )
            if turn.request_id not in ids:
                raise ValueError(
                    f"session {session.index} turn {turn.id} points at missing image request "
                    f"{turn.request_id}"
                )


def check_requests_settled(requests: list[ImageRequest]) -> None:
    """A finished episode has no ``pending`` request: each ended aligned or unaligned."""
    pending = sorted(r.id for r in requests if r.status == "pending")
    if pending:
        shown = ", ".join(pending[:10]) + (
            f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        )
        raise ValueError(
            f"image request(s) {shown} still pending in a finished episode: the aligner must "
            "end every request as aligned or unaligned (with a reason)"
        )
