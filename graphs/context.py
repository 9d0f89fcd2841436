"""The runtime context: dependencies injected into nodes (never module globals)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.llm.client import LLMClient
from mcu_sim.config import Config

IMAGES_DISABLED = "image tools disabled (images.enabled is false)"


def derive_seed(seed: int, *labels: object) -> int:
    """A stable 31-bit sub-seed for one purpose, so adding a step never shifts the others.

    The first four bytes of the SHA-256 of ``seed:label:...``."""
    text = ":".join([str(x) for x in (seed, *labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class EpisodeContext:
    """What nodes get besides state: config, the LLM client, tools and the run directory."""

    config: Config
    llm: LLMClient
    run_dir: Path
    tools: Any = None
    use_cache: bool = True
    executions: Counter = field(default_factory=Counter)
    step_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the run's fingerprint when the runner already has it: hashed once per run instead
    # of once per episode (about 0.2 ms each: a dump and redaction walk of the config)
    config_fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The config fingerprint recorded in the episode."""
        if self.config_fingerprint is None:
            self.config_fingerprint = self.config.fingerprint()
        return self.config_fingerprint

    def role(self, step: str, seed: int, *labels: object) -> RoleCall:
        settings = self.config.llm.step(step)
        if step in self.step_overrides:
            settings = settings.model_copy(update=self.step_overrides[step])
        return RoleCall(
            llm=self.llm,
            settings=settings,
            seed=derive_seed(seed, step, *labels),
            use_cache=self.use_cache,
            # auto follows the client actually used (a test may pair any config with a fake
            # endpoint's client)
            strategy=self.config.llm.resolved_strategy(self.llm.provider),
        )
