"""Rewriter role (MAGID's feedback loop): a clearer description after failed images."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion

PROMPT = "rewriter"


class RewriteOutput(BaseModel):
    description: str = Field(min_length=5, max_length=300)


async def rewrite_description(
    call: RoleCall, description: str, reasons: list[str]
) -> tuple[str, Completion, str]:
    output, completion, version = await ask(
        call,
        PROMPT,
        RewriteOutput,
        description=description,
        reasons="; ".join(reasons)[:800] or "low quality",
    )
    return output.description.strip(), completion, version
