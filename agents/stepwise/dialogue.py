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
from mcu_sim.agents.stepwise.text import PHOTO_STARTS, Pieces, ask_text, content_words
from mcu_sim.personas.schema import ASSISTANT, DeviceImage, Turn

PHOTO_WORDS = re.compile(r"\b(photos?|pictures?|pics?|snaps?|selfies?|shots?|look|show)\b", re.I)
ONLINE_WORDS = re.compile(r"\b(online|internet|website|found|news|article)\b", re.I)
CONTEXT_TURNS = 6  # the last turns of the chat the next utterance sees
# what the person would not say (a small model playing them falls back to assistant talk)
ASSISTANT_TALK = re.compile(
    r"\b(assist\w*|help you|how can i|i'?m sorry|i'?m unable|contact me|reach me)\b", re.I
)


def person_refusals(name: str) -> re.Pattern[str]:
    """What the person would not say: assistant talk, or greeting themselves by name (a
    small model playing them answers "Hi Lena!" to the assistant's "Hi Lena!")."""
    own = re.escape(name)
    # "Hi Lena!", "Hai Lena,", "Lena!" opening the line, or "thanks, Lena" anywhere
    greeting = rf"^\W*(?:\w+,?\s+)?{own}\s*[!,]|\b(?:thanks|thank you|dear),?\s+{own}(?!\w)"
    return re.compile(f"{ASSISTANT_TALK.pattern}|{greeting}", re.I)


QUOTING = re.compile(r"says:|said:|\"")  # a rationale that quotes the chat again
OPENER = "Hi!"  # what the person says to open the app, before the first utterance


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
            return f"Greet {name} and ask about the day."
        return f"Say something kind about the photo {name} just shared." if after_photo else ""
    return "Tell the assistant what you did today." if number == 2 else "Add one detail."


def chat_history(turns: list[tuple[str, str]], speaker: str) -> list[dict[str, str]]:
    """The chat so far as ``speaker`` sees it: their lines are the model's (``assistant``),
    the other side's are ``user`` messages; the person's opener first."""
    messages = [{"role": "user" if speaker == ASSISTANT else "assistant", "content": OPENER}]
    for who, text in turns:
        messages.append({"role": "assistant" if who == speaker else "user", "content": text})
    return messages[-CONTEXT_TURNS:]


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
            starts=PHOTO_STARTS,
            context=f'{name} says: "{utterance}" Then {name} shares a photo.',
            subject="the photo",
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
        starts=("To ", "Because ", "He wants", "She wants", f"{name} wants", f"{name} shares"),
        refuse=QUOTING,
        name=name,
        pronoun="He" if variables.get("gender") == "male" else "She",
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
    max_turns: int,
    user_name: str,
    max_chars: int = 400,
    min_sharing: int = 0,
    sharing_more_than: int = 0,
    max_sharing: int = 6,
) -> tuple[list[Turn], Completion, str]:
    """One session, an utterance at a time. A code rule decides the sharing moments: at
    least ``max(1, min_sharing)`` and at most ``max_sharing`` (``sharing_more_than`` is what
    the structured prompt asks for; a small model is not asked to count)."""
    pieces = Pieces("dialogue")
    name = user_name
    count = max_turns  # the dialogue model takes MIN_TURNS..max_turns
    wanted = max(1, min_sharing)  # sharing moments this session has at least
    person_turns = [n for n in range(1, count + 1) if n % 2 == 0]
    said: list[tuple[str, str]] = []  # (speaker, line) with shared photos in the line
    utterances: list[str] = []
    moments: list[dict[str, Any]] = []
    after_photo = False
    refusals = person_refusals(name)
    for number in range(1, count + 1):
        speaker = ASSISTANT if number % 2 == 1 else name
        history = chat_history(said, speaker)
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
            history=history[:-1],
            last=history[-1]["content"],
            as_assistant=speaker == ASSISTANT,
            name=name,
            age=variables["age"],
            gender="man" if variables.get("gender") == "male" else "woman",
            date=variables["date"],
            event=variables["event"],
            recap=_recap(variables),
            hint=_hint(speaker, name, number, after_photo),
            refuse=None if speaker == ASSISTANT else refusals,
        )
        utterances.append(text)
        said.append((speaker, text))
        after_photo = False
        if speaker == ASSISTANT or len(moments) > wanted:
            continue
        left = len([n for n in person_turns if n > number])
        if PHOTO_WORDS.search(text) or left < wanted - len(moments):
            moment = await _moment(call, pieces, variables, text, number)
            moments.append(moment)
            said[-1] = (speaker, f"{text} (shares a photo: {moment['image_description']})")
            after_photo = True
    model = dialogue_model(album_ids, min_sharing, max_turns, max_chars)
    output = model.model_validate({"utterances": utterances, "sharing_moments": moments})
    return to_turns(output, user_name), pieces.completion(output), pieces.version()
