"""The ``augment:`` section: giving existing text-only dialogues images (MAGID, DialogCC).

``mcu augment`` sets ``augment.mode``; a run whose config has a mode runs the augmentation
graph (:mod:`mcu_sim.graphs.augment`) on the normalized dialogues in its run directory
instead of the life-simulation graph, on the same runner.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcu_sim.config_images import Module

AugmentMode = Literal["magid", "dialogcc"]
PromptStyle = Literal["zero_shot", "few_shot", "cot"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanSettings(Strict):
    """How the scanner reads a dialogue: prompt style (MAGID §3.1), windows, the cap."""

    prompt_style: PromptStyle = Field("cot", description="MAGID: zero_shot | few_shot | cot.")
    window_turns: int = Field(16, ge=2, le=200, description="Turns shown per scanner call.")
    window_overlap: int = Field(
        4, ge=0, le=100, description="Turns of the previous window shown again as context."
    )
    max_images: int = Field(6, ge=0, le=100, description="Images per dialogue at most.")
    max_utterance_chars: int = Field(
        600, ge=20, le=10_000, description="Longer utterances are cut in the prompt only."
    )

    @model_validator(mode="after")
    def _overlap_below_window(self) -> ScanSettings:
        if self.window_overlap >= self.window_turns:
            raise ValueError(
                f"augment.scan.window_overlap ({self.window_overlap}) must be smaller than "
                f"augment.scan.window_turns ({self.window_turns})"
            )
        return self


class ModeSettings(Strict):
    router_order: list[Module] = Field(min_length=1)


class AugmentConfig(Strict):
    mode: AugmentMode | None = Field(None, description="Set by `mcu augment`; None = mcu run.")
    scan: ScanSettings = Field(default_factory=ScanSettings)
    # MAGID generates with SDXL (add "retrieval" for a database fallback when no SDXL
    # weights are configured); DialogCC retrieves from the image database
    magid: ModeSettings = Field(default_factory=lambda: ModeSettings(router_order=["t2i"]))
    dialogcc: ModeSettings = Field(default_factory=lambda: ModeSettings(router_order=["retrieval"]))

    def router_order(self, mode: AugmentMode) -> list[str]:
        return list(getattr(self, mode).router_order)
