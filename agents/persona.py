"""Persona role (STARK §3.2): many persona sentences with attribute triples in one call."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import Demographics, PersonaAttribute, PersonaEntity

PROMPT = "persona"


class PersonaItem(BaseModel):
    sentence: str = Field(min_length=8, max_length=160)
    entity_value: str = Field(min_length=1, max_length=60)


class PersonaOutput(BaseModel):
    items: list[PersonaItem] = Field(min_length=1, max_length=30)


def to_attributes(output: PersonaOutput, category: str, entity_key: str) -> list[PersonaAttribute]:
    """Triples ``(I, category, (entity_key, value))``, deduplicated by value and sentence."""
    seen: set[str] = set()
    attributes = []
    for item in output.items:
        value = item.entity_value.strip()
        keys = {value.lower(), item.sentence.strip().lower()}
        if not value or keys & seen:
            continue
        seen |= keys
        attributes.append(
            PersonaAttribute(
                sentence=item.sentence.strip(),
                relation=category,
                entity=PersonaEntity(key=entity_key, value=value),
            )
        )
    return attributes


async def generate_persona(
    call: RoleCall, demographics: Demographics, category: str, entity_key: str, count: int
) -> tuple[list[PersonaAttribute], Completion, str]:
    output, completion, version = await ask(
        call,
        PROMPT,
        PersonaOutput,
        age=demographics.age,
        gender=demographics.gender,
        birthplace=demographics.birthplace,
        residence=demographics.residence,
        category=category,
        entity_key=entity_key,
        count=count,
    )
    return to_attributes(output, category, entity_key), completion, version
