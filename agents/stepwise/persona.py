"""Stepwise persona role: persona sentences one by one, then the entity value of each."""

from __future__ import annotations

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.persona import PersonaOutput, to_attributes
from mcu_sim.agents.stepwise.text import Pieces, ask_text, words
from mcu_sim.personas.samplers import demographic_sentence
from mcu_sim.personas.schema import Demographics, PersonaAttribute

VALUE_WORDS = 3


def _fallback_value(sentence: str, category: str) -> str:
    """The sentence's last few words stand for its value when the model gives none."""
    found = words(sentence)
    return " ".join(found[-VALUE_WORDS:]) if found else category


async def generate_persona(
    call: RoleCall, demographics: Demographics, category: str, entity_key: str, count: int
) -> tuple[list[PersonaAttribute], Completion, str]:
    """``count`` persona sentences about ``category``, each asked knowing the ones before
    (so it says something new); a sentence already said is asked again once."""
    pieces = Pieces("persona")
    person = f"My name is {demographics.name}. {demographic_sentence(demographics)}"
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
                person=person,
                said=[item["sentence"] for item in items],
                name=demographics.name,
                category=topic,
            )
            if sentence.lower() not in said:
                break
        said.add(sentence.lower())
        value = await ask_text(
            call,
            pieces,
            "stepwise_persona_value",
            fallback=_fallback_value(sentence, topic),
            what=f"the {entity_key} of sentence {number}",
            max_tokens=12,
            min_words=1,
            max_sentences=1,
            max_chars=60,
            sentence=sentence,
            entity_key=entity_key.replace("_", " "),
        )
        items.append({"sentence": sentence, "entity_value": value.rstrip(".!?")})
    output = PersonaOutput.model_validate({"items": items})
    return to_attributes(output, category, entity_key), pieces.completion(output), pieces.version()
