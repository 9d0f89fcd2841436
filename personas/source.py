"""Where an augmented episode's dialogue came from (``mcu augment``): the input file, the
record's position in it, the record's own id, and the gold image-sharing turns when the
input marks them. Gold turns are kept as positions only, for ``mcu eval turns``; what the
gold marker carried (an image, a caption, a query) is never copied."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

EpisodeKind = str  # "mcu" | "augmented" (the Literal lives on the Episode)


class GoldTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: int = Field(ge=1)
    turn: int = Field(ge=1)


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=4096, description="Input file or folder.")
    position: int = Field(ge=0, description="The record's position in the input, from 0.")
    source_id: str | None = Field(None, max_length=512)
    mode: str | None = Field(None, description="magid | dialogcc")
    gold_turns: list[GoldTurn] | None = Field(
        None, description="None: the input declares no gold marker; []: it marks no turn."
    )
