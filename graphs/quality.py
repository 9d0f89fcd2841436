"""Episode-level quality nodes: text safety of each session, then the filter marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcu_sim.graphs.context import IMAGES_DISABLED
from mcu_sim.graphs.filters import FilterSettings, ImageSimilarity
from mcu_sim.graphs.state import EpisodeState, merge_usage, node_reads


def filter_settings(config: Any) -> FilterSettings:
    """``config.filters`` with session bounds defaulting to the episode's own bounds."""
    settings = FilterSettings.model_validate(getattr(config, "filters", None) or {})
    return settings.model_copy(
        update={
            "min_sessions": settings.min_sessions or config.episode.sessions_min,
            "max_sessions": settings.max_sessions or config.episode.sessions_max,
        }
    )


def image_similarity(ctx: Any) -> tuple[ImageSimilarity | None, str]:
    """CLIP image-image similarity for DialogCC's inconsistent-images rule, from the
    toolbox's QA CLIP scorer (episode image paths are relative to the run directory), or
    ``(None, why)``."""
    tools = ctx.tools
    if tools is None:
        return None, IMAGES_DISABLED
    offered = getattr(tools, "image_similarity", None)
    if offered is None:
        return None, f"{type(tools).__name__} offers no image similarity"
    pairwise, why = offered()
    if pairwise is None:
        return None, why
    run_dir = Path(ctx.run_dir)

    def similarity(paths: list[str]) -> Any:
        return pairwise([run_dir / p for p in paths])

    return similarity, ""


def make_checker(ctx: Any, settings: FilterSettings) -> Any:
    if settings.text_safety == "off":
        return None
    if settings.text_safety == "classifier":
        from mcu_sim.tools.text_safety import ClassifierSafety

        return ClassifierSafety(settings.safety_classifier)
    from mcu_sim.tools.text_safety import LLMJudgeSafety

    return LLMJudgeSafety(ctx.llm, ctx.role("judge", 0).settings)


@node_reads("sessions")
async def safety_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """The second step of the ``filter`` node. reads: sessions / writes:
    sessions[*].safety (label, reason, checker version)."""
    from mcu_sim.tools.text_safety import dialogue_lines

    ctx = runtime.context
    checker = make_checker(ctx, filter_settings(ctx.config))
    if checker is None:
        return {"notes": ["text safety check off (filters.text_safety)"]}
    ok, why = checker.available()
    updates = []
    spent: dict[str, dict[str, float]] = {}
    for session in state.get("sessions", []):
        if session.get("safety"):
            continue
        if ok:
            verdict = await checker.check(dialogue_lines(session["turns"]))
            label = verdict.label or "not_judged"
            reason, version = verdict.reason, verdict.version
            if verdict.usage:
                spent = merge_usage(spent, {"judge": verdict.usage})
        else:
            label, reason, version = "not_judged", f"not judged: {why}", checker.name
        updates.append(
            {**session, "safety": {"label": label, "reason": reason[:300], "checker": version}}
        )
    versions = {"judge": checker.prompt_version} if hasattr(checker, "prompt_version") else {}
    return {"sessions": updates, "usage": spent, "prompt_versions": versions}
