"""QA of candidate images (MAGID §3, App. I): score every candidate the same way, keep the
best one that passes, and say why the others failed.

Thresholds and which scorers run come from ``images.qa``; a scorer that cannot score
records ``not scored: <why>`` and ``images.qa.accept_unscored`` decides what that means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate, image_record
from mcu_sim.tools.settings import ImagesConfig

HIGHER_IS_BETTER = {"clip": True, "aesthetic": True, "nsfw": False}


def build_qa_scorers(settings: ImagesConfig) -> dict[str, Any]:
    from mcu_sim.tools.scorers import build_scorers

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
    """Reasons a candidate fails (empty when it passes)."""
    reasons = []
    for name, score in scores.items():
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


async def score_candidates(
    scorers: dict[str, Any], paths: list[Path], description: str
) -> list[dict[str, Any]]:
    """One ``{scorer name: Score}`` per candidate path (all scored in one batch per scorer)."""
    per_candidate: list[dict[str, Any]] = [{} for _ in paths]
    for name, scorer in scorers.items():
        texts = [description] * len(paths) if getattr(scorer, "needs_texts", False) else None
        for slot, score in zip(per_candidate, await scorer.score(paths, texts), strict=True):
            slot[name] = score
    return per_candidate


async def judge(
    toolbox: Any, candidates: list[dict[str, Any]], description: str, run_dir: Path
) -> Any:
    from mcu_sim.tools.scorers import scores_record
    from mcu_sim.tools.toolbox import Verdict

    settings: ImagesConfig = toolbox.settings
    paths = [Path(c["path"]) for c in candidates]
    scores = await score_candidates(toolbox.scorers(), paths, description)
    limits = thresholds(settings)
    passing: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
    reasons, log = [], []
    for candidate, its_scores in zip(candidates, scores, strict=True):
        failed = check_scores(its_scores, limits, settings.qa.accept_unscored)
        record = {**candidate.get("scores", {}), **scores_record(its_scores.values())}
        log.append(
            {
                "event": "qa",
                "candidate": Path(candidate["path"]).name,
                "scores": record,
                "passed": not failed,
                "reasons": failed,
            }
        )
        if failed:
            reasons.append(f"{Path(candidate['path']).name}: " + ", ".join(failed))
        else:
            passing.append((_rank(candidate, its_scores), candidate, record))
    if not passing:
        return Verdict(best=None, reasons=reasons, log=log)
    _, best, record = max(passing, key=lambda item: item[0])
    chosen = Candidate(
        path=Path(best["path"]),
        module=best["module"],
        source_url=best.get("source_url"),
        db_id=best.get("db_id"),
        seed=best.get("seed"),
        scores=record,
    )
    return Verdict(best=image_record(chosen, relative_to=run_dir), reasons=reasons, log=log)
