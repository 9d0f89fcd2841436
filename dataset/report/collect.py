"""Read a run directory once and compute every statistic of the report.

A run directory is read from ``episodes/*.json``; a directory without one is read from its
shards (``shards/*.jsonl``) or, failing that, from the ``*.json`` / ``*.jsonl`` files in
it, so exported or imported runs work too. Thresholds come from the run's ``config.yaml``
when it has one, else from the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mcu_sim.dataset.near_dups import NearDuplicateIndex, clusters
from mcu_sim.dataset.report.judge_section import judge_results
from mcu_sim.dataset.report.stats import DatasetStats, ImageStats
from mcu_sim.dataset.report.text_stats import TextStats
from mcu_sim.graphs.filters import FilterSettings
from mcu_sim.runner.outputs import RunDir

REFERENCE = Path(__file__).with_name("stark_reference.json")


@cache
def stark_reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def iter_episodes(root: Path) -> Iterator[dict[str, Any]]:
    """Each episode of the run as a dict, in run order (episode id order)."""
    run = RunDir(root)
    ids = run.finished_ids()
    if ids:
        for episode_id in ids:
            yield run.read_episode(episode_id)
        return
    shards = run.shard_paths() if run.shards.is_dir() else []
    files = shards or sorted(root.glob("*.jsonl"))
    if files:
        for path in files:
            yield from _jsonl(path)
        return
    for path in sorted(root.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "sessions" in data:
            yield data


def run_config(root: Path) -> dict[str, Any]:
    path = RunDir(root).config_file
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def filter_settings_of(config: dict[str, Any]) -> FilterSettings:
    """The run's filter settings (its near-duplicate thresholds); defaults when unreadable."""
    try:
        return FilterSettings.model_validate(config.get("filters") or {})
    except ValueError:
        return FilterSettings()


def thresholds_of(config: dict[str, Any]) -> dict[str, float]:
    """QA thresholds (images.qa) with the filters' CLIP/NSFW ones as a fallback."""
    from mcu_sim.tools.settings import QASettings

    qa_data = ((config.get("images") or {}).get("qa")) or {}
    try:
        qa = QASettings.model_validate(qa_data)
    except ValueError:
        qa = QASettings()
    return {
        "clip": qa.clip_threshold,
        "aesthetic": qa.aesthetic_threshold,
        "nsfw": qa.nsfw_threshold,
    }


def persona_rows() -> list[tuple[str, str]]:
    from mcu_sim.personas.lexicons import persona_categories

    return [(c.category, c.entity_key) for c in persona_categories()]


def country_names() -> list[str]:
    from mcu_sim.personas.lexicons import countries

    return [c.name for c in countries()]


def analyse_run(root: Path, near_duplicates: bool = True) -> dict[str, Any]:
    """Every statistic of one run, with the raw values the figures need (``values``)."""
    config = run_config(root)
    settings = filter_settings_of(config)
    dataset, images, text = DatasetStats(), ImageStats(), TextStats()
    index = NearDuplicateIndex(settings, root) if near_duplicates else None
    matches = []
    order: list[str] = []
    for episode in iter_episodes(root):
        order.append(str(episode.get("episode_id")))
        dataset.add(episode)
        images.add(episode)
        text.add(episode)
        if index is not None:
            matches += index.add(episode)
    manifest = RunDir(root).read_manifest() or {}
    found = clusters(matches)
    return {
        "run": {
            "path": str(root),
            "name": root.name,
            "run_id": manifest.get("run_id"),
            "provider": manifest.get("provider"),
            "usage_total": manifest.get("usage_total"),
            "episodes_failed": len(RunDir(root).failed_ids())
            if RunDir(root).failures.is_dir()
            else 0,
        },
        "dataset": dataset.result(persona_rows(), country_names()),
        "images": images.result(thresholds_of(config)),
        "text": text.result(),
        "near_duplicates": {
            "computed": index is not None,
            "settings": {
                "dialogue_jaccard": settings.near_duplicate_text,
                "persona_jaccard": settings.near_duplicate_persona,
                "image_hamming": settings.near_duplicate_image_distance,
                "num_perm": settings.near_duplicate_num_perm,
            },
            "clusters": found,
            "marked": {
                kind: sum(len(c["members"]) - 1 for c in found if c["kind"] == kind)
                for kind in ("dialogue", "persona", "image")
            },
            "unreadable_images": index.unreadable_images if index else 0,
        },
        "judge": judge_results(root),
        "episode_ids": order,
    }
