"""QA of candidate images (MAGID §3, App. I): score every candidate the same way, keep the
best one that passes (and the other passing ones as alternatives), say why the others
failed, and delete the files of the candidates not kept.

Thresholds and which scorers run come from ``images.qa``; a scorer that cannot score (no
weights, or it raised while scoring) records ``not scored: <why>`` and
``images.qa.accept_unscored`` decides what that means.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate, image_record
from mcu_sim.tools.scorers import build_scorers, not_scored, scores_record, scoring_failed
from mcu_sim.tools.settings import ImagesConfig

log = logging.getLogger(__name__)
HIGHER_IS_BETTER = {"clip": True, "aesthetic": True, "nsfw": False}


@dataclass
class Verdict:
    """QA outcome over all candidates of one try; ``record`` is the try's QA record
    (per-candidate scores with scorer versions, thresholds, reasons, what was kept)."""

    best: dict[str, Any] | None
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def build_qa_scorers(settings: ImagesConfig) -> dict[str, Any]:
    if not settings.qa.enabled:
        return {}
    scorers = build_scorers(settings.scorers)
    return {name: s for name, s in scorers.items() if name in settings.qa.scorers}


def thresholds(settings: ImagesConfig) -> dict[str, float]:
    qa = settings.qa
    return {
        "clip": qa.clip_threshold,
        "aesthetic": qa.aesthetic_threshold,
        "nsfw": qa.nsfw_threshold,
    }


def check_scores(
    scores: dict[str, Any], limits: dict[str, float], accept_unscored: bool
) -> list[str]:
    """Reasons a candidate fails (empty when it passes). A score without a QA threshold
    (PickScore: the paper gives none; ``filters.pickscore_threshold`` marks afterwards) is
    recorded, not a gate."""
    reasons = []
    for name, score in scores.items():
        if name not in limits:
            continue
        verdict = score.passes(limits[name], HIGHER_IS_BETTER[name])
        if verdict is None and not accept_unscored:
            reasons.append(f"{name} {score.note}")
        elif verdict is False:
            relation = ">=" if HIGHER_IS_BETTER[name] else "<"
            reasons.append(f"{name} {score.value:.3f} not {relation} {limits[name]}")
    return reasons


def _rank(candidate: dict[str, Any], scores: dict[str, Any]) -> float:
    clip = scores.get("clip")
    if clip is not None and clip.value is not None:
        return float(clip.value)
    value = candidate.get("scores", {}).get("similarity")
    return float(value) if isinstance(value, int | float) else 0.0


def _version(scorer: Any) -> str:
    try:
        return str(scorer.version)
    except Exception:  # a broken scorer still gets a row, with what we know
        return type(scorer).__name__


async def _score_with(name: str, scorer: Any, paths: list[Path], description: str) -> list:
    """One scorer over all paths; a scorer raising becomes ``not scored`` for each path."""
    texts = [description] * len(paths) if getattr(scorer, "needs_texts", False) else None
    try:
        scores = list(await scorer.score(paths, texts))
        if len(scores) != len(paths):
            raise ValueError(f"{len(scores)} scores for {len(paths)} images")
    except Exception as exc:
        why = scoring_failed(exc)
        log.warning("QA scorer %s failed: %s", name, why)
        return [not_scored(name, _version(scorer), why) for _ in paths]
    return scores


async def score_candidates(
    scorers: dict[str, Any], paths: list[Path], description: str
) -> list[dict[str, Any]]:
    """One ``{scorer name: Score}`` per candidate path (all scored in one batch per scorer)."""
    per_candidate: list[dict[str, Any]] = [{} for _ in paths]
    for name, scorer in scorers.items():
        scores = await _score_with(name, scorer, paths, description)
        for slot, score in zip(per_candidate, scores, strict=True):
            slot[name] = score
    return per_candidate


def discard(paths: list[Path], run_dir: Path) -> list[str]:
    """Delete candidate files that are not kept; only files inside ``run_dir`` (never a
    database's own images). Returns the names deleted."""
    root = Path(run_dir).resolve()
    gone = []
    for path in paths:
        resolved = Path(path).resolve()
        if root in resolved.parents and resolved.is_file():
            resolved.unlink()
            gone.append(resolved.name)
    return gone


def _record(candidate: dict[str, Any], scores: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    chosen = Candidate(
        path=Path(candidate["path"]),
        module=candidate["module"],
        source_url=candidate.get("source_url"),
        db_id=candidate.get("db_id"),
        seed=candidate.get("seed"),
        scores=scores,
    )
    return image_record(chosen, relative_to=run_dir)


async def judge(
    toolbox: Any, candidates: list[dict[str, Any]], description: str, run_dir: Path
) -> Verdict:
    """Score, rank and keep; the returned ``Verdict.record`` is this try's QA record.

    ``toolbox`` is the :class:`~mcu_sim.tools.toolbox.ImageToolbox` calling (its
    ``settings`` and ``scorers()``); typed loosely so this module never imports it back."""
    settings: ImagesConfig = toolbox.settings
    scorers = toolbox.scorers()
    paths = [Path(c["path"]) for c in candidates]
    scores = await score_candidates(scorers, paths, description)
    limits = {name: value for name, value in thresholds(settings).items() if name in scorers}
    accept_unscored = settings.qa.accept_unscored
    passing: list[tuple[float, int, dict[str, Any]]] = []
    reasons, rows = [], []
    for position, (candidate, its_scores) in enumerate(zip(candidates, scores, strict=True)):
        failed = check_scores(its_scores, limits, accept_unscored)
        record = {**candidate.get("scores", {}), **scores_record(its_scores.values())}
        name = Path(candidate["path"]).name
        rows.append({"candidate": name, "scores": record, "passed": not failed, "reasons": failed})
        if failed:
            reasons.append(f"{name}: " + ", ".join(failed))
        else:
            passing.append((_rank(candidate, its_scores), position, record))
    ranked = sorted(passing, key=lambda item: (-item[0], item[1]))  # best first, stable
    ranked = ranked[: 1 + settings.qa.max_alternatives]
    kept = [_record(candidates[pos], record, run_dir) for _, pos, record in ranked]
    keep = {pos for _, pos, _ in ranked}
    deleted = discard([p for i, p in enumerate(paths) if i not in keep], run_dir)
    qa_record = {
        "event": "qa",
        "scorers": sorted(scorers),
        "thresholds": limits,
        "accept_unscored": accept_unscored,
        "candidates": rows,
        "passed": bool(kept),
        "chosen": Path(kept[0]["path"]).name if kept else None,
        "deleted": deleted,
    }
    return Verdict(
        best=kept[0] if kept else None, alternatives=kept[1:], reasons=reasons, record=qa_record
    )
