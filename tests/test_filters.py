"""STARK §3.9 / DialogCC §3.3 filters on a run with known violations of every rule, and
``mcu filter`` re-run with looser thresholds (no LLM involved)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.graphs.filters import FilterSettings, filter_run
from mcu_sim.graphs.runner import EpisodeRunner, plan_jobs
from mcu_sim.personas.schema import Episode
from mcu_sim.testing.fake_openai import client_for
from mcu_sim.testing.scripted import scripted_answer


def _image(name: str, **scores: Any) -> dict[str, Any]:
    return {
        "path": f"images/{name}.jpg",
        "sha256": hashlib.sha256(name.encode()).hexdigest(),
        "width": 8,
        "height": 8,
        "module": "retrieval",
        "db_id": name,
        "scores": scores,
    }


@pytest.fixture
def violating_run(fake_openai, tmp_path: Path) -> Path:
    """Three real episodes (graph + fake endpoint), then violations planted in their data."""
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    config = load_config(
        None, ["images.enabled=false", "episode.sessions_min=2", "episode.sessions_max=2"]
    )
    runner = EpisodeRunner(config, out, llm=client_for(fake_openai, tmp_path / "c.sqlite"))
    report = asyncio.run(runner.run_jobs(plan_jobs(3, 100)))
    assert len(report.finished) == 3
    files = sorted((out / "episodes").glob("*.json"))
    first, second, third = (json.loads(f.read_text()) for f in files)
    # duplicate persona attribute
    first["persona"].append(dict(first["persona"][0]))
    # an unsafe session
    first["sessions"][1]["safety"] = {"label": "unsafe", "reason": "planted", "checker": "t"}
    sharing = [r for r in first["image_requests"] if r["origin"] == "sharing"]
    # NSFW and misaligned images
    sharing[0].update(status="aligned", image=_image("nsfw", clip=0.5, nsfw=0.9))
    sharing[1].update(status="aligned", image=_image("weak", clip=0.12, nsfw=0.01))
    # several images for one turn, one of them unlike the others
    sharing[2].update(
        status="aligned",
        image=_image("a1", clip=0.5),
        alternatives=[_image("a2", clip=0.4), _image("odd", clip=0.3)],
    )
    # the same database image matched in every episode (over-matching)
    for episode in (second, third):
        request = next(r for r in episode["image_requests"] if r["origin"] == "sharing")
        request.update(status="aligned", image=_image("popular", clip=0.6))
    first_popular = next(r for r in first["image_requests"] if r["origin"] == "album")
    first_popular.update(status="aligned", image=_image("popular", clip=0.6))
    third["sessions"] = third["sessions"][:1]  # too few sessions
    third["image_requests"] = [r for r in third["image_requests"] if r.get("session") in (None, 1)]
    third["device_images"] = [d for d in third["device_images"] if d["added_in_session"] < 2]
    for path, data in zip(files, (first, second, third), strict=True):
        Episode.model_validate(data)
        path.write_text(json.dumps(data))
    return out


def _similarity(paths: list[str]) -> np.ndarray:
    """The 'odd' image is unlike the others; the rest are alike."""
    vectors = np.array([[0.0, 1.0] if "odd" in p else [1.0, 0.0] for p in paths])
    return vectors @ vectors.T


def _load(run: Path) -> list[Episode]:
    return [
        Episode.model_validate(json.loads(p.read_text()))
        for p in sorted((run / "episodes").glob("*.json"))
    ]


def test_every_rule_marks_what_it_should(violating_run: Path) -> None:
    settings = FilterSettings(
        min_sessions=2, max_sessions=2, max_matches_per_db_image=1, inconsistent_drop_fraction=0.34
    )
    episodes, counts = filter_run(_load(violating_run), settings, _similarity)
    first, second, third = episodes
    rules = {r.rule: r for r in first.removals}
    assert rules["duplicate_persona"].target == f"persona[{len(first.persona) - 1}]"
    assert rules["unsafe_dialogue"].target == "session[2]" and rules["unsafe_dialogue"].reason
    assert rules["nsfw_image"].scores == {"nsfw": 0.9} and rules["nsfw_image"].threshold == 0.5
    assert rules["misaligned_image"].scores == {"clip": 0.12}
    assert rules["inconsistent_image"].target.endswith("#2")  # the odd one out
    assert first.status == "complete"
    assert [r.rule for r in second.removals] == ["over_matched_image"]
    assert "popular" in second.removals[0].reason
    assert third.status == "filtered"
    assert {r.rule for r in third.removals} == {"session_count", "over_matched_image"}
    assert counts["over_matched_image"] == 2
    # nothing was deleted: the raw data is all still there
    assert len(first.persona) == len(_load(violating_run)[0].persona)


def test_mcu_filter_with_looser_thresholds_removes_less(violating_run: Path) -> None:
    runner = CliRunner()
    strict = runner.invoke(
        app,
        [
            "filter",
            str(violating_run),
            "--set",
            "images.enabled=false",
            "--set",
            "filters.max_matches_per_db_image=1",
            "--set",
            "filters.min_sessions=2",
        ],
    )
    assert strict.exit_code == 0, strict.output
    strict_report = json.loads(strict.output)
    loose = runner.invoke(
        app,
        [
            "filter",
            str(violating_run),
            "--set",
            "images.enabled=false",
            "--set",
            "filters.max_matches_per_db_image=10",
            "--set",
            "filters.clip_threshold=0.1",
            "--set",
            "filters.nsfw_threshold=0.95",
            "--set",
            "filters.min_sessions=1",
        ],
    )
    assert loose.exit_code == 0, loose.output
    loose_report = json.loads(loose.output)
    strict_total = sum(strict_report["removals_by_rule"].values())
    loose_total = sum(loose_report["removals_by_rule"].values())
    assert loose_total < strict_total
    assert "misaligned_image" not in loose_report["removals_by_rule"]
    assert strict_report["episodes_filtered"] == 1 and loose_report["episodes_filtered"] == 0
    # the episode files carry the latest marks, and are still valid episodes
    marks = {r.rule for e in _load(violating_run) for r in e.removals}
    assert "over_matched_image" not in marks and "duplicate_persona" in marks
