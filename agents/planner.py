"""Planner role (STARK §3.8, Fig. 2): pick the module that will produce an image.

For personalised generation the description must name the person as ``<class word> img``
(PhotoMaker's trigger). The check is a validator, so a missing trigger is fed back to the
model; after the repair budget the aligner defaults and records why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm import Completion

PROMPT = "planner"
TRIGGER = "img"


Module = Literal["personalized_t2i", "retrieval", "web_search"]
MODULES: tuple[str, ...] = ("personalized_t2i", "retrieval", "web_search")


class PlanOutput(BaseModel):
    module: Module
    description: str = Field(min_length=5, max_length=300)


def plan_model(modules: list[str]) -> type[PlanOutput]:
    """``PlanOutput`` whose ``module`` enum holds only the modules that can run here."""
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


def check_trigger(class_word: str):
    phrase = trigger_phrase(class_word)

    def validate(plan: PlanOutput) -> None:
        if plan.module == "personalized_t2i" and phrase not in plan.description:
            raise ValueError(
                f"for personalized_t2i the description must contain '{phrase}' exactly "
                f"(got {plan.description!r})"
            )

    return validate


def insert_trigger(description: str, class_word: str) -> str:
    """Code's fallback when the model never wrote the trigger: prefix the subject."""
    phrase = trigger_phrase(class_word)
    if phrase in description:
        return description
    return f"a photo of {phrase}: {description}"


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
