"""QA of candidate images (``tools/qa.py``) with the real scorers on tiny random models:
every candidate scored the same way, the best passing one chosen and the other passing ones
kept as alternatives, thresholds and scorers from the config, unscored images accepted or
not, a scorer failing at run time recorded as not scored, unkept files deleted."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.testing import tiny_clip as tc
from mcu_sim.tools.settings import ImagesConfig
from mcu_sim.tools.toolbox import ImageToolbox

pytestmark = pytest.mark.images
TEXT = "green hills under a blue sky"


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("qa-assets")
    photos = [tc.write_landscape(root / f"land{i}.jpg", seed=i) for i in range(3)]
    photos.append(tc.write_flesh_tone(root / "flesh.jpg"))
    return {"clip": tc.save_tiny_clip(root / "clip"), "photos": photos}


def _candidates(run_dir: Path, photos: list[Path]) -> list[dict[str, Any]]:
    """The photos copied into an episode folder, as the toolbox's candidate dicts."""
    folder = run_dir / "images" / "ep-1"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, photo in enumerate(photos):
        path = folder / f"s1-t1-r0-t0-{i}.jpg"
        shutil.copyfile(photo, path)
        out.append({"path": str(path), "module": "retrieval", "db_id": f"db{i}", "scores": {}})
    return out


def _toolbox(clip: str, **qa: Any) -> ImageToolbox:
    settings = ImagesConfig.model_validate(
        {"scorers": {"clip": {"model": clip}}, "qa": {"scorers": ["clip"], **qa}}
    )
    return ImageToolbox(settings)  # the real scorers, built from the config


def _judge(toolbox: ImageToolbox, candidates: list[dict], run_dir: Path) -> Any:
    return asyncio.run(toolbox.judge_candidates(candidates, TEXT, run_dir))


def test_every_candidate_is_scored_and_the_best_passing_one_is_chosen(
    clip_model: dict[str, Any], tmp_path: Path
) -> None:
    from mcu_sim.tools.clip_score import ClipScorer

    photos = clip_model["photos"]
    values = [s.value for s in ClipScorer(clip_model["clip"]).score_sync(photos, [TEXT] * 4)]
    assert len(set(values)) == 4  # distinct scores, so the ranking is meaningful
    ordered = sorted(range(4), key=lambda i: -values[i])
    worst = ordered[-1]
    threshold = (values[ordered[-1]] + values[ordered[-2]]) / 2  # only the worst fails
    candidates = _candidates(tmp_path, photos)
    verdict = _judge(_toolbox(clip_model["clip"], clip_threshold=threshold), candidates, tmp_path)

    assert verdict.best["db_id"] == f"db{ordered[0]}"  # the best that passes, wherever it sat
    assert [a["db_id"] for a in verdict.alternatives] == [f"db{i}" for i in ordered[1:-1]]
    record = verdict.record
    assert record["thresholds"] == {"clip": threshold}  # taken from images.qa
    assert [row["passed"] for row in record["candidates"]] == [i != worst for i in range(4)]
    for row, value in zip(record["candidates"], values, strict=True):
        assert row["scores"]["clip"] == pytest.approx(value, abs=1e-5)
        assert str(row["scores"]["clip.version"]).startswith("clip-score/")
    assert record["candidates"][worst]["reasons"][0].startswith("clip ")
    assert record["chosen"] == Path(verdict.best["path"]).name
    # kept files stay (paths relative to the run dir), the failed one is deleted
    for kept in [verdict.best, *verdict.alternatives]:
        assert (tmp_path / kept["path"]).is_file()
    assert not Path(candidates[worst]["path"]).exists()
    assert record["deleted"] == [Path(candidates[worst]["path"]).name]
    assert all(Path(p).is_file() for p in photos)  # files outside the run dir are never touched


def test_only_the_configured_scorers_run_and_unscored_images_follow_the_config(
    clip_model: dict[str, Any], tmp_path: Path
) -> None:
    # aesthetic has no weights configured here: "not scored", accepted or not by config
    for accept in (True, False):
        toolbox = _toolbox(
            clip_model["clip"], scorers=["clip", "aesthetic"], accept_unscored=accept
        )
        candidates = _candidates(tmp_path / str(accept), clip_model["photos"][:2])
        verdict = _judge(toolbox, candidates, tmp_path / str(accept))
        row = verdict.record["candidates"][0]
        assert set(verdict.record["scorers"]) == {"clip", "aesthetic"}
        assert "nsfw" not in row["scores"]
        assert str(row["scores"]["aesthetic"]).startswith("not scored: ")
        if accept:
            assert verdict.best is not None and row["passed"]
        else:
            assert verdict.best is None and not verdict.alternatives
            assert row["reasons"] == [f"aesthetic {row['scores']['aesthetic']}"]
            assert verdict.record["deleted"] and not any(
                Path(c["path"]).exists() for c in candidates
            )


def test_a_real_scorer_failing_at_run_time_records_not_scored(
    clip_model: dict[str, Any], tmp_path: Path
) -> None:
    from mcu_sim.tools.clip_score import ClipScorer

    class FlakyClip(ClipScorer):
        """The real CLIP scorer whose model fails on its first batch (an OOM, say)."""

        calls = 0

        def _score_batch(self, images: list, texts: list[str] | None) -> list:
            FlakyClip.calls += 1
            if FlakyClip.calls == 1:
                raise RuntimeError("CUDA out of memory")
            return super()._score_batch(images, texts)

    scorer = FlakyClip(clip_model["clip"], batch_size=2)
    scores = scorer.score_sync(clip_model["photos"], [TEXT] * 4)
    assert [s.value is None for s in scores] == [True, True, False, False]
    assert scores[0].note == "not scored: scoring failed: RuntimeError: CUDA out of memory"
    assert scores[0].version == scorer.version


def test_max_alternatives_bounds_the_passing_candidates_kept_on_disk(
    clip_model: dict[str, Any], tmp_path: Path
) -> None:
    candidates = _candidates(tmp_path, clip_model["photos"])
    toolbox = _toolbox(clip_model["clip"], clip_threshold=-1.0, max_alternatives=1)
    verdict = _judge(toolbox, candidates, tmp_path)

    assert all(row["passed"] for row in verdict.record["candidates"])  # all four pass
    assert len(verdict.alternatives) == 1  # but only the best and one more are kept
    kept = {Path(r["path"]).name for r in [verdict.best, *verdict.alternatives]}
    on_disk = {p.name for p in (tmp_path / "images" / "ep-1").iterdir()}
    assert on_disk == kept
    assert sorted(verdict.record["deleted"]) == sorted(
        Path(c["path"]).name for c in candidates if Path(c["path"]).name not in kept
    )


def test_a_score_without_a_qa_threshold_is_recorded_not_a_gate() -> None:
    """PickScore runs in QA by default but has no QA threshold: a low or missing PickScore
    never fails a candidate, while the scorers with thresholds still do."""
    from mcu_sim.tools.qa import check_scores
    from mcu_sim.tools.scoring import Score

    limits = {"clip": 0.21, "nsfw": 0.5}
    scores = {
        "clip": Score("clip", 0.30, "v1"),
        "nsfw": Score("nsfw", 0.10, "v1"),
        "pickscore": Score("pickscore", -3.0, "v1"),
    }
    assert check_scores(scores, limits, accept_unscored=False) == []
    scores["pickscore"] = Score("pickscore", None, "v1", note="not scored: no weights")
    assert check_scores(scores, limits, accept_unscored=False) == []
    scores["clip"] = Score("clip", 0.10, "v1")
    assert check_scores(scores, limits, accept_unscored=False) == ["clip 0.100 not >= 0.21"]
