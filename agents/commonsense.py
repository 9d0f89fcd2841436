"""Commonsense role (STARK §3.4, App. F): the five PEACOK persona relations.

The paper prompts each relation separately, with its own sentence frame (``… I regularly
<routine/habit>.``), and takes the model's words for the slot: :func:`generate_per_relation`
(the ``stark`` preset). :func:`generate_commonsense` asks for all five in one call (the
``economy`` preset).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import Commonsense, Demographics

PROMPT = "commonsense"
PROMPT_PER_RELATION = "commonsense_relation"
RELATIONS = ("routine_habit", "characteristic", "experience", "goal_plan", "relationship")
# App. F: each relation's frame around the person ({context}: demographic and persona
# sentences) and the slot the model fills.
FRAMES: dict[str, tuple[str, str]] = {
    "routine_habit": ("{context} I regularly <routine/habit>.", "<routine/habit>"),
    "characteristic": ("{context} I <characteristic>.", "<characteristic>"),
    "experience": ("I <experience>. Now, {context}", "<experience>"),
    "goal_plan": ("{context} I plan <goal/plan>.", "<goal/plan>"),
    "relationship": ("{context} So, I <relationship>.", "<relationship>"),
}


def _phrase() -> object:
    return Field(min_length=3, max_length=160)


class CommonsenseOutput(BaseModel):
    routine_habit: str = _phrase()
    characteristic: str = _phrase()
    experience: str = _phrase()
    goal_plan: str = _phrase()
    relationship: str = _phrase()


class CommonsenseAnswer(BaseModel):
    """One relation's slot, as the model fills it."""

    answer: str = _phrase()


def clean_phrase(text: str, relation: str) -> str:
    """Drop a frame the model repeated (``I regularly``, ``I plan`` …) and final dots."""
    lowered = text.strip()
    for prefix in ("I regularly ", "I plan ", "So, I ", "I "):
        if lowered.startswith(prefix):
            lowered = lowered[len(prefix) :]
            break
    return lowered.rstrip(".,;: ")


def _context(demographics: Demographics, persona_sentence: str) -> str:
    from mcu_sim.personas.samplers import demographic_sentence

    return f"{demographic_sentence(demographics)} {persona_sentence}"


async def generate_commonsense(
    call: RoleCall, demographics: Demographics, persona_sentence: str
) -> tuple[list[Commonsense], Completion, str]:
    """All five relations in one call (the ``economy`` preset)."""
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


async def generate_per_relation(
    call: RoleCall, demographics: Demographics, persona_sentence: str
) -> tuple[list[Commonsense], Completion, str]:
    """Each relation in its own call with its own frame, as STARK does (the ``stark``
    preset). The five calls run concurrently; the returned completion sums their usage."""
    context = _context(demographics, persona_sentence)

    async def one(relation: str) -> tuple[CommonsenseAnswer, Completion, str]:
        frame, slot = FRAMES[relation]
        return await ask(
            call,
            PROMPT_PER_RELATION,
            CommonsenseAnswer,
            sentence=frame.format(context=context),
            slot=slot,
        )

    answers = await asyncio.gather(*(one(r) for r in RELATIONS))
    items = [
        Commonsense(relation=r, text=clean_phrase(output.answer, r))
        for r, (output, _, _) in zip(RELATIONS, answers, strict=True)
    ]
    completions = [completion for _, completion, _ in answers]
    usage = completions[0].usage
    for completion in completions[1:]:
        usage = usage + completion.usage
    combined = Completion(
        value=items,
        text="\n".join(c.text for c in completions),
        usage=usage,
        cached=all(c.cached for c in completions),
        repairs=sum(c.repairs for c in completions),
    )
    return items, combined, answers[0][2]
