"""The PickScore scorer through its production loading path (transformers' CLIPModel and
AutoProcessor from a local folder) on a tiny random CLIP; without weights: not scored."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from mcu_sim.testing.tiny_clip import save_tiny_pickscore, write_landscape
from mcu_sim.tools.scorers import PickScoreScorer, build_scorers, scores_record


def test_pickscore_scores_each_image_against_its_text(tmp_path: Path) -> None:
    folder = save_tiny_pickscore(tmp_path / "pickscore")
    photos = [write_landscape(tmp_path / f"p{i}.png", seed=i) for i in range(3)]
    scorer = build_scorers({"pickscore": {"model_path": str(folder)}})["pickscore"]
    assert isinstance(scorer, PickScoreScorer) and scorer.available() == (True, "ok")
    texts = ["green hills", "a red car", "green hills"]
    scores = asyncio.run(scorer.score(photos, texts))
    assert [s.name for s in scores] == ["pickscore"] * 3 and all(s.scored for s in scores)
    for score in scores:  # logit_scale.exp() (CLIP's init: 1 / 0.07) times a cosine
        assert score.raw is not None and -1.0 <= score.raw <= 1.0
        assert math.isclose(score.value, score.raw / 0.07, rel_tol=1e-4)  # type: ignore[arg-type]
    again = asyncio.run(scorer.score(photos[:1], texts[:1]))
    assert math.isclose(again[0].value, scores[0].value, rel_tol=1e-5)  # type: ignore[arg-type]
    assert len({round(s.value, 6) for s in scores}) > 1  # type: ignore[arg-type]
    record = scores_record(scores[:1])
    assert str(record["pickscore.version"]).startswith("pickscore/1 pickscore")


def test_without_weights_pickscore_records_not_scored(tmp_path: Path) -> None:
    scorer = build_scorers({})["pickscore"]
    ok, why = scorer.available()
    assert not ok and "images.scorers.pickscore.model_path" in why
    photo = write_landscape(tmp_path / "p.png")
    (score,) = asyncio.run(scorer.score([photo], ["hills"]))
    assert score.value is None and score.note.startswith("not scored: no PickScore weights")
