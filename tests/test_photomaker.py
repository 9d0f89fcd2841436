"""The PhotoMaker v1 adapter: prompt handling, and real generation on a tiny random SDXL plus a
tiny checkpoint in the published ``photomaker-v1.bin`` layout (CPU, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcu_sim.tools.base import ToolUnavailable, image_record
from mcu_sim.tools.photomaker import PhotoMakerGenerator, check_trigger_prompt, split_trigger

SIZE = 32
PROMPT = "a photo of a woman img at the beach"


# --- prompt handling (no torch) ----------------------------------------------------------------


@pytest.mark.parametrize("prompt", [PROMPT, "Woman IMG smiling", "portrait of a boy img."])
def test_prompts_with_class_word_and_trigger_pass(prompt: str) -> None:
    check_trigger_prompt(prompt)


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("a photo of a woman at the beach", "found the trigger word 0 times"),
        ("img at the beach", "no class word"),
        ("a man img and a woman img", "found the trigger word 2 times"),
        ("a photo of images", "found the trigger word 0 times"),
    ],
)
def test_prompts_without_the_format_are_refused(prompt: str, why: str) -> None:
    with pytest.raises(ValueError, match="'<class word> img'") as info:
        check_trigger_prompt(prompt)
    assert why in str(info.value)


def test_split_trigger_repeats_the_class_token_per_id_image() -> None:
    tokens = split_trigger([5, 6, 7, 99, 8], trigger_ids=[99], num_images=3)
    assert tokens.with_identity == [5, 6, 7, 7, 7, 8]
    assert tokens.class_positions == [2, 3, 4]
    assert tokens.text_only == [5, 6, 7, 8]

    multi = split_trigger([1, 2, 40, 41, 3], trigger_ids=[40, 41], num_images=1)
    assert multi.with_identity == [1, 2, 3] and multi.class_positions == [1]

    with pytest.raises(ValueError, match="no class word"):
        split_trigger([99, 1], trigger_ids=[99], num_images=1)
    with pytest.raises(ValueError, match="found 0"):
        split_trigger([1, 2], trigger_ids=[99], num_images=1)


def test_unavailable_without_weights(tmp_path: Path) -> None:
    ok, reason = PhotoMakerGenerator(base_model=None, photomaker_ckpt=None).available()
    assert not ok and "no SDXL base model configured" in reason

    (tmp_path / "base").mkdir()
    (tmp_path / "base/model_index.json").write_text("{}")
    ok, reason = PhotoMakerGenerator(
        base_model=str(tmp_path / "base"), photomaker_ckpt=None
    ).available()
    assert not ok and "no PhotoMaker checkpoint configured" in reason

    missing = PhotoMakerGenerator(
        base_model=str(tmp_path / "base"), photomaker_ckpt=str(tmp_path / "pm.bin")
    )
    assert missing.available() == (
        False,
        f"PhotoMaker checkpoint {tmp_path / 'pm.bin'} does not exist",
    )
    with pytest.raises(ToolUnavailable, match="does not exist"):
        missing.load()


# --- real diffusers code paths on tiny random weights -----------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    import numpy as np
    from PIL import Image

    from mcu_sim.testing.tiny_sdxl import save_tiny_photomaker, save_tiny_sdxl

    root = tmp_path_factory.mktemp("photomaker")
    base = save_tiny_sdxl(root / "base")
    rng = np.random.default_rng(0)
    faces = []
    for i in range(2):  # two different "faces", not square, so the centre crop is exercised
        path = root / f"face{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
        faces.append(path)
    return {
        "base": base,
        "ckpt": save_tiny_photomaker(base, root / "photomaker-v1.bin"),
        "face0": faces[0],
        "face1": faces[1],
    }


@pytest.fixture(scope="module")
def photomaker(weights: dict[str, Path]) -> PhotoMakerGenerator:
    tool = PhotoMakerGenerator(
        base_model=str(weights["base"]),
        photomaker_ckpt=str(weights["ckpt"]),
        steps=2,
        height=SIZE,
        width=SIZE,
        style_strength=0.5,  # plain prompt for step 0, identity from step 1
    )
    tool.load()
    return tool


@pytest.mark.images
async def test_generation_with_trigger_word(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    out = tmp_path / "img/pm.png"
    candidate = await photomaker.generate(PROMPT, [weights["face0"]], seed=5, out_path=out)
    assert candidate.module == "photomaker" and candidate.seed == 5 and candidate.path == out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (SIZE, SIZE)
    record = image_record(candidate, relative_to=tmp_path)
    assert record["path"] == "img/pm.png" and record["module"] == "photomaker"

    # the identity reaches the image: same seed and face -> same pixels; another face -> other
    same = await photomaker.generate(
        PROMPT, [weights["face0"]], seed=5, out_path=tmp_path / "s.png"
    )
    other = await photomaker.generate(
        PROMPT, [weights["face1"]], seed=5, out_path=tmp_path / "o.png"
    )
    assert image_record(same)["sha256"] == record["sha256"]
    assert image_record(other)["sha256"] != record["sha256"]


@pytest.mark.images
async def test_prompt_without_trigger_word_is_a_clear_error(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'<class word> img'.*a photo of a woman img"):
        await photomaker.generate(
            "a photo of a woman at the beach", [weights["face0"]], seed=1, out_path=tmp_path / "x"
        )
    with pytest.raises(ValueError, match="at least one ID image"):
        await photomaker.generate(PROMPT, [], seed=1, out_path=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.images
def test_fused_identity_replaces_only_the_class_word_slots(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path]
) -> None:
    import torch

    with torch.no_grad():
        embeds, plain, pooled = photomaker._conditioning(PROMPT, [weights["face0"]])
        two, _, _ = photomaker._conditioning(PROMPT, [weights["face0"], weights["face1"]])
    pipe = photomaker.pipe
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert embeds.shape == plain.shape == (1, pipe.tokenizer.model_max_length, width)
    assert pooled.shape == (1, pipe.text_encoder_2.config.projection_dim)

    # one ID image: same tokens as the plain prompt, so only the class word's row changes
    class_row = 1 + pipe.tokenizer.tokenize(PROMPT).index("woman</w>")  # +1 for BOS
    changed = (embeds != plain).any(dim=-1)[0].nonzero().flatten().tolist()
    assert changed == [class_row]
    # two ID images: two fused rows in a row, both differing from the class word's embedding
    assert not torch.allclose(two[0, class_row], two[0, class_row + 1])
    # the text encoders are causal: rows before the class word do not see the extra slot
    assert torch.allclose(two[0, :class_row], embeds[0, :class_row])


@pytest.mark.images
def test_lora_is_fused_and_id_encoder_matches_the_checkpoint(
    photomaker: PhotoMakerGenerator, weights: dict[str, Path]
) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(weights["base"] / "unet").state_dict()
    fused = photomaker.pipe.unet.state_dict()
    assert not any("lora" in k for k in fused)
    for suffix in ("attn2.to_k.weight", "attn1.to_out.0.weight"):
        key = next(k for k in base if k.endswith(suffix))
        assert not torch.equal(base[key], fused[key]), key

    saved = torch.load(weights["ckpt"], weights_only=True)["id_encoder"]
    loaded = photomaker.id_encoder.state_dict()
    assert set(saved) <= set(loaded)
    for key in ("fuse_module.mlp1.fc1.weight", "visual_projection_2.weight"):
        assert torch.equal(saved[key], loaded[key])


@pytest.mark.images
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ck: {"state_dict": ck["id_encoder"]}, "expected top-level keys 'id_encoder'"),
        (
            lambda ck: {
                **ck,
                "id_encoder": _without(ck["id_encoder"], "fuse_module.mlp2.fc1.bias"),
            },
            "missing",
        ),
        (
            lambda ck: {
                **ck,
                "id_encoder": _without(ck["id_encoder"], "visual_projection_2.weight"),
            },
            "not a PhotoMaker v1 checkpoint",
        ),
    ],
)
def test_malformed_checkpoints_are_refused(
    weights: dict[str, Path], tmp_path: Path, mutate, message: str
) -> None:
    import torch

    checkpoint = torch.load(weights["ckpt"], weights_only=True)
    bad = tmp_path / "bad.bin"
    torch.save(mutate(checkpoint), bad)
    tool = PhotoMakerGenerator(base_model=str(weights["base"]), photomaker_ckpt=str(bad))
    with pytest.raises(ValueError, match=message):
        tool.load()
    assert tool.pipe is None


@pytest.mark.images
def test_checkpoint_for_another_text_width_is_refused(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    from mcu_sim.testing.tiny_sdxl import tiny_id_encoder_state

    checkpoint = torch.load(weights["ckpt"], weights_only=True)
    checkpoint["id_encoder"] = tiny_id_encoder_state(48)
    bad = tmp_path / "wide.bin"
    torch.save(checkpoint, bad)
    tool = PhotoMakerGenerator(base_model=str(weights["base"]), photomaker_ckpt=str(bad))
    with pytest.raises(ValueError, match="text embedding width 64"):
        tool.load()


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.images
def test_published_sizes_are_inferred_from_the_checkpoint_shapes() -> None:
    """The real layout (CLIP ViT-L/14, SDXL text width 2048), as shapes only (meta tensors)."""
    import torch

    from mcu_sim.testing.tiny_sdxl import tiny_id_encoder_state
    from mcu_sim.tools.photomaker import build_id_encoder

    with torch.device("meta"):
        state = tiny_id_encoder_state(
            2048,
            vision_hidden=1024,
            vision_layers=24,
            image_size=224,
            patch_size=14,
            projection_dim=768,
        )
        encoder = build_id_encoder(state, text_width=2048)
    config = encoder.config
    assert (config.num_attention_heads, config.image_size, config.patch_size) == (16, 224, 14)
    assert (config.num_hidden_layers, config.intermediate_size) == (24, 4096)
    assert encoder.visual_projection.out_features == 768
    assert encoder.visual_projection_2.out_features == 1280
    assert encoder.fuse_module["mlp1"]["fc1"].in_features == 4096
