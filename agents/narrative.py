"""Narrative role (STARK §3.5): Table 4 sentence form -> two or three sentences."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import Narrative

PROMPT = "narrative"


class NarrativeOutput(BaseModel):
    narrative: str = Field(min_length=20, max_length=700)


async def generate_narrative(
    call: RoleCall, relation: str, sentence_form: str
) -> tuple[Narrative, Completion, str]:
    output, completion, version = await ask(
        call, PROMPT, NarrativeOutput, sentence_form=sentence_form
    )
    narrative = Narrative(
        relation=relation, sentence_form=sentence_form, narrative=output.narrative.strip()
    )
    return narrative, completion, version
