"""Events role (STARK §3.6): a temporal event graph.

The model writes events, which earlier event caused each one, the time that passed and the
experience in between. Code assigns ids and derives every date from the episode's start
date, so dates cannot go backwards and every ``caused_by`` is checked to exist.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.llm.structured import extract_json
from mcu_sim.personas.schema import CausedBy, Event, EventGraph, add_interval

PROMPT = "events"


class EventItem(BaseModel):
    event: str = Field(min_length=10, max_length=320)
    caused_by: int = Field(ge=0, le=40)
    time_interval: int = Field(ge=1, le=36)
    time_unit: Literal["hour", "day", "week", "month", "year"]
    experience_op: Literal["add", "update"]
    experience: str = Field(min_length=5, max_length=200)


@functools.lru_cache(maxsize=64)
def events_model(count: int) -> type[BaseModel]:
    """An output model asking for at least ``count`` events (a few more are allowed)."""
    return create_model(
        "EventsOutput",
        events=(list[EventItem], Field(min_length=count, max_length=count + 3)),
    )


def check_causes(output: BaseModel) -> None:
    """Every event after the first must name an earlier event as its cause."""
    problems = []
    for number, item in enumerate(output.events, start=1):
        if number > 1 and not 1 <= item.caused_by < number:
            problems.append(
                f"event {number} has caused_by={item.caused_by}, but it must be the number "
                f"of an earlier event (1..{number - 1})"
            )
    if problems:
        raise ValueError("; ".join(problems))


def to_graph(output: BaseModel, start: dt.date) -> EventGraph:
    events: list[Event] = []
    for number, item in enumerate(output.events, start=1):
        if number == 1:
            events.append(Event(id=1, event=item.event.strip(), date=start))
            continue
        cause = events[item.caused_by - 1]
        date = add_interval(cause.date, item.time_interval, item.time_unit)
        edge = CausedBy(
            id=cause.id,
            time_interval=f"{item.time_interval} {item.time_unit}",
            experience_op=item.experience_op,
            experience=item.experience.strip(),
        )
        events.append(Event(id=number, event=item.event.strip(), date=date, caused_by=edge))
    return EventGraph(events=events)


def clamp_causes(output: BaseModel) -> list[str]:
    """Last resort after the repair turns: point each impossible cause at the previous event.

    Returns what was changed, so the episode records it instead of hiding it.
    """
    changes = []
    for number, item in enumerate(output.events, start=1):
        if number > 1 and not 1 <= item.caused_by < number:
            changes.append(f"event {number}: caused_by {item.caused_by} -> {number - 1}")
            item.caused_by = number - 1
    return changes


def rescue_causes(model: type[BaseModel]) -> Callable[[str], tuple[BaseModel, list[str]]]:
    """The provider layer's last resort for ``model``: parse the raw answer (it must be valid
    apart from its causes) and point each impossible cause at the previous event."""

    def rescue(raw_text: str) -> tuple[BaseModel, list[str]]:
        output = model.model_validate(extract_json(raw_text))
        return output, clamp_causes(output)

    return rescue


async def generate_events(
    call: RoleCall, name: str, narrative: str, count: int, start: dt.date
) -> tuple[EventGraph, Completion, str]:
    """The event graph. Impossible causes are fed back to the model for the configured repair
    turns; if it still gets them wrong but the answer is otherwise valid, code repairs the
    edges (listed in ``completion.repairs_by_code``) rather than failing the episode. The
    repaired answer is cached like a valid one, so a re-run of the seed makes no call."""
    model = events_model(count)
    output, completion, version = await ask(
        call,
        PROMPT,
        model,
        validate=check_causes,
        rescue=rescue_causes(model),
        name=name,
        narrative=narrative,
        count=count,
    )
    return to_graph(output, start), completion, version
