"""A whole episode with every image path live: the SDXL-Lightning face (tiny random SDXL),
PhotoMaker conditioned on that face, the shipped image database, and QA with the bundled
open_nsfw model (CLIP/aesthetic unconfigured, so recorded as not scored)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import load_config
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer, scripted_object

pytestmark = pytest.mark.images


def _selfie_dialogue(body: dict) -> Any:
    """Scripted answers, with the first sharing moment of each session a selfie."""
    if schema_name(body) == "DialogueOutput":
        answer = scripted_object(body)
        answer["sharing_moments"][0].update(
            image_description="a selfie of me smiling at the night market",
            image_source="mobile",
            image_id_from_mobile="new",
            shared_by="user",
        )
        return json.dumps(answer)
    return scripted_answer(body)


def test_episode_with_face_photomaker_retrieval_and_qa(fake_openai, tmp_path: Path) -> None:
    from mcu_sim.testing.tiny_sdxl import save_tiny_photomaker, save_tiny_sdxl

    base = save_tiny_sdxl(tmp_path / "sdxl")
    ckpt = save_tiny_photomaker(base, tmp_path / "photomaker-v1.bin")
    fake_openai.handler = _selfie_dialogue
    config = load_config(
        None,
        [
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            f"images.face.base_model={base}",
            "images.face.steps=2",
            "images.face.height=32",
            "images.face.width=32",
            f"images.photomaker.base_model={base}",
            f"images.photomaker.checkpoint={ckpt}",
            "images.photomaker.steps=2",
            "images.photomaker.height=32",
            "images.photomaker.width=32",
        ],
    )
    runner = EpisodeRunner(config, tmp_path / "run", llm=client_for(fake_openai, None))
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 8)))
    assert report.failed == {}
    (path,) = (tmp_path / "run" / "episodes").glob("*.json")
    episode = Episode.model_validate(json.loads(path.read_text()))

    assert episode.face.status == "generated" and episode.face.image is not None
    assert (tmp_path / "run" / episode.face.image.path).is_file()
    by_module: dict[str, list] = {}
    for request in episode.image_requests:
        assert request.status in ("aligned", "unaligned")
        if request.status == "aligned":
            by_module.setdefault(request.module, []).append(request)
            assert (tmp_path / "run" / request.image.path).is_file()
    selfies = by_module["personalized_t2i"]
    assert len(selfies) == 2  # one per session
    assert all(
        "woman img" in r.planned_description
        or "man img" in r.planned_description
        or "girl img" in r.planned_description
        or "boy img" in r.planned_description
        for r in selfies
    )
    assert by_module["retrieval"]
    scores = selfies[0].image.scores
    assert 0.0 <= float(scores["nsfw"]) <= 1.0  # open_nsfw ran for real
    assert str(scores["clip"]).startswith("not scored")
    assert "planner" in episode.usage and "judge" in episode.usage


def _retrieval_episode(fake_openai, run: Path, *extra: str) -> Episode:
    """One episode whose images all come from the shipped database (top-3, all passing)."""
    fake_openai.handler = scripted_answer
    config = load_config(
        None,
        [
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            "images.face.enabled=false",
            "images.photomaker.enabled=false",
            "images.retrieval.top_k=3",
            "images.qa.clip_threshold=-1",
            *extra,
        ],
    )
    runner = EpisodeRunner(config, run, llm=client_for(fake_openai, None))
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 9)))
    assert report.failed == {}
    (path,) = (run / "episodes").glob("*.json")
    return Episode.model_validate(json.loads(path.read_text()))


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in (run / "images").rglob("*") if p.is_file()}


def test_dialogcc_inconsistent_images_rule_runs_in_the_graph(fake_openai, tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    from mcu_sim.testing.tiny_clip import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    run = tmp_path / "run"
    episode = _retrieval_episode(
        fake_openai,
        run,
        f"images.scorers.clip.model={clip}",
        "images.qa.scorers=[clip]",
        # every pair of distinct photos is "inconsistent" at tau 1 (cosine < 1); drop half
        "filters.inconsistent_similarity=1.0",
        "filters.inconsistent_drop_fraction=0.5",
    )
    own = [r for r in episode.image_requests if r.status == "aligned" and r.alternatives]
    assert own and all(len(r.alternatives) == 2 for r in own)  # the other passing top-3
    marks = [m for m in episode.removals if m.rule == "inconsistent_image"]
    assert {m.target.split("#")[0] for m in marks} == {f"image:{r.id}" for r in own}
    assert all(m.threshold == 1.0 and m.scores["offences"] == 2 for m in marks)
    assert all(a.get("event") != "filter_not_applied" for r in own for a in r.attempts)
    # on disk: exactly the chosen images and their alternatives, nothing unreferenced
    kept = {img.path for r in episode.image_requests for img in [r.image, *r.alternatives] if img}
    assert _files(run) == kept
    assert all(r.status != "pending" for r in episode.image_requests)


def test_inconsistent_images_rule_without_clip_says_it_was_not_applied(
    fake_openai, tmp_path: Path
) -> None:
    episode = _retrieval_episode(fake_openai, tmp_path / "run", "images.qa.scorers=[nsfw]")
    several = [r for r in episode.image_requests if r.alternatives]
    assert several and not [m for m in episode.removals if m.rule == "inconsistent_image"]
    for request in several:
        (note,) = [a for a in request.attempts if a.get("event") == "filter_not_applied"]
        assert note["rule"] == "inconsistent_image"
        assert note["reason"] == "no CLIP scorer among images.qa.scorers"
