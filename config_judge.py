"""The ``evaluation:`` section of the config: settings of ``mcu judge``.

The judge's sampling settings are a step like any other (``llm.steps.evaluator``; the
``judge`` step is the text-safety filter's). What is here says how episodes are shown to
it. Nothing here changes an episode, so the section is left out of the config fingerprint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vision: bool = Field(
        False,
        description=(
            "The evaluator's model accepts image input (OpenAI image content parts): shared "
            "images are sent as the images themselves (base64 data URLs), each after its "
            "description. False: images are shown as their descriptions only."
        ),
    )
    image_detail: Literal["low", "high", "auto"] = Field(
        "low", description="OpenAI's image detail level (low: a fixed, small token cost)."
    )
    max_images: int = Field(
        20, ge=0, le=200, description="At most this many images per request (the first ones)."
    )
    bootstrap_resamples: int = Field(
        2000, ge=100, le=1_000_000, description="Resamples of the 95 % bootstrap intervals."
    )
    max_in_flight: int = Field(4, ge=1, le=10_000, description="Episodes judged at once.")
