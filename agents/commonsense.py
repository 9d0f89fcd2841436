"""Commonsense role (STARK §3.4): the five PEACOK persona relations in one call."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import Commonsense, Demographics

PROMPT = "commonsense"
RELATIONS = ("routine_habit", "characteristic", "experience", "goal_plan", "relationship")


def _phrase() -> object:
    return Field(min_length=3, max_length=160)


class CommonsenseOutput(BaseModel):
    routine_habit: str = _phrase()
    characteristic: str = _phrase()
    experience: str = _phrase()
    goal_plan: str = _phrase()
    relationship: str = _phrase()


def clean_phrase(text: str, relation: str) -> str:
    """Drop a frame the model repeated (``I regularly``, ``I plan`` …) and final dots."""
    lowered = text.strip()
    for prefix in ("I regularly ", "I plan ", "So, I ", "I "):
        if lowered.startswith(prefix):
            lowered = lowered[len(prefix) :]
            break
    return lowered.rstrip(".,;: ")


async def generate_commonsense(
    call: RoleCall, demographics: Demographics, persona_sentence: str
) -> tuple[list[Commonsense], Completion, str]:
    from mcu_sim.personas.samplers import demographic_sentence

    output, completion, version = await ask(
        call,
        PROMPT,
        CommonsenseOutput,
        demographic_sentence=demographic_sentence(demographics),
        persona_sentence=persona_sentence,
    )
    items = [Commonsense(relation=r, text=clean_phrase(getattr(output, r), r)) for r in RELATIONS]
    return items, completion, version
