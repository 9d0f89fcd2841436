"""Events role (STARK §3.6): a temporal event graph.

The model writes events, which earlier event caused each one, the time that passed and the
experience in between; as in the paper it is asked for more than five events and its graph
decides how many sessions the episode has (the §3.9 filter removes what falls outside the
bounds). Code assigns ids and derives every date and time of day from the intervals, so
dates cannot go backwards, hour intervals keep their hours, and every ``caused_by`` is
checked to exist. The whole graph must fit the date window (STARK: until April 2024): a
graph that spans more is fed back to the model, and as a last resort code shortens its
longest intervals (recorded, never hidden).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.llm.structured import extract_json
from mcu_sim.personas.intervals import UNIT_DAYS, add_interval
from mcu_sim.personas.schema import CausedBy, Event, EventGraph

PROMPT = "events"
MAX_INTERVAL = 12  # the schema's bound on one interval's number ("12 months", "12 hours")
# An interval shortened by code when the graph does not fit the window: one step down.
_SHORTER = {"year": (6, "month"), "month": (2, "week"), "week": (3, "day"), "day": (12, "hour")}


class EventItem(BaseModel):
    event: str = Field(min_length=10, max_length=320)
    caused_by: int = Field(ge=0, le=40)
    time_interval: int = Field(ge=1, le=MAX_INTERVAL)
    time_unit: Literal["hour", "day", "week", "month", "year"]
    experience_op: Literal["add", "update"]
    experience: str = Field(min_length=5, max_length=200)


@functools.lru_cache(maxsize=64)
def events_model(max_events: int, min_events: int = 1) -> type[BaseModel]:
    """An output model of ``min_events`` (default one) to ``max_events`` events: the model's
    graph decides the count."""
    return create_model(
        "EventsOutput",
        events=(list[EventItem], Field(min_length=min_events, max_length=max_events)),
    )


def _offsets(output: BaseModel, anchor: dt.datetime) -> list[dt.datetime]:
    """Each event's moment with event 1 at ``anchor`` (causes must already be valid)."""
    moments: list[dt.datetime] = []
    for number, item in enumerate(output.events, start=1):
        if number == 1:
            moments.append(anchor)
        else:
            cause = moments[item.caused_by - 1]
            moments.append(add_interval(cause, item.time_interval, item.time_unit))
    return moments


def span_days(output: BaseModel) -> float:
    """From the first moment to the last, in days (months and years at their mean length)."""
    offsets = [0.0]
    for item in output.events[1:]:
        cause = offsets[item.caused_by - 1]
        offsets.append(cause + item.time_interval * UNIT_DAYS[item.time_unit])
    return max(offsets)


def _cause_problems(output: BaseModel) -> list[str]:
    return [
        f"event {number} has caused_by={item.caused_by}, but it must be the number "
        f"of an earlier event (1..{number - 1})"
        for number, item in enumerate(output.events, start=1)
        if number > 1 and not 1 <= item.caused_by < number
    ]


def fits(window_days: int) -> int:
    """The longest span a graph may have: a month of slack for calendar arithmetic."""
    return max(1, window_days - 31)


def check_graph(window_days: int) -> Callable[[BaseModel], None]:
    """Every event after the first names an earlier cause; the graph fits the window."""

    def check(output: BaseModel) -> None:
        problems = _cause_problems(output)
        if not problems and span_days(output) > fits(window_days):
            problems.append(
                f"the events span about {span_days(output) / 365.25:.1f} years from the first "
                f"to the last, but all of them must happen within "
                f"{fits(window_days) / 365.25:.1f} years: use shorter time intervals"
            )
        if problems:
            raise ValueError("; ".join(problems))

    return check


def clamp_causes(output: BaseModel) -> list[str]:
    """Point each impossible cause at the previous event; return what changed."""
    changes = []
    for number, item in enumerate(output.events, start=1):
        if number > 1 and not 1 <= item.caused_by < number:
            changes.append(f"event {number}: caused_by {item.caused_by} -> {number - 1}")
            item.caused_by = number - 1
    return changes


def shorten_intervals(output: BaseModel, window_days: int) -> list[str]:
    """Halve the longest interval (or step its unit down) until the graph fits the window;
    return what changed. Terminates: every step shortens one interval, and a graph of
    one-hour intervals fits any window."""
    changes = []
    while span_days(output) > fits(window_days):
        items = output.events[1:]
        item = max(items, key=lambda i: i.time_interval * UNIT_DAYS[i.time_unit])
        before = f"{item.time_interval} {item.time_unit}"
        if item.time_interval > 1:
            item.time_interval //= 2
        elif item.time_unit in _SHORTER:
            item.time_interval, item.time_unit = _SHORTER[item.time_unit]
        else:  # every interval is one hour already
            break
        after = f"{item.time_interval} {item.time_unit}"
        changes.append(f"event {output.events.index(item) + 1}: {before} -> {after}")
    return changes


def rescue_graph(
    model: type[BaseModel], window_days: int
) -> Callable[[str], tuple[BaseModel, list[str]]]:
    """The provider layer's last resort for ``model``: parse the raw answer (it must be valid
    apart from its causes and span), point each impossible cause at the previous event and
    shorten the longest intervals until the graph fits the window."""

    def rescue(raw_text: str) -> tuple[BaseModel, list[str]]:
        output = model.model_validate(extract_json(raw_text))
        return output, clamp_causes(output) + shorten_intervals(output, window_days)

    return rescue


def place(output: BaseModel, window: tuple[dt.date, dt.date], rng: random.Random) -> EventGraph:
    """The graph with dates: event 1 on a day drawn (``rng``) so that the whole graph lies in
    ``window``, at a time of day between 08:00 and 20:59."""
    low, high = window
    time = dt.time(rng.randint(8, 20), rng.choice((0, 15, 30, 45)))
    probe = _offsets(output, dt.datetime.combine(low, time))
    room = (high - max(probe).date()).days
    start = low + dt.timedelta(days=rng.randint(0, max(0, room)))
    moments = _offsets(output, dt.datetime.combine(start, time))
    for _ in range(4):  # month ends clamp differently from another start: shift back
        overflow = (max(moments).date() - high).days
        if overflow <= 0:
            break
        start = max(low, start - dt.timedelta(days=overflow))
        moments = _offsets(output, dt.datetime.combine(start, time))
    return to_graph(output, moments)


def to_graph(output: BaseModel, moments: list[dt.datetime]) -> EventGraph:
    events: list[Event] = []
    for number, (item, moment) in enumerate(zip(output.events, moments, strict=True), start=1):
        edge = None
        if number > 1:
            edge = CausedBy(
                id=item.caused_by,
                time_interval=f"{item.time_interval} {item.time_unit}",
                experience_op=item.experience_op,
                experience=item.experience.strip(),
            )
        events.append(
            Event(
                id=number,
                event=item.event.strip(),
                date=moment.date(),
                time=moment.time(),
                caused_by=edge,
            )
        )
    return EventGraph(events=events)


def window_words(window: tuple[dt.date, dt.date]) -> str:
    return f"between {window[0]:%B %Y} and {window[1]:%B %Y}"


async def generate_events(
    call: RoleCall,
    name: str,
    narrative: str,
    more_than: int,
    max_events: int,
    window: tuple[dt.date, dt.date],
    rng: random.Random,
    min_events: int = 1,
) -> tuple[EventGraph, Completion, str]:
    """The event graph, asked for with more than ``more_than`` events (at most
    ``max_events``). Impossible causes and a graph too long for ``window`` are fed back to
    the model for the configured repair turns; if it still gets them wrong but the answer
    is otherwise valid, code repairs them (listed in ``completion.repairs_by_code``) rather
    than failing the episode. The repaired answer is cached like a valid one, so a re-run of
    the seed makes no call. ``rng`` places the graph in the window."""
    window_days = (window[1] - window[0]).days
    model = events_model(max_events, min(min_events, max_events))
    output, completion, version = await ask(
        call,
        PROMPT,
        model,
        validate=check_graph(window_days),
        rescue=rescue_graph(model, window_days),
        name=name,
        narrative=narrative,
        more_than=more_than,
        max_events=max_events,
        window=window_words(window),
        years=f"{fits(window_days) / 365.25:.1f}",
    )
    return place(output, window, rng), completion, version
