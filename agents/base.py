"""What every role shares: render its prompt, call the provider with its step settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from mcu_sim.agents.llm.client import Completion, LLMClient, Rescue
from mcu_sim.agents.prompting import load_prompt
from mcu_sim.config import StepSettings

T = TypeVar("T", bound=BaseModel)


@dataclass
class RoleCall:
    """Everything a role needs from the outside world, passed explicitly."""

    llm: LLMClient
    settings: StepSettings
    seed: int | None = None
    use_cache: bool = True
    # "structured" (one JSON call per role) or "stepwise" (agents/stepwise: plain text)
    strategy: str = "structured"


async def ask(
    call: RoleCall,
    prompt_name: str,
    schema: type[T],
    validate: Callable[[T], None] | None = None,
    rescue: Rescue | None = None,
    **variables: Any,
) -> tuple[T, Completion, str]:
    """Render ``prompt_name`` with ``variables``; return (object, completion, prompt version).

    ``validate`` and ``rescue`` go to :meth:`LLMClient.complete`.
    """
    prompt = load_prompt(prompt_name)
    completion = await call.llm.complete(
        prompt.render(**variables),
        schema=schema,
        settings=call.settings,
        prompt_version=f"{prompt.name}@{prompt.version}",
        seed=call.seed,
        use_cache=call.use_cache,
        validate=validate,
        rescue=rescue,
    )
    return completion.value, completion, prompt.version
