"""Summarizer role (STARK App. F, §5): an optional per-session summary (off by default)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import Turn

PROMPT = "summarizer"


class SummaryOutput(BaseModel):
    summary: str = Field(min_length=20, max_length=800)


async def summarize_session(
    call: RoleCall, name: str, date: str, turns: list[Turn]
) -> tuple[str, Completion, str]:
    output, completion, version = await ask(
        call, PROMPT, SummaryOutput, name=name, date=date, turns=turns
    )
    return output.summary.strip(), completion, version
