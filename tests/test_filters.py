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
from mcu_sim.config import ConfigError, load_config
from mcu_sim.graphs.filters import FilterSettings, filter_episode, filter_run
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
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


# ----------------------------------------------------------------- in-graph safety node


def _one_episode(fake_openai, tmp_path: Path, handler: Any, seed: int = 40) -> Episode:
    fake_openai.handler = handler
    config = load_config(
        None, ["images.enabled=false", "episode.sessions_min=2", "episode.sessions_max=2"]
    )
    out = tmp_path / f"run-{seed}"
    runner = EpisodeRunner(config, out, llm=client_for(fake_openai, None))
    report = asyncio.run(runner.run_jobs(plan_jobs(1, seed)))
    assert report.failed == {}
    (path,) = (out / "episodes").glob("*.json")
    return Episode.model_validate(json.loads(path.read_text()))


def _judge_unsafe(sessions: set[int]) -> Any:
    """The LLM judge (over HTTP) calls the n-th judged session unsafe when n is listed."""
    judged: list[int] = []

    def handler(body: dict) -> Any:
        if schema_name(body) == "JudgeVerdict":
            judged.append(len(judged) + 1)
            if judged[-1] in sessions:
                return json.dumps({"label": "unsafe", "reason": "the assistant encourages harm"})
        return scripted_answer(body)

    return handler


def test_safety_node_with_the_llm_judge_marks_unsafe_dialogue(fake_openai, tmp_path) -> None:
    episode = _one_episode(fake_openai, tmp_path, _judge_unsafe({1}))
    first, second = episode.sessions
    assert first.safety["label"] == "unsafe" and second.safety["label"] == "safe"
    assert first.safety["checker"].startswith("text-safety/")
    (mark,) = [r for r in episode.removals if r.rule == "unsafe_dialogue"]
    assert mark.target == "session[1]" and mark.reason == "the assistant encourages harm"
    assert mark.scores == {"label": "unsafe"} and episode.status == "complete"
    assert "judge" in episode.usage
    every = _one_episode(fake_openai, tmp_path, _judge_unsafe({1, 2}), seed=41)
    assert every.status == "filtered"
    assert {r.target for r in every.removals if r.rule == "unsafe_dialogue"} == {
        "session[1]",
        "session[2]",
        "episode",
    }


def test_classifier_text_safety_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"filters.safety_classifier' is not set"):
        load_config(None, ["filters.text_safety=classifier"])
    config = load_config(
        None, ["filters.text_safety=classifier", "filters.safety_classifier=/models/x"]
    )
    assert config.filters.safety_classifier == "/models/x"


# ----------------------------------------------------------------- album photos shown again


def test_an_album_photo_shown_in_a_turn_is_judged_and_counted_once(
    fake_openai, tmp_path: Path
) -> None:
    episodes = []
    for seed in (50, 51):
        data = _one_episode(fake_openai, tmp_path, scripted_answer, seed).model_dump(mode="json")
        album = next(r for r in data["image_requests"] if r["origin"] == "album")
        album.update(status="aligned", image=_image("popular", clip=0.1, nsfw=0.9))
        sharing = next(r for r in data["image_requests"] if r["origin"] == "sharing")
        turn = next(
            t for s in data["sessions"] for t in s["turns"] if t["request_id"] == sharing["id"]
        )
        turn["sharing"].update(image_source="mobile", image_id_from_mobile=album["device_image_id"])
        # as link_album does: the turn shows the album request's very image record
        sharing.update(
            status="aligned", device_image_id=album["device_image_id"], image=album["image"]
        )
        episodes.append(Episode.model_validate(data))
    settings = FilterSettings(min_sessions=2, max_sessions=2, max_matches_per_db_image=1)
    (first, second), counts = filter_run(episodes, settings)
    for episode in (first, second):
        album_id = next(r.id for r in episode.image_requests if r.origin == "album")
        sharing_id = next(r.id for r in episode.image_requests if r.origin == "sharing" and r.image)
        for rule in ("nsfw_image", "misaligned_image"):
            (mark,) = [r for r in episode.removals if r.rule == rule]
            assert mark.target == f"image:{album_id}"  # once, under the album request
            assert f"also shown in {sharing_id}" in mark.reason
    assert not [r for r in first.removals if r.rule == "over_matched_image"]  # one use, not two
    (over,) = [r for r in second.removals if r.rule == "over_matched_image"]
    assert over.scores == {"matches": 2}
    assert counts["nsfw_image"] == 2 and counts["over_matched_image"] == 1


# ----------------------------------------------------------------- PickScore threshold


def _scored_episode(*scores: dict[str, Any]) -> Episode:
    """The schema tests' small episode, its sharing requests aligned with these scores."""
    from tests.test_schema import valid_episode

    data = valid_episode()
    for n, (request, values) in enumerate(zip(data["image_requests"], scores, strict=True)):
        request.update(status="aligned", reason=None, image=_image(f"p{n}", **values))
    return Episode.model_validate(data)


def test_pickscore_threshold_marks_images_scored_below_it() -> None:
    not_scored = "not scored: no PickScore weights"
    episode = _scored_episode(
        {"clip": 0.30, "pickscore": 17.5},  # aligned for CLIP, not for PickScore
        {"clip": 0.10, "pickscore": 12.0},  # below both
        {"clip": 0.30, "pickscore": not_scored},  # no weights: never marked for PickScore
    )
    off = filter_episode(episode, FilterSettings(min_sessions=1, max_sessions=9))
    (clip_only,) = [r for r in off.removals if r.rule == "misaligned_image"]  # default: off
    assert clip_only.target == "image:s1-3" and clip_only.scores == {"clip": 0.10}
    assert clip_only.threshold == FilterSettings().clip_threshold
    settings = FilterSettings(min_sessions=1, max_sessions=9, pickscore_threshold=18.0)
    marks = {
        r.target: r
        for r in filter_episode(episode, settings).removals
        if r.rule == "misaligned_image"
    }
    assert sorted(marks) == ["image:s1-2", "image:s1-3"]
    first, both = marks["image:s1-2"], marks["image:s1-3"]
    assert first.scores == {"pickscore": 17.5} and first.threshold == 18.0
    assert first.reason.startswith("PickScore below")
    assert both.scores == {"clip": 0.10, "pickscore": 12.0}
    assert both.threshold == f"clip {settings.clip_threshold:g}, pickscore 18"
    assert both.reason.startswith("CLIP score and PickScore below")


@pytest.mark.parametrize("value", ["nan", "101", "-101"])
def test_pickscore_threshold_is_bounded(value: str) -> None:
    assert load_config(None, []).filters.pickscore_threshold is None  # the paper gives none
    assert (
        load_config(None, ["filters.pickscore_threshold=19.5"]).filters.pickscore_threshold == 19.5
    )
    with pytest.raises(ConfigError, match=r"filters\.pickscore_threshold"):
        load_config(None, [f"filters.pickscore_threshold={value}"])
