"""Stepwise persona role: persona sentences one by one, then the entity value of each."""

from __future__ import annotations

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.persona import PersonaOutput, to_attributes
from mcu_sim.agents.stepwise.text import Pieces, ask_text, content_words
from mcu_sim.personas.schema import Demographics, PersonaAttribute

VALUE_WORDS = 2


def entity_value(sentence: str, fallback: str) -> str:
    """The value a persona sentence gives its entity key, by a code rule: its last content
    words ("I worked as a bus driver." -> "bus driver")."""
    found = content_words(sentence)
    return " ".join(found[-VALUE_WORDS:]) if found else fallback


async def generate_persona(
    call: RoleCall, demographics: Demographics, category: str, entity_key: str, count: int
) -> tuple[list[PersonaAttribute], Completion, str]:
    """``count`` persona sentences about ``category``, each asked knowing the ones before
    (so it says something new); a sentence already said is asked again once."""
    pieces = Pieces("persona")
    topic = category.split("▷")[-1].strip().lower()  # "Employment ▷ Previous Profession"
    items: list[dict[str, str]] = []
    said: set[str] = set()
    for number in range(1, count + 1):
        sentence = ""
        for _ in range(2):
            sentence = await ask_text(
                call,
                pieces,
                "stepwise_persona",
                fallback=f"I care a lot about my {topic}.",
                what=f"sentence {number}",
                max_sentences=1,
                max_chars=160,
                starts=("I ", "I'", "My "),
                said=[item["sentence"] for item in items],
                name=demographics.name,
                age=demographics.age,
                gender="man" if demographics.gender == "male" else "woman",
                pronoun="his" if demographics.gender == "male" else "her",
                category=topic,
            )
            if sentence.lower() not in said:
                break
        said.add(sentence.lower())
        items.append({"sentence": sentence, "entity_value": entity_value(sentence, topic)})
    output = PersonaOutput.model_validate({"items": items})
    return to_attributes(output, category, entity_key), pieces.completion(output), pieces.version()
