"""``mcu filter``: recompute the filter marks of a finished run, without any LLM call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcu_sim.graphs.filters import ImageSimilarity, filter_run
from mcu_sim.graphs.outputs import RunDir, atomic_write_json
from mcu_sim.graphs.quality import filter_settings
from mcu_sim.personas.schema import Episode


def clip_similarity(config: Any, run_root: Path) -> ImageSimilarity | None:
    """Pairwise image cosine with the configured CLIP scorer, or None when unavailable."""
    from mcu_sim.tools.settings import ImagesConfig

    images = ImagesConfig.model_validate(config.images)
    clip = images.scorers.clip
    if not clip.enabled or not (clip.pretrained or clip.random_weights):
        return None
    from mcu_sim.tools.clip_score import ClipBackbone

    backbone = ClipBackbone(
        clip.model, clip.pretrained, images.scorers.device, random_weights=clip.random_weights
    )

    def similarity(paths: list[str]) -> Any:
        from PIL import Image

        images = []
        for path in paths:
            with Image.open(run_root / path) as img:
                images.append(img.convert("RGB"))
        vectors = backbone.embed_images(images)
        return vectors @ vectors.T

    return similarity


def refilter(run_dir: Path, config: Any, write: bool = True) -> dict[str, Any]:
    run = RunDir(run_dir)
    episodes = [
        Episode.model_validate(json.loads(run.episode_path(i).read_text()))
        for i in run.finished_ids()
    ]
    settings = filter_settings(config)
    filtered, counts = filter_run(episodes, settings, clip_similarity(config, run.root))
    if write:
        for episode in filtered:
            atomic_write_json(run.episode_path(episode.episode_id), episode.model_dump(mode="json"))
        run.rebuild_index()
    report = {
        "episodes": len(filtered),
        "episodes_filtered": sum(e.status == "filtered" for e in filtered),
        "removals_by_rule": counts,
        "settings": settings.model_dump(mode="json"),
    }
    atomic_write_json(run.root / "filter_report.json", report)
    return report
