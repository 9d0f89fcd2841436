"""Stepwise dialogue role: one utterance at a time given the conversation so far.

After each of the person's utterances a code rule decides whether a photo is shared: when
the utterance speaks of a photo, or when the session would otherwise end with fewer than
its sharing moments (at least one). The model then writes the photo's description (unless
an album photo fits the utterance, which is then referenced by id) and the rationale, in
plain text; code sets speakers, anchors, sources, album references and keywords, and the
assistant's next utterance sees the photo.
"""

from __future__ import annotations

import re
from typing import Any

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.dialogue import dialogue_model, to_turns
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.stepwise.text import Pieces, ask_text, words
from mcu_sim.personas.schema import ASSISTANT, DeviceImage, Turn

PHOTO_WORDS = re.compile(r"\b(photos?|pictures?|pics?|snaps?|selfies?|shots?|look|show)\b", re.I)
ONLINE_WORDS = re.compile(r"\b(online|internet|website|found|news|article)\b", re.I)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "to",
        "for",
        "with",
        "and",
        "or",
        "but",
        "from",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "my",
        "your",
        "his",
        "her",
        "their",
        "our",
        "me",
        "you",
        "him",
        "them",
        "we",
        "they",
        "i",
        "photo",
        "picture",
        "image",
        "shows",
        "showing",
        "taken",
        "some",
        "very",
        "just",
        "there",
        "here",
    ]
)
CONTEXT_LINES = 6  # the last lines of the chat the next utterance sees


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its content, lowercased, in order, once each."""
    found = [w.lower() for w in words(text)]
    return list(dict.fromkeys(w for w in found if w not in STOPWORDS and len(w) > 2))


def album_match(text: str, album: list[DeviceImage]) -> DeviceImage | None:
    """The album photo sharing at least two content words with ``text`` (the most wins)."""
    wanted = set(content_words(text))
    best, best_overlap = None, 1
    for image in album:
        overlap = len(wanted & set(content_words(image.description)))
        if overlap > best_overlap:
            best, best_overlap = image, overlap
    return best


def _recap(variables: dict[str, Any]) -> str:
    history = variables.get("history") or []
    if not history:
        return ""
    recap = (
        f"Their last chat was {variables.get('time_interval', 'some time')} ago, about: "
        f"{history[-1].event}"
    )
    if variables.get("experience"):
        recap += f" Since then: {variables['experience']}"
    return recap


def _hint(speaker: str, name: str, number: int, after_photo: bool) -> str:
    if speaker == ASSISTANT:
        if number == 1:
            return f"Greet {name} and ask about the topic."
        return f"React warmly to the photo {name} just shared." if after_photo else ""
    return "Tell the assistant about the topic." if number == 2 else ""


async def _moment(
    call: RoleCall, pieces: Pieces, variables: dict[str, Any], utterance: str, number: int
) -> dict[str, Any]:
    """One sharing moment after utterance ``number`` of the person."""
    name, album = variables["name"], variables["album"]
    fitting = album_match(f"{utterance} {variables['event']}", album)
    source = "internet" if ONLINE_WORDS.search(utterance) else "mobile"
    if fitting is not None and source == "mobile":
        description = fitting.description
    else:
        description = await ask_text(
            call,
            pieces,
            "stepwise_photo",
            fallback=f"A photo of {name} on the day: {variables['event'].rstrip('.')}.",
            what=f"the photo after utterance {number}",
            max_tokens=45,
            min_words=4,
            max_sentences=1,
            max_chars=240,
            context=f"{variables['event']} {name} says: {utterance}",
            subject=f"the photo {name} shares now",
        )
    rationale = await ask_text(
        call,
        pieces,
        "stepwise_rationale",
        fallback=f"To show the assistant what {name} is talking about.",
        what=f"the rationale after utterance {number}",
        max_tokens=40,
        max_sentences=1,
        max_chars=190,
        name=name,
        utterance=utterance,
        description=description,
    )
    keywords = [w for w in content_words(description) if len(w) <= 30][:3] or ["photo"]
    return {
        "after_utterance": number,
        "shared_by": "user",
        "rationale": rationale,
        "image_description": description,
        "image_source": source,
        "keywords": keywords,
        "image_id_from_mobile": fitting.id if fitting and source == "mobile" else None,
    }


async def generate_session(
    call: RoleCall,
    *,
    variables: dict[str, Any],
    album_ids: list[int],
    min_sharing: int,
    max_turns: int,
    user_name: str,
    max_chars: int = 400,
) -> tuple[list[Turn], Completion, str]:
    pieces = Pieces("dialogue")
    name = user_name
    count = max_turns  # the dialogue model takes MIN_TURNS..max_turns
    wanted = max(1, min_sharing)  # sharing moments this session has at least
    person_turns = [n for n in range(1, count + 1) if n % 2 == 0]
    lines: list[str] = []
    utterances: list[str] = []
    moments: list[dict[str, Any]] = []
    after_photo = False
    for number in range(1, count + 1):
        speaker = ASSISTANT if number % 2 == 1 else name
        text = await ask_text(
            call,
            pieces,
            "stepwise_utterance",
            fallback=(
                "That sounds lovely, tell me more about it."
                if speaker == ASSISTANT
                else f"I wanted to tell you about this: {variables['event'].rstrip('.')}."
            ),
            what=f"utterance {number}",
            max_tokens=60,
            max_chars=max_chars,
            name=name,
            date=variables["date"],
            event=variables["event"],
            recap=_recap(variables),
            lines=lines[-CONTEXT_LINES:],
            speaker="the AI assistant" if speaker == ASSISTANT else name,
            hint=_hint(speaker, name, number, after_photo),
        )
        utterances.append(text)
        lines.append(f"{speaker}: {text}")
        after_photo = False
        if speaker == ASSISTANT or len(moments) > wanted:
            continue
        left = len([n for n in person_turns if n > number])
        if PHOTO_WORDS.search(text) or left < wanted - len(moments):
            moment = await _moment(call, pieces, variables, text, number)
            moments.append(moment)
            lines.append(f"{name}: [shares a photo: {moment['image_description']}]")
            after_photo = True
    model = dialogue_model(album_ids, min_sharing, max_turns, max_chars)
    output = model.model_validate({"utterances": utterances, "sharing_moments": moments})
    return to_turns(output, user_name), pieces.completion(output), pieces.version()
