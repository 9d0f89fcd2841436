"""Stepwise commonsense and narrative roles: one frame or one retelling per request."""

from __future__ import annotations

import re

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.commonsense import RELATIONS, CommonsenseOutput, clean_phrase
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.narrative import NarrativeOutput
from mcu_sim.agents.stepwise.text import Pieces, ask_text
from mcu_sim.personas.schema import Commonsense, Demographics, Narrative

# The frame each relation's sentence starts with (STARK's PEACOK frames) and the sentence
# used when the model never finishes it in words. ``clean_phrase`` later cuts the frame's
# "I" (or "So, I", "I regularly", "I plan") so the Table 4 template can finish it.
FRAMES = {
    "routine_habit": ("I regularly", "I regularly spend time on what I love."),
    "characteristic": ("I am", "I am curious and kind."),
    "experience": ("I once", "I once learned something new from a hard time."),
    "goal_plan": ("I plan to", "I plan to get better at what I love."),
    "relationship": ("So, I", "So, I share what I love with my friends."),
}


def in_frame(text: str, frame: str, name: str) -> str:
    """``text`` as a sentence starting with ``frame``: a sentence about ``name`` in the
    third person is turned to the first, and one in another shape gets the frame put in
    front of it only when it is a bare phrase."""
    lowered = text.lower()
    if lowered.startswith(frame.lower()):
        return text
    if text.startswith(name + " "):
        text = "I " + text[len(name) + 1 :]
        lowered = text.lower()
    head = frame.split()[-1].lower()  # "regularly", "am", "once", "to", "I"
    if lowered.startswith("i ") and frame.startswith("So, "):
        return "So, " + text
    if lowered.startswith(("i ", "i'")) and head in ("am", "once", "regularly", "i"):
        return text
    if lowered.startswith("i plan"):
        return text
    return f"{frame} {text[0].lower()}{text[1:]}"


async def generate_commonsense(
    call: RoleCall, demographics: Demographics, persona_sentence: str
) -> tuple[list[Commonsense], Completion, str]:
    """The five relations, each the model's sentence in its frame."""
    pieces = Pieces("commonsense")
    phrases: dict[str, str] = {}
    for relation in RELATIONS:
        frame, fallback = FRAMES[relation]
        text = await ask_text(
            call,
            pieces,
            "stepwise_commonsense",
            fallback=fallback,
            what=relation,
            max_tokens=40,
            max_sentences=1,
            max_chars=150,
            starts=(frame,),
            persona_sentence=persona_sentence,
            name=demographics.name,
            age=demographics.age,
            gender="man" if demographics.gender == "male" else "woman",
            frame=frame,
        )
        phrases[relation] = in_frame(text, frame, demographics.name)
    output = CommonsenseOutput.model_validate(phrases)
    items = [Commonsense(relation=r, text=clean_phrase(getattr(output, r), r)) for r in RELATIONS]
    return items, pieces.completion(output), pieces.version()


async def generate_narrative(
    call: RoleCall, relation: str, sentence_form: str
) -> tuple[Narrative, Completion, str]:
    """The sentence form retold in two or three sentences (the form itself as fallback)."""
    pieces = Pieces("narrative")
    named = re.match(r"My name is ([^.]+)\.", sentence_form)
    text = await ask_text(
        call,
        pieces,
        "stepwise_narrative",
        fallback=sentence_form,
        what="the narrative",
        max_tokens=120,
        min_words=12,
        max_sentences=3,
        max_chars=600,
        starts=(named.group(1),) if named else (),
        sentence_form=sentence_form,
        name=named.group(1) if named else "this person",
    )
    output = NarrativeOutput.model_validate({"narrative": text})
    narrative = Narrative(
        relation=relation, sentence_form=sentence_form, narrative=output.narrative.strip()
    )
    return narrative, pieces.completion(output), pieces.version()
