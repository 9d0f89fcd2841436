"""The ``images:`` section of the config: the image tools, the QA loop and the scorers.

It sits at the configuration layer (it imports nothing of the package) so that
:mod:`mcu_sim.config_schema` can embed it without importing the tools; the tools read
their settings from here (:mod:`mcu_sim.tools.settings` re-exports them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# MAGID (§3, App. I): CLIP score and aesthetic score an image must reach; the NSFW
# probability it must stay under. The QA loop and the filters default to these.
MAGID_CLIP_THRESHOLD = 0.21
MAGID_AESTHETIC_THRESHOLD = 0.51
NSFW_THRESHOLD = 0.5


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrictNoNamespace(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ClipSettings(StrictNoNamespace):
    """``images.scorers.clip``: CLIP score between an image and its description."""

    enabled: bool = True
    model: str = Field("ViT-L-14", description="open_clip name, or local-dir:/path/to/folder.")
    pretrained: str | None = Field(
        None, description="Checkpoint file or open_clip tag; ignored for local-dir models."
    )
    random_weights: bool = Field(False, description="Random init, for tests and benches only.")


class AestheticSettings(StrictNoNamespace):
    """``images.scorers.aesthetic``: LAION improved aesthetic predictor on CLIP ViT-L/14."""

    enabled: bool = True
    weights_path: str | None = Field(None, description="The predictor's .pth state dict.")
    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = None
    random_weights: bool = Field(False, description="Random MLP and CLIP, tests only.")


class NsfwSettings(StrictNoNamespace):
    """``images.scorers.nsfw``: an image classifier, or the bundled open_nsfw fallback."""

    enabled: bool = True
    model_path: str | None = Field(
        None, description="Local transformers image classifier; None uses open_nsfw."
    )
    fallback: bool = Field(True, description="Use open_nsfw when model_path cannot load.")
    nsfw_labels: list[str] = Field(default_factory=lambda: ["nsfw", "porn", "hentai", "sexy"])


class PickScoreSettings(StrictNoNamespace):
    """``images.scorers.pickscore``: the Pick-a-Pic preference model (STARK §3.9)."""

    enabled: bool = True
    model_path: str | None = Field(
        None, description="Local PickScore_v1 folder (transformers CLIPModel); None: not scored."
    )
    processor_path: str | None = Field(None, description="Processor folder; None: model_path.")


class ScorerSettings(StrictNoNamespace):
    """``images.scorers`` in the config file. Unset weights make a scorer unavailable
    (``not scored: <why>``), never random."""

    device: Literal["cpu", "cuda", "mps"] = "cpu"
    batch_size: int = Field(16, ge=1, le=1024)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    aesthetic: AestheticSettings = Field(default_factory=AestheticSettings)
    nsfw: NsfwSettings = Field(default_factory=NsfwSettings)
    pickscore: PickScoreSettings = Field(default_factory=PickScoreSettings)


# "t2i" (plain text-to-image, MAGID's SDXL) is offered to `mcu augment`; the default router
# order of `mcu run` keeps the three STARK modules.
Module = Literal["personalized_t2i", "retrieval", "web_search", "t2i"]
MODULES: tuple[Module, ...] = ("personalized_t2i", "retrieval", "web_search")


class FaceSettings(Strict):
    enabled: bool = True
    base_model: str | None = Field(None, description="Local SDXL base folder or file.")
    lightning_unet: str | None = None
    lightning_lora: str | None = None
    steps: int = Field(4, ge=1, le=50)
    height: int = Field(1024, ge=8, le=4096, multiple_of=8)
    width: int = Field(1024, ge=8, le=4096, multiple_of=8)


class PhotoMakerSettings(Strict):
    enabled: bool = True
    base_model: str | None = None
    checkpoint: str | None = Field(None, description="photomaker-v1.bin")
    steps: int = Field(30, ge=1, le=100)
    height: int = Field(1024, ge=8, le=4096, multiple_of=8)
    width: int = Field(1024, ge=8, le=4096, multiple_of=8)


class RetrievalSettings(Strict):
    enabled: bool = True
    database: str | None = Field(None, description="Index folder; None = the shipped DB.")
    databases: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Several index folders searched together with one z-scored ranking "
        "(STARK's five sources); replaces `database` when given.",
    )
    clip_model: str | None = None
    clip_pretrained: str | None = None
    top_k: int = Field(5, ge=1, le=100)
    min_combined: float | None = Field(
        None,
        ge=-10,
        le=10,
        description="DialogCC's threshold on the combined z-scored score (§3.3: 2.702); a "
        "candidate below it is not aligned. None = off; `mcu augment --mode dialogcc` sets "
        "augment.dialogcc.min_combined.",
    )


class WebSearchSettings(Strict):
    enabled: bool = False
    crawler: str = "bing"
    top_k: int = Field(3, ge=1, le=20)
    max_bytes: int = Field(10_000_000, ge=1_000, le=500_000_000)
    timeout_s: float = Field(15.0, gt=0, le=600)
    allow_loopback: bool = False
    search_url: str | None = None


class QASettings(Strict):
    """MAGID's quality loop (App. I) and which scorers run.

    A generated image of one description may fail ``failures_before_rewrite`` times (MAGID:
    two), then the rewriter writes a new description, up to ``max_rewrites`` times. Retrieval
    and web search return the same images for the same description, so they get one try per
    description. ``max_attempts`` caps the tries (executions that produced or failed to produce
    an image) of one request over all descriptions and modules.
    """

    enabled: bool = True
    clip_threshold: float = Field(MAGID_CLIP_THRESHOLD, ge=-1, le=1)
    aesthetic_threshold: float = Field(MAGID_AESTHETIC_THRESHOLD, ge=0, le=10)
    nsfw_threshold: float = Field(NSFW_THRESHOLD, ge=0, le=1)
    scorers: list[Literal["clip", "aesthetic", "nsfw", "pickscore"]] = Field(
        default_factory=lambda: ["clip", "aesthetic", "nsfw", "pickscore"]
    )
    accept_unscored: bool = Field(
        True, description="Accept an image a scorer could not score (recorded as such)."
    )
    failures_before_rewrite: int = Field(
        2, ge=1, le=10, description="Failed generations of one description before a rewrite."
    )
    max_rewrites: int = Field(1, ge=0, le=5)
    max_attempts: int = Field(
        6, ge=1, le=50, description="Total tries per request, over all rewrites and modules."
    )
    max_alternatives: int = Field(
        2,
        ge=0,
        le=20,
        description="Other passing candidates kept beside the chosen one (DialogCC's "
        "inconsistent-images rule compares them); the rest are deleted.",
    )


class BatchingSettings(Strict):
    """Batched generation on the Ray image actors: SDXL and PhotoMaker requests of different
    episodes (same tool, size and steps) arriving within ``window_s`` of each other, up to
    ``max_batch``, share one pipeline call. 1 renders every request alone."""

    window_s: float = Field(0.02, ge=0, le=1, description="Wait for more requests (seconds).")
    max_batch: int = Field(8, ge=1, le=64, description="Requests per pipeline call at most.")


class ImagesConfig(Strict):
    enabled: bool = True
    device: Literal["cpu", "cuda", "mps"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    router_order: list[Module] = Field(default_factory=lambda: list(MODULES))
    face: FaceSettings = Field(default_factory=FaceSettings)
    t2i: FaceSettings = Field(
        default_factory=FaceSettings, description="Plain SDXL text-to-image (MAGID)."
    )
    photomaker: PhotoMakerSettings = Field(default_factory=PhotoMakerSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    web_search: WebSearchSettings = Field(default_factory=WebSearchSettings)
    qa: QASettings = Field(default_factory=QASettings)
    scorers: ScorerSettings = Field(default_factory=ScorerSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
