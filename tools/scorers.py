"""Image quality scorers for the aligner's QA step and the filter stage: the factory.

:func:`build_scorers` makes the concrete scorers (:mod:`mcu_sim.tools.clip_score`,
:mod:`mcu_sim.tools.aesthetic`, :mod:`mcu_sim.tools.nsfw`, :mod:`mcu_sim.tools.pickscore`)
from ``images.scorers``. What
they share (:class:`Score`, :class:`ImageScorer`, the ``not scored`` helpers) lives in
:mod:`mcu_sim.tools.scoring` and is re-exported here, so users import scorers from one place.
None of these modules imports heavy libraries before a scorer loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcu_sim.config_images import (
    AestheticSettings,
    ClipSettings,
    NsfwSettings,
    ScorerSettings,
)
from mcu_sim.tools.aesthetic import AestheticScorer
from mcu_sim.tools.clip_score import ClipBackbone, ClipScorer
from mcu_sim.tools.nsfw import NsfwScorer
from mcu_sim.tools.pickscore import PickScoreScorer
from mcu_sim.tools.scoring import (
    ImageScorer,
    Score,
    not_scored,
    open_rgb,
    scores_record,
    scoring_failed,
)

__all__ = [
    "AestheticScorer",
    "AestheticSettings",
    "ClipScorer",
    "ClipSettings",
    "ImageScorer",
    "NsfwScorer",
    "NsfwSettings",
    "PickScoreScorer",
    "Score",
    "ScorerSettings",
    "build_scorers",
    "not_scored",
    "open_rgb",
    "scores_record",
    "scoring_failed",
]


def build_scorers(
    settings: ScorerSettings | Mapping[str, Any] | None = None,
) -> dict[str, ImageScorer]:
    """The enabled scorers by name (``clip``, ``aesthetic``, ``nsfw``, ``pickscore``),
    constructed but not loaded. When the aesthetic predictor uses the same CLIP model as the
    CLIP scorer, the two share one backbone so it is loaded once."""
    if isinstance(settings, ScorerSettings):
        cfg = settings
    else:
        cfg = ScorerSettings.model_validate(dict(settings or {}))
    c, a, n = cfg.clip, cfg.aesthetic, cfg.nsfw
    backbone = ClipBackbone(c.model, c.pretrained, cfg.device, random_weights=c.random_weights)
    out: dict[str, ImageScorer] = {}
    if c.enabled:
        out["clip"] = ClipScorer(batch_size=cfg.batch_size, backbone=backbone)
    if a.enabled:
        same = (a.clip_model, a.clip_pretrained, a.random_weights) == (
            c.model,
            c.pretrained,
            c.random_weights,
        )
        out["aesthetic"] = AestheticScorer(
            a.weights_path,
            a.clip_model,
            a.clip_pretrained,
            cfg.device,
            random_weights=a.random_weights,
            batch_size=cfg.batch_size,
            backbone=backbone if same else None,
        )
    if n.enabled:
        out["nsfw"] = NsfwScorer(
            n.model_path,
            cfg.device,
            batch_size=cfg.batch_size,
            fallback=n.fallback,
            nsfw_labels=tuple(n.nsfw_labels),
        )
    if cfg.pickscore.enabled:
        p = cfg.pickscore
        out["pickscore"] = PickScoreScorer(
            p.model_path, p.processor_path, cfg.device, batch_size=cfg.batch_size
        )
    return out
