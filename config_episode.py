"""The ``episode:`` section of the config: what one simulated episode looks like.

STARK's process (§3.2-3.9, App. F) is the default: the event prompt asks for more than five
events and the graph decides the sessions (the §3.9 filter keeps 4-6), every date falls in
a window ending April 2024, each session is asked for more than two sharing moments, and
the ``stark`` preset makes the paper's persona and commonsense calls. It sits at the
configuration layer so :mod:`mcu_sim.config_schema` embeds it without importing anything.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DateWindow(Strict):
    """Every date of an episode falls inside ``[start, end]`` (STARK: conversations from
    2021 on, the event prompt's dates "until April 2024")."""

    start: dt.date = dt.date(2021, 1, 1)
    end: dt.date = dt.date(2024, 4, 30)

    @model_validator(mode="after")
    def _ordered(self) -> DateWindow:
        if (self.end - self.start).days < 31:
            raise ValueError(
                f"episode.date_window must span at least a month, got {self.start} to {self.end}"
            )
        return self


# What each preset sets when the field is left unset (None).
PRESETS: dict[str, dict[str, Any]] = {
    # STARK §3.2, §3.4, App. F: 30 persona sentences per call; the five commonsense
    # relations asked one by one, each with its own sentence frame.
    "stark": {"persona_sentences": 30, "commonsense_calls": "per_relation"},
    # Fewer tokens: 8 persona sentences, the five relations in one call.
    "economy": {"persona_sentences": 8, "commonsense_calls": "joint"},
}


class EpisodeConfig(Strict):
    preset: Literal["stark", "economy"] = Field(
        "stark",
        description=(
            "stark: the paper's calls (30 persona sentences, one commonsense call per "
            "relation); economy: 8 persona sentences and one joint commonsense call. A field "
            "set here overrides its preset value."
        ),
    )
    sessions_min: int = Field(
        4, ge=1, le=20, description="§3.9: episodes with fewer sessions are filtered out."
    )
    sessions_max: int = Field(
        6, ge=1, le=20, description="§3.9: episodes with more sessions are filtered out."
    )
    events_more_than: int | None = Field(
        None,
        ge=0,
        le=19,
        description=(
            "The event prompt asks for a graph of more than this many events (STARK: five); "
            "one session per event. None: sessions_max - 1, the paper's pairing."
        ),
    )
    events_min: int = Field(
        1, ge=1, le=20, description="The schema's floor (1: the model's graph decides)."
    )
    events_max: int = Field(10, ge=2, le=20, description="Bound on the event graph's size.")
    date_window: DateWindow = Field(default_factory=DateWindow)
    persona_sentences: int | None = Field(None, ge=1, le=30, description="None: the preset's")
    commonsense_calls: Literal["per_relation", "joint"] | None = Field(
        None, description="None: the preset's"
    )
    device_images: int = Field(5, ge=1, le=10)
    min_sharing_moments: int = Field(
        0, ge=0, le=10, description="The schema's floor per session (0: nothing forced)."
    )
    sharing_more_than: int = Field(
        2, ge=0, le=10, description="The dialogue prompt asks for more than this many moments."
    )
    max_sharing_moments: int = Field(6, ge=1, le=12, description="Bound per session.")
    max_turns: int = Field(14, ge=4, le=60)
    max_utterance_chars: int = Field(
        400, ge=40, le=2000, description="Bound on one utterance (keeps small models short)."
    )
    summarize_sessions: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> EpisodeConfig:
        if self.sessions_min > self.sessions_max:
            raise ValueError(
                f"episode.sessions_min ({self.sessions_min}) is larger than "
                f"episode.sessions_max ({self.sessions_max})"
            )
        if self.events_more_than is not None and self.events_more_than >= self.events_max:
            raise ValueError(
                f"episode.events_max ({self.events_max}) must exceed episode.events_more_than "
                f"({self.events_more_than})"
            )
        return self

    def asked_events(self) -> int:
        """The event prompt asks for more than this many events."""
        if self.events_more_than is not None:
            return self.events_more_than
        return self.sessions_max - 1

    def max_events(self) -> int:
        """The event graph's bound (``maxItems``): room above the count asked for."""
        return max(self.events_max, self.asked_events() + 1, self.events_min)

    def persona_count(self) -> int:
        return self.persona_sentences or PRESETS[self.preset]["persona_sentences"]

    def commonsense_mode(self) -> str:
        return self.commonsense_calls or PRESETS[self.preset]["commonsense_calls"]
