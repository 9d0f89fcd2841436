"""Scanner role (``mcu augment``): which utterances of an existing dialogue a person would
illustrate with an image, and what that image shows.

Two prompt families, one per mode. MAGID (seed 000, §3.1) asks for the utterances that an
image would enhance, in one of three styles: zero-shot, few-shot, or chain of thought (the
default; its ``reasoning`` field comes before the answer, so the model thinks first).
DialogCC (seed 001, §3.1) asks for image-sharing moments in its
``utterance | speaker | rationale | description`` format.

The model picks turns by the number shown in the prompt; code checks that the number is one
of the turns this window decides (earlier turns are shown as context only) and derives the
speaker, the session and the position from it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.llm.structured import extract_json

PROMPTS = {"magid": "scanner_magid", "dialogcc": "scanner_dialogcc"}
MAX_PICKS = 8


Keyword = Annotated[str, Field(min_length=1, max_length=40)]


class Selection(BaseModel):
    turn: int = Field(ge=1, le=100_000, description="The number shown before the utterance.")
    rationale: str = Field(min_length=3, max_length=300)
    description: str = Field(min_length=3, max_length=300)
    keywords: list[Keyword] = Field(default_factory=list, max_length=5)


class ScanOutput(BaseModel):
    """MAGID, zero-shot and few-shot."""

    selections: list[Selection] = Field(default_factory=list, max_length=MAX_PICKS)


class ScanReasonedOutput(BaseModel):
    """MAGID, chain of thought: the reasoning first, then the answer."""

    reasoning: str = Field(min_length=1, max_length=1500)
    selections: list[Selection] = Field(default_factory=list, max_length=MAX_PICKS)


class Moment(Selection):
    speaker: str = Field(min_length=1, max_length=80)


class MomentsOutput(BaseModel):
    """DialogCC: ``utterance | speaker | rationale | description`` as fields."""

    moments: list[Moment] = Field(default_factory=list, max_length=MAX_PICKS)


def output_model(mode: str, style: str) -> type[BaseModel]:
    if mode == "dialogcc":
        return MomentsOutput
    return ScanReasonedOutput if style == "cot" else ScanOutput


def picks(output: BaseModel) -> list[Selection]:
    return list(getattr(output, "moments", None) or getattr(output, "selections", []))


def check_turns(decide: range, limit: int):
    """Every pick names a turn this window decides, once, and no more than ``limit``."""

    def validate(output: BaseModel) -> None:
        chosen = [p.turn for p in picks(output)]
        wrong = [n for n in chosen if n not in decide]
        if wrong:
            raise ValueError(
                f"turn numbers {wrong} are not among the turns to decide "
                f"({decide.start}..{decide.stop - 1}); earlier turns are context only"
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError("each turn may be picked once")
        if len(chosen) > limit:
            raise ValueError(f"pick at most {limit} turns, not {len(chosen)}")

    return validate


def rescue_picks(model: type[BaseModel], decide: range, limit: int):
    """Code's last resort when the model keeps naming turns it may not pick (a weak model
    does): keep the picks of turns this window decides, each once, up to ``limit``, and say
    what was dropped. The answer must otherwise be valid."""

    def rescue(raw_text: str) -> tuple[BaseModel, list[str]]:
        output = model.model_validate(extract_json(raw_text))
        field = "moments" if "moments" in type(output).model_fields else "selections"
        kept, seen, changes = [], set(), []
        for pick in picks(output):
            if pick.turn not in decide or pick.turn in seen or len(kept) >= limit:
                changes.append(f"dropped the pick of turn {pick.turn}")
                continue
            seen.add(pick.turn)
            kept.append(pick)
        return output.model_copy(update={field: kept}), changes

    return rescue


async def scan_window(
    call: RoleCall,
    *,
    mode: str,
    style: str,
    turns: list[dict[str, Any]],
    decide: range,
    limit: int,
    max_chars: int,
) -> tuple[list[Selection], Completion, str]:
    """The picks among ``turns`` (each ``{"number", "speaker", "text"}``, numbers 1-based in
    the session) whose number is in ``decide``; at most ``limit``."""
    shown = [
        {
            "number": t["number"],
            "speaker": t["speaker"],
            "text": t["text"][:max_chars],
            "context": t["number"] not in decide,
        }
        for t in turns
    ]
    output, completion, version = await ask(
        call,
        PROMPTS[mode],
        output_model(mode, style),
        validate=check_turns(decide, limit),
        rescue=rescue_picks(output_model(mode, style), decide, limit),
        turns=shown,
        style=style,
        first=decide.start,
        last=decide.stop - 1,
        limit=limit,
        field="moments" if mode == "dialogcc" else "selections",
    )
    return picks(output), completion, version
