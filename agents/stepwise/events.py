"""Stepwise events role: one event at a time given the ones before, then the experience
between it and its cause. Code picks causes, time intervals and operations (seeded), so
the graph's ids, edges and dates are right by construction."""

from __future__ import annotations

import datetime as dt
import random

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.events import events_model, place, shorten_intervals
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.stepwise.text import Pieces, ask_text
from mcu_sim.personas.schema import EventGraph

# (unit, smallest, largest amount) for the gap between an event and its cause
GAPS = (("day", 2, 6), ("week", 1, 3), ("month", 1, 5))
# The fallback rule: an everyday event, a different one for each event of the episode.
EVERYDAY = (
    "{name} spends a quiet day at home and thinks about what comes next.",
    "{name} meets an old friend for lunch and they talk for hours.",
    "{name} takes a long walk through the city and finds a new cafe.",
    "{name} cooks a big dinner for the family on a rainy evening.",
    "{name} visits the local market early on a sunny morning.",
    "{name} spends the afternoon in the park reading a good book.",
)
# Few requests, and the ones the sessions are about: worth more tries than a single line.
EVENT_ATTEMPTS = 5


def _gap_words(amount: int, unit: str) -> str:
    return f"{amount} {unit}{'s' if amount != 1 else ''}"


async def generate_events(
    call: RoleCall,
    name: str,
    narrative: str,
    more_than: int,
    max_events: int,
    window: tuple[dt.date, dt.date],
    place_rng: random.Random,
    min_events: int = 1,
) -> tuple[EventGraph, Completion, str]:
    """More than ``more_than`` events (within ``min_events``..``max_events``: code decides
    the count a small model could not keep to); each after the first is caused by the
    previous one or (one time in four) an earlier one, with a code-drawn interval the model
    is told about. The graph is placed in ``window`` as the structured role places it."""
    count = max(min_events, min(max_events, more_than + 1))
    pieces = Pieces("events")
    rng = random.Random(call.seed)
    items: list[dict[str, object]] = []
    for number in range(1, count + 1):
        texts = [str(item["event"]) for item in items]
        if number == 1:
            cause, unit, amount = 0, "day", 1
        else:
            cause = number - 1 if number == 2 or rng.random() < 0.75 else rng.randint(1, number - 2)
            unit, low, high = rng.choice(GAPS)
            amount = rng.randint(low, high)
        gap = _gap_words(amount, unit)
        event = await ask_text(
            call,
            pieces,
            "stepwise_event",
            fallback=EVERYDAY[(number - 1) % len(EVERYDAY)].format(name=name),
            what=f"event {number}",
            max_tokens=50,
            min_words=4,
            max_sentences=1,
            max_chars=300,
            starts=(name,),
            attempts=EVENT_ATTEMPTS,
            min_content=2,
            narrative=narrative,
            previous=texts,
            name=name,
            gap=gap,
            cause=texts[cause - 1] if cause else "",
        )
        experience = "It is the first day of the story."
        if number > 1:
            experience = await ask_text(
                call,
                pieces,
                "stepwise_experience",
                fallback=f"{name} kept going with daily life.",
                what=f"the experience before event {number}",
                max_tokens=40,
                max_sentences=1,
                max_chars=190,
                starts=(name,),
                attempts=EVENT_ATTEMPTS,
                cause=texts[cause - 1],
                event=event,
                gap=gap,
                name=name,
            )
        items.append(
            {
                "event": event,
                "caused_by": cause,
                "time_interval": amount,
                "time_unit": unit,
                "experience_op": "update" if number > 1 and rng.random() < 0.25 else "add",
                "experience": experience,
            }
        )
    output = events_model(count, count).model_validate({"events": items})
    shorten_intervals(output, (window[1] - window[0]).days)
    return place(output, window, place_rng), pieces.completion(output), pieces.version()
