"""The ``filters:`` section of the config (STARK §3.9, DialogCC §3.3).

It sits at the configuration layer so that :mod:`mcu_sim.config_schema` embeds it without
importing the graphs; :mod:`mcu_sim.graphs.filters` applies it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcu_sim.config_images import MAGID_CLIP_THRESHOLD, NSFW_THRESHOLD


class FilterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_sessions: int | None = Field(None, ge=1, le=100, description="None: episode.sessions_min")
    max_sessions: int | None = Field(None, ge=1, le=100, description="None: episode.sessions_max")
    text_safety: Literal["llm", "classifier", "off"] = "llm"

    @field_validator("text_safety", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as ``False``."""
        return "off" if value is False else value

    safety_classifier: str | None = Field(None, description="Local text-classification model")
    clip_threshold: float = Field(MAGID_CLIP_THRESHOLD, ge=-1, le=1)
    pickscore_threshold: float | None = Field(
        None,
        ge=-100,
        le=100,
        description=(
            "misaligned_image also marks an image whose PickScore (images.scorers.pickscore) "
            "is below this; None: off. STARK §3.9 filters with PickScore but gives no value; "
            "real PickScore_v1 scores lie around 18-23"
        ),
    )
    nsfw_threshold: float = Field(NSFW_THRESHOLD, ge=0, le=1)
    unsafe_labels: list[str] = Field(default_factory=lambda: ["unsafe"])
    max_matches_per_db_image: int = Field(
        100, ge=1, le=1_000_000, description="DialogCC over-matching K"
    )
    inconsistent_similarity: float = Field(0.8, ge=-1, le=1, description="DialogCC tau")
    inconsistent_drop_fraction: float = Field(0.2, ge=0, le=1, description="Top-K% dropped")
    near_duplicate: bool = Field(
        True, description="mcu filter: mark near-duplicate dialogues, personas and images"
    )
    near_duplicate_text: float = Field(
        0.7, ge=0.1, le=1.0, description="Estimated Jaccard (word 3-grams) of two dialogues"
    )
    near_duplicate_persona: float = Field(
        0.8, ge=0.1, le=1.0, description="Estimated Jaccard (word 3-grams) of two personas"
    )
    near_duplicate_image_distance: int = Field(
        4, ge=0, le=16, description="Most bits two 64-bit perceptual image hashes differ by"
    )
    near_duplicate_num_perm: int = Field(
        128, ge=16, le=1024, description="MinHash permutations (more: finer estimates)"
    )

    @model_validator(mode="after")
    def _classifier_needs_a_model(self) -> FilterSettings:
        if self.text_safety == "classifier" and not self.safety_classifier:
            raise ValueError(
                "filters.text_safety is 'classifier' but 'filters.safety_classifier' is not "
                "set: give the folder of a local text-classification model, or use "
                "text_safety: llm (the LLM judge) or off"
            )
        return self
