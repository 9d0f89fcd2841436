"""Planner role (STARK §3.8, Fig. 2): pick the module that will produce an image.

For personalised generation the description must name the person as ``<class word> img``
(PhotoMaker's trigger), checked by the very rule PhotoMaker applies (exactly one ``img``
word, right after the person's class word), so a prompt PhotoMaker would refuse ("woman
imgs", two triggers) is fed back to the model at plan time; after the repair budget the
aligner repairs it in code (:func:`insert_trigger`) and records why.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from pydantic import BaseModel, Field, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.trigger import TRIGGER_WORD, check_trigger_prompt

PROMPT = "planner"
TRIGGER = TRIGGER_WORD


Module = Literal["personalized_t2i", "retrieval", "web_search", "t2i"]
MODULES: tuple[str, ...] = ("personalized_t2i", "retrieval", "web_search", "t2i")


class PlanOutput(BaseModel):
    module: Module
    description: str = Field(min_length=5, max_length=300)


def plan_model(modules: list[str]) -> type[PlanOutput]:
    """``PlanOutput`` whose ``module`` enum holds only the modules that can run here."""
    return _plan_model(tuple(modules))


@functools.lru_cache(maxsize=64)  # one class per module set, not one per request
def _plan_model(modules: tuple[str, ...]) -> type[PlanOutput]:
    unknown = set(modules) - set(MODULES)
    if unknown or not modules:
        raise ValueError(f"modules must be a non-empty subset of {MODULES}, got {modules}")
    return create_model(
        "PlanOutput",
        __base__=PlanOutput,
        module=(Literal[tuple(modules)], ...),  # type: ignore[valid-type]
    )


def trigger_phrase(class_word: str) -> str:
    return f"{class_word} {TRIGGER}"


def trigger_problem(description: str, class_word: str) -> str | None:
    """Why ``description`` is not a valid PhotoMaker prompt for this person, or None."""
    try:
        check_trigger_prompt(description, TRIGGER)
    except ValueError as exc:
        return str(exc)
    if not re.search(rf"(?i)\b{re.escape(class_word)}\s+{TRIGGER}\b", description):
        phrase = trigger_phrase(class_word)
        return f"the trigger must follow the person's class word ('{phrase}') in {description!r}"
    return None


def check_trigger(class_word: str):
    phrase = trigger_phrase(class_word)

    def validate(plan: PlanOutput) -> None:
        if plan.module != "personalized_t2i":
            return
        problem = trigger_problem(plan.description, class_word)
        if problem:
            raise ValueError(
                f"for personalized_t2i the description must contain '{phrase}' exactly "
                f"once: {problem}"
            )

    return validate


def insert_trigger(description: str, class_word: str) -> str:
    """Code's repair when the model never wrote a valid trigger: drop stray ``img`` words
    and prefix the subject, so the result always passes PhotoMaker's check."""
    if trigger_problem(description, class_word) is None:
        return description
    cleaned = re.sub(rf"(?i)\b{TRIGGER}s?\b", " ", description)
    cleaned = re.sub(r"\s+", " ", cleaned).strip(" :,")
    return f"a photo of {trigger_phrase(class_word)}: {cleaned}"


async def plan_request(
    call: RoleCall,
    *,
    name: str,
    age: int,
    gender: str,
    class_word: str,
    description: str,
    image_source: str | None,
    modules: list[str] | None = None,
) -> tuple[PlanOutput, Completion, str]:
    modules = list(modules or MODULES)
    return await ask(
        call,
        PROMPT,
        plan_model(modules),
        validate=check_trigger(class_word),
        modules=modules,
        name=name,
        age=age,
        gender=gender,
        class_word=class_word,
        description=description,
        image_source=image_source or "unknown",
    )
