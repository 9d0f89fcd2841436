"""``mcu filter``: recompute the filter marks of a finished run, without any LLM call; and
the run-level rule that ``mcu run`` applies when it ends."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mcu_sim.graphs.filters import (
    EPISODE,
    FilterSettings,
    ImageSimilarity,
    OverMatchedCounter,
    iter_filter_run,
)
from mcu_sim.graphs.quality import filter_settings
from mcu_sim.personas.schema import Episode, Removal
from mcu_sim.runner.manifest import run_lock
from mcu_sim.runner.outputs import RunDir, atomic_write_json, index_line
from mcu_sim.runner.shards import rebuild_shards

OVER_MATCHED = "over_matched_image"  # the rule graphs.filters.OverMatchedCounter writes


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
        from mcu_sim.tools.base import open_image

        images = []
        for path in paths:
            with open_image(run_root / path) as img:
                images.append(img.convert("RGB"))
        vectors = backbone.embed_images(images)
        return vectors @ vectors.T

    return similarity


def refilter(run_dir: Path, config: Any, write: bool = True) -> dict[str, Any]:
    """Recompute every episode's marks (episode and run-level rules) from the raw data.

    With ``write`` the episode files, the index and the shards are rewritten (shards as a
    whole new set, swapped in atomically); the run lock keeps ``mcu run`` out meanwhile.
    """
    run = RunDir(run_dir)
    with run_lock(run):
        settings = filter_settings(config)
        counts: Counter[str] = Counter()
        episodes = (Episode.model_validate(run.read_episode(i)) for i in run.finished_ids())
        similarity = clip_similarity(config, run.root)
        seen = filtered = 0
        near = near_duplicate_marker(settings, run.root)
        # one episode in memory at a time: a run of 93K episodes does not fit as a list
        for episode in iter_filter_run(episodes, settings, similarity, counts):
            seen += 1
            data = episode.model_dump(mode="json")
            if near is not None:
                data = with_marks(data, near.marks(data), counts)
            filtered += data["status"] == "filtered"
            if write:
                atomic_write_json(run.episode_path(episode.episode_id), data)
        shards = 0
        if write:
            run.rebuild_index()
            shards = rebuild_shards(run, shard_size(run, config))
        report = {
            "episodes": seen,
            "episodes_filtered": filtered,
            "removals_by_rule": dict(counts),
            "settings": settings.model_dump(mode="json"),
            "written": write,
            "shards": shards,
        }
        atomic_write_json(run.root / "filter_report.json", report)
    return report


def near_duplicate_marker(settings: FilterSettings, root: Path) -> Any:
    """The run-level ``near_duplicate`` rule (None when ``filters.near_duplicate`` is off)."""
    if not settings.near_duplicate:
        return None
    from mcu_sim.dataset.near_dups import NearDuplicateMarker

    return NearDuplicateMarker(settings, root)


def with_marks(data: dict[str, Any], marks: list[Removal], counts: Counter[str]) -> dict[str, Any]:
    """``data`` with ``marks`` added (an episode-level mark filters it); counts updated."""
    if not marks:
        return data
    counts.update(m.rule for m in marks)
    removals = data["removals"] + [m.model_dump(mode="json") for m in marks]
    status = "filtered" if any(m.target == EPISODE for m in marks) else data["status"]
    return {**data, "removals": removals, "status": status}


def shard_size(run: RunDir, config: Any) -> int:
    """The run's own shard size (from its shard state), else the config's."""
    return int(run.shard_state().get("shard_size") or config.run.shard_size)


# ---------------------------------------------------------------- at the end of mcu run


def _db_images(run: RunDir) -> list[tuple[str, list[str], bool]]:
    """``(episode id, database image ids it uses, has over-matched marks)`` per finished
    episode, from the index (an older index line without them: from the episode file)."""
    lines: dict[str, dict[str, Any]] = {}
    if run.index.is_file():
        for raw in run.index.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                continue
            lines.setdefault(record.get("episode_id", ""), record)
    out = []
    for episode_id in run.finished_ids():
        record = lines.get(episode_id)
        if record is None or "db_images" not in record:
            record = index_line(run.read_episode(episode_id))
        marked = bool((record.get("removals") or {}).get(OVER_MATCHED))
        out.append((episode_id, list(record["db_images"]), marked))
    return out


def apply_run_rules(run: RunDir, settings: FilterSettings, size: int) -> dict[str, int]:
    """DialogCC's run-level rule (a database image matched more than K times keeps its first
    K uses) over every finished episode, as ``mcu filter`` applies it.

    Only episodes that use an over-matched image (or carried such marks) are read; those
    whose marks changed are rewritten, with their index lines, and the shards are rebuilt
    atomically. Returns the number of over-matched marks in the run now (``{}`` for none).
    """
    uses = _db_images(run)
    counts = Counter(db_id for _, ids, _ in uses for db_id in ids)
    over = {db_id for db_id, n in counts.items() if n > settings.max_matches_per_db_image}
    affected = [i for i, ids, marked in uses if marked or over.intersection(ids)]
    if not affected:
        return {}
    counter = OverMatchedCounter(settings)
    changed: list[dict[str, Any]] = []  # index lines, not episodes: bounded per episode
    total = 0
    for episode_id in affected:  # one episode in memory at a time, in run order
        episode = Episode.model_validate(run.read_episode(episode_id))
        marks = counter.marks(episode)
        total += len(marks)
        kept = [r for r in episode.removals if r.rule != OVER_MATCHED]
        if kept + marks != episode.removals:
            data = episode.model_copy(update={"removals": kept + marks}).model_dump(mode="json")
            atomic_write_json(run.episode_path(episode_id), data)
            changed.append(index_line(data))
    if changed:
        run.replace_index_lines(changed)
        rebuild_shards(run, size)
    return {OVER_MATCHED: total} if total else {}
