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


# DialogCC §3.3 (thresholding-based filtering): images whose combined score (Eq. 1, the
# z-scored description-image and description-caption similarities mixed with alpha 0.5)
# is below 2.702 are discarded; the paper set it by judging 10,000 samples by hand (App. B.5)
DIALOGCC_MIN_COMBINED = 2.702


class ModeSettings(Strict):
    router_order: list[Module] = Field(min_length=1)
    min_combined: float | None = Field(
        None,
        ge=-10,
        le=10,
        description="images.retrieval.min_combined for this mode, when that is not set.",
    )


# one class per mode, each with its defaults, so `--set augment.dialogcc.min_combined=null`
# changes that key alone
class MagidSettings(ModeSettings):
    # MAGID generates with SDXL (add "retrieval" for a database fallback when no SDXL
    # weights are configured)
    router_order: list[Module] = Field(default_factory=lambda: ["t2i"], min_length=1)


class DialogccSettings(ModeSettings):
    router_order: list[Module] = Field(default_factory=lambda: ["retrieval"], min_length=1)
    min_combined: float | None = Field(DIALOGCC_MIN_COMBINED, ge=-10, le=10)


class AugmentConfig(Strict):
    mode: AugmentMode | None = Field(None, description="Set by `mcu augment`; None = mcu run.")
    scan: ScanSettings = Field(default_factory=ScanSettings)
    magid: MagidSettings = Field(default_factory=MagidSettings)
    dialogcc: DialogccSettings = Field(default_factory=DialogccSettings)

    def router_order(self, mode: AugmentMode) -> list[str]:
        return list(getattr(self, mode).router_order)
