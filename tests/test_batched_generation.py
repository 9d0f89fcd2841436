"""Batched SDXL and PhotoMaker generation (issue 33 item 5) on tiny random models (CPU):
concurrent requests share one pipeline call, each gets its own image, the one it would get
alone, in its own order; different sizes never share a call; and the Ray image actor batches
concurrent callers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.tools.batching import BatchingGenerator
from mcu_sim.tools.face import FaceGenerator
from mcu_sim.tools.photomaker import PhotoMakerGenerator

SIZE = 32
PROMPTS = ("a woman smiling", "a man at the beach", "a photo of a park")
PM_PROMPTS = ("a photo of a woman img at the beach", "a portrait of a man img in the park")

pytestmark = pytest.mark.images


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    import numpy as np
    from PIL import Image

    from mcu_sim.testing.tiny_sdxl import save_tiny_photomaker, save_tiny_sdxl

    root = tmp_path_factory.mktemp("batched")
    base = save_tiny_sdxl(root / "base")
    rng = np.random.default_rng(0)
    out = {"base": base, "ckpt": save_tiny_photomaker(base, root / "photomaker-v1.bin")}
    for i in range(2):
        out[f"face{i}"] = root / f"face{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(out[f"face{i}"])
    return out


@pytest.fixture(scope="module")
def face(weights: dict[str, Path]) -> FaceGenerator:
    tool = FaceGenerator(base_model=str(weights["base"]), steps=2, height=SIZE, width=SIZE)
    tool.load()
    return tool


@pytest.fixture(scope="module")
def photomaker(weights: dict[str, Path]) -> PhotoMakerGenerator:
    tool = PhotoMakerGenerator(
        base_model=str(weights["base"]),
        photomaker_ckpt=str(weights["ckpt"]),
        steps=2,
        height=SIZE,
        width=SIZE,
        style_strength=0.5,  # the identity merge callback runs inside the batched call
    )
    tool.load()
    return tool


def _pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def _assert_same_image(batched: Path, alone: Path) -> None:
    diff = abs(_pixels(batched) - _pixels(alone))
    assert diff.max() <= 2, (batched, diff.max())  # batched matmuls may round differently


def _assert_all_differ(paths: list[Path]) -> None:
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            assert abs(_pixels(a) - _pixels(b)).mean() > 5, (a, b)


async def test_concurrent_sdxl_requests_share_one_call_and_keep_their_own_images(
    face: FaceGenerator, tmp_path: Path
) -> None:
    batched = BatchingGenerator(face, window_s=0.5, max_batch=8)
    seeds = (3, 1, 2)
    found = await asyncio.gather(
        *(
            batched.generate(p, s, tmp_path / f"b{i}.png")
            for i, (p, s) in enumerate(zip(PROMPTS, seeds, strict=True))
        )
    )
    assert batched.batches == [3]  # one pipeline call for the three callers
    assert [c.seed for c in found] == list(seeds)
    assert [c.path for c in found] == [tmp_path / f"b{i}.png" for i in range(3)]
    assert [c.caption for c in found] == list(PROMPTS)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds, strict=True)):
        alone = await face.generate(prompt, seed, tmp_path / f"a{i}.png")  # a batch of one
        _assert_same_image(found[i].path, alone.path)
    _assert_all_differ([c.path for c in found])

    # a full batch goes at once (no waiting for the window), the rest in the next call
    full = BatchingGenerator(face, window_s=1.0, max_batch=2)
    more = await asyncio.wait_for(
        asyncio.gather(*(full.generate("a woman", s, tmp_path / f"m{s}.png") for s in range(3))),
        timeout=60,
    )
    assert full.batches == [2, 1] and [c.seed for c in more] == [0, 1, 2]


async def test_requests_of_different_sizes_are_not_mixed_in_one_call(
    face: FaceGenerator, tmp_path: Path
) -> None:
    from PIL import Image

    batched = BatchingGenerator(face, window_s=0.5, max_batch=8)
    sizes = [(SIZE, SIZE), (48, SIZE), (SIZE, SIZE), (48, SIZE)]
    requests = [
        face.request("a woman smiling", 7 + i, tmp_path / f"s{i}.png", height=h, width=w)
        for i, (h, w) in enumerate(sizes)
    ]
    found = await asyncio.gather(*(batched.submit(r) for r in requests))
    assert sorted(batched.batches) == [2, 2]  # one call per size, never one for all four
    for candidate, (height, width) in zip(found, sizes, strict=True):
        with Image.open(candidate.path) as img:
            assert img.size == (width, height)
    with pytest.raises(ValueError, match="one size and step count"):
        await face.generate_batch(requests)
    steps = face.request("a woman", 1, tmp_path / "x.png", steps=3)
    with pytest.raises(ValueError, match="one size and step count"):
        await face.generate_batch([requests[0], steps])


async def test_photomaker_batch_keeps_each_persons_identity_and_seed(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path], tmp_path: Path
) -> None:
    batched = BatchingGenerator(photomaker, window_s=0.5, max_batch=8)
    asks = [
        (PM_PROMPTS[0], weights["face0"], 5),
        (PM_PROMPTS[1], weights["face1"], 6),
        (PM_PROMPTS[0], weights["face1"], 7),
    ]  # (the tiny model's identity barely moves pixels: the seeds tell the images apart)
    found = await asyncio.gather(
        *(batched.generate(p, [f], s, tmp_path / f"b{i}.png") for i, (p, f, s) in enumerate(asks))
    )
    assert batched.batches == [3]
    assert [c.path.name for c in found] == ["b0.png", "b1.png", "b2.png"]
    for i, (prompt, person, seed) in enumerate(asks):
        alone = await photomaker.generate(prompt, [person], seed, tmp_path / f"a{i}.png")
        _assert_same_image(found[i].path, alone.path)
    _assert_all_differ([c.path for c in found])


async def test_a_request_that_fails_does_not_fail_the_rest_of_its_batch(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path], tmp_path: Path
) -> None:
    # the trigger word past the text encoder's 77 tokens fails inside the pipeline call
    late = " ".join(["the"] * 90) + " woman img"
    batched = BatchingGenerator(photomaker, window_s=0.5, max_batch=8)
    good, bad = await asyncio.gather(
        batched.generate(PM_PROMPTS[0], [weights["face0"]], 5, tmp_path / "good.png"),
        batched.generate(late, [weights["face0"]], 5, tmp_path / "bad.png"),
        return_exceptions=True,
    )
    assert isinstance(bad, ValueError) and "first" in str(bad)
    assert good.path.is_file() and not (tmp_path / "bad.png").exists()
    assert batched.batches == [2, 1, 1]  # the batch, then each request alone
    alone = await photomaker.generate(PM_PROMPTS[0], [weights["face0"]], 5, tmp_path / "a.png")
    _assert_same_image(good.path, alone.path)


def test_batching_bounds_are_checked(face: FaceGenerator) -> None:
    from pydantic import ValidationError

    from mcu_sim.tools.settings import ImagesConfig

    with pytest.raises(ValueError, match="max_batch"):
        BatchingGenerator(face, max_batch=0)
    with pytest.raises(ValueError, match="window_s"):
        BatchingGenerator(face, window_s=5.0)
    for bad in ({"max_batch": 65}, {"window_s": -0.1}):
        with pytest.raises(ValidationError):
            ImagesConfig.model_validate({"batching": bad})


# ---------------------------------------------------------------- through the Ray image actor


def test_the_ray_image_actor_batches_concurrent_callers(
    local_ray: Any, weights: dict[str, Path], tmp_path: Path
) -> None:
    from mcu_sim.runner.ray_tools import ImageToolService
    from mcu_sim.tools.toolbox import ImageToolbox

    ray = local_ray
    tiny = {"base_model": str(weights["base"]), "steps": 2, "height": SIZE, "width": SIZE}
    images = {
        "face": tiny,
        "photomaker": {**tiny, "checkpoint": str(weights["ckpt"])},
        "retrieval": {"enabled": False},
        "qa": {"enabled": False},
        "batching": {"window_s": 0.5, "max_batch": 8},
    }
    actor = ray.remote(ImageToolService).options(num_cpus=0, max_concurrency=16).remote(images)
    faces = [{"prompt": p, "seed": 20 + i} for i, p in enumerate(PROMPTS)]
    served = ray.get(
        [actor.generate_face.remote(f, f"ep{i}", tmp_path / "ray") for i, f in enumerate(faces)]
        + [
            actor.execute.remote(
                "personalized_t2i",
                PM_PROMPTS[i],
                keywords=[],
                seed=30 + i,
                out_dir=tmp_path / "ray" / f"ep{i}",
                stem="pm",
                face_image=str(weights[f"face{i}"]),
            )
            for i in range(2)
        ],
        timeout=300,
    )
    batches = ray.get(actor.generation_batches.remote())
    assert batches == {"face": [3], "personalized_t2i": [2]}, batches
    ray.kill(actor)

    local = ImageToolbox(ImageToolService(images).settings)  # in-process, unbatched
    assert local.batch_generation is False
    for i, f in enumerate(faces):
        assert served[i]["status"] == "generated" and served[i]["image"]["seed"] == f["seed"]
        alone = asyncio.run(local.generate_face(f, f"ep{i}", tmp_path / "local"))
        _assert_same_image(
            tmp_path / "ray" / served[i]["image"]["path"],
            tmp_path / "local" / alone["image"]["path"],
        )
    for i in range(2):
        (candidate,) = served[3 + i]
        assert candidate["seed"] == 30 + i and Path(candidate["path"]).name == "pm.png"
        alone = asyncio.run(
            local.execute(
                "personalized_t2i",
                PM_PROMPTS[i],
                keywords=[],
                seed=30 + i,
                out_dir=tmp_path / "local" / f"ep{i}",
                stem="pm",
                face_image=str(weights[f"face{i}"]),
            )
        )
        _assert_same_image(Path(candidate["path"]), Path(alone[0]["path"]))
    _assert_all_differ([tmp_path / "ray" / s["image"]["path"] for s in served[:3]])
