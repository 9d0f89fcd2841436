"""Dialogue role (STARK §3.8): one session of conversation with image-sharing moments.

The model writes alternating utterances plus a list of sharing moments anchored after an
utterance. Code assigns turn ids and speaker names, inserts the sharing turns, fixes sources
that cannot be (the assistant has no phone) and grows the album with new phone photos.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import ASSISTANT, DeviceImage, SharingInfo, Turn

PROMPT = "dialogue"
MIN_TURNS = 6
# Every string and list is bounded: constrained decoding with a small model rambles otherwise.
Keyword = Annotated[str, Field(min_length=1, max_length=30)]


def dialogue_model(
    album_ids: list[int],
    min_sharing: int = 0,
    max_turns: int = 14,
    max_chars: int = 400,
    max_sharing: int = 6,
) -> type[BaseModel]:
    """Output model for one session; album ids are an enum so a dangling id cannot validate.

    The sharing moments are bounded (``max_sharing``) but not forced: the prompt asks for
    more than two as STARK's does, and alignment and the filters decide what stays."""
    return _dialogue_model(
        tuple(album_ids), min_sharing, max(min_sharing, max_sharing), max_turns, max_chars
    )


# Building a pydantic model (and its JSON schema) costs about a millisecond: one class per
# distinct shape, reused by every episode whose album has the same ids.
@functools.lru_cache(maxsize=256)
def _dialogue_model(
    album_ids: tuple[int, ...], min_sharing: int, max_sharing: int, max_turns: int, max_chars: int
) -> type[BaseModel]:
    # Stripped before the length check, so a line of only whitespace is refused.
    utterance = Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=2, max_length=max_chars)
    ]
    choices: tuple[Any, ...] = (*album_ids, "new")
    moment = create_model(
        "SharingMoment",
        after_utterance=(int, Field(ge=1, le=max_turns)),
        shared_by=(Literal["user", "assistant"], ...),
        rationale=(str, Field(min_length=5, max_length=200)),
        image_description=(str, Field(min_length=10, max_length=250)),
        image_source=(Literal["mobile", "internet"], ...),
        keywords=(list[Keyword], Field(min_length=1, max_length=5)),
        image_id_from_mobile=(Literal[choices] | None, None),  # type: ignore[valid-type]
    )
    return create_model(
        "DialogueOutput",
        utterances=(
            list[utterance],  # type: ignore[valid-type]
            Field(min_length=min(MIN_TURNS, max_turns), max_length=max_turns),
        ),
        sharing_moments=(list[moment], Field(min_length=min_sharing, max_length=max_sharing)),
    )


def _sharing_info(moment: Any) -> SharingInfo:
    source = moment.image_source
    ref = moment.image_id_from_mobile
    if moment.shared_by == "assistant" or source == "internet":
        source, ref = "internet", None
    elif ref is None:
        ref = "new"
    keywords = [k.strip()[:40] for k in moment.keywords if k.strip()][:5]
    return SharingInfo(
        rationale=moment.rationale.strip(),
        image_description=moment.image_description.strip(),
        image_source=source,
        keywords=keywords,
        image_id_from_mobile=ref,
    )


def to_turns(output: Any, user_name: str) -> list[Turn]:
    """Alternating utterances (assistant first) with sharing turns inserted after anchors."""
    moments: dict[int, list[Any]] = {}
    last = len(output.utterances)
    for moment in output.sharing_moments:
        moments.setdefault(min(moment.after_utterance, last), []).append(moment)
    turns: list[Turn] = []
    for number, text in enumerate(output.utterances, start=1):
        speaker = ASSISTANT if number % 2 == 1 else user_name
        turns.append(Turn(id=len(turns) + 1, speaker=speaker, utterance=text.strip()))
        for moment in moments.get(number, []):
            who = ASSISTANT if moment.shared_by == "assistant" else user_name
            turns.append(
                Turn(id=len(turns) + 1, speaker=who, utterance="", sharing=_sharing_info(moment))
            )
    return turns


def grow_album(
    turns: list[Turn], album: list[DeviceImage], session_index: int
) -> list[DeviceImage]:
    """New phone photos shared in this session join the album from the next session on.

    The photo's ``request_id`` is the sharing turn's request, whose image it will show.
    """
    added = []
    next_id = max((d.id for d in album), default=0) + 1
    for turn in turns:
        info = turn.sharing
        if info and info.image_source == "mobile" and info.image_id_from_mobile == "new":
            added.append(
                DeviceImage(
                    id=next_id,
                    description=info.image_description,
                    categories=["shared"],
                    added_in_session=session_index,
                    request_id=turn.request_id,
                )
            )
            next_id += 1
    return added


async def generate_session(
    call: RoleCall,
    *,
    variables: dict[str, Any],
    album_ids: list[int],
    sharing_more_than: int,
    max_sharing: int,
    max_turns: int,
    user_name: str,
    max_chars: int = 400,
    min_sharing: int = 0,
) -> tuple[list[Turn], Completion, str]:
    model = dialogue_model(album_ids, min_sharing, max_turns, max_chars, max_sharing)
    output, completion, version = await ask(
        call,
        PROMPT,
        model,
        sharing_more_than=sharing_more_than,
        max_sharing=max_sharing,
        min_turns=min(MIN_TURNS, max_turns),
        max_turns=max_turns,
        **variables,
    )
    return to_turns(output, user_name), completion, version
