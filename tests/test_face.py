"""The SDXL-Lightning face tool on tiny random SDXL weights saved to disk (CPU, offline)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from mcu_sim.tools.base import ToolUnavailable, image_record
from mcu_sim.tools.face import FaceGenerator

SIZE = 32


def test_importing_the_tools_does_not_import_torch() -> None:
    code = (
        "import sys, mcu_sim.tools.face, mcu_sim.tools.photomaker, mcu_sim.tools.sdxl, "
        "mcu_sim.testing.tiny_sdxl; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unavailable_without_weights(tmp_path: Path) -> None:
    ok, reason = FaceGenerator(base_model=None).available()
    assert not ok and "no SDXL base model configured" in reason

    ok, reason = FaceGenerator(base_model=str(tmp_path / "nope")).available()
    assert not ok and "does not exist" in reason

    (tmp_path / "empty").mkdir()
    ok, reason = FaceGenerator(base_model=str(tmp_path / "empty")).available()
    assert not ok and "model_index.json" in reason

    # a repo id that is not in the local cache: reported, never downloaded
    ok, reason = FaceGenerator(base_model="nobody-here/not-cached-sdxl").available()
    assert not ok and "not in the local Hugging Face cache" in reason


async def test_generate_without_weights_raises_tool_unavailable(tmp_path: Path) -> None:
    face = FaceGenerator(base_model=None)
    with pytest.raises(ToolUnavailable) as info:
        await face.generate("a man", seed=1, out_path=tmp_path / "f.png")
    assert info.value.tool == "face" and "no SDXL base" in info.value.reason
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"device": "tpu"}, "device must be"),
        ({"device": "cpu", "dtype": "float16"}, "float16 is not supported on cpu"),
        ({"height": 30}, "multiple of 8"),
        ({"steps": 0}, "steps must be"),
        ({"lightning_unet": "u.safetensors", "lightning_lora": "l.safetensors"}, "not both"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceGenerator(base_model="x", **kwargs)


# --- real diffusers code paths on tiny random weights -----------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    from mcu_sim.testing.tiny_sdxl import (
        save_tiny_lightning_lora,
        save_tiny_lightning_unet,
        save_tiny_sdxl,
    )

    root = tmp_path_factory.mktemp("sdxl")
    base = save_tiny_sdxl(root / "base")
    return {
        "base": base,
        "unet": save_tiny_lightning_unet(base, root / "lightning_unet.safetensors"),
        "lora": save_tiny_lightning_lora(base, root / "lightning_lora.safetensors"),
    }


def _face(weights: dict[str, Path], **kwargs: str) -> FaceGenerator:
    return FaceGenerator(
        base_model=str(weights["base"]), steps=2, height=SIZE, width=SIZE, **kwargs
    )


@pytest.mark.images
async def test_lightning_unet_face_is_written_with_its_seed(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    face = _face(weights, lightning_unet=str(weights["unet"]))
    assert face.available() == (True, "")
    candidate = await face.generate("a woman smiling", seed=11, out_path=tmp_path / "a/face.png")

    assert candidate.module == "face" and candidate.seed == 11
    assert candidate.path == tmp_path / "a/face.png"
    with Image.open(candidate.path) as img:
        assert img.format == "PNG" and img.size == (SIZE, SIZE)
    record = image_record(candidate, relative_to=tmp_path)
    assert record["path"] == "a/face.png" and record["seed"] == 11 and record["module"] == "face"
    assert len(record["sha256"]) == 64 and (record["width"], record["height"]) == (SIZE, SIZE)

    # the Lightning recipe: its UNet weights, trailing timesteps
    lightning = load_file(str(weights["unet"]))
    key = next(k for k in lightning if k.endswith("attn2.to_q.weight"))
    assert torch.equal(face.pipe.unet.state_dict()[key], lightning[key])
    assert face.pipe.scheduler.config.timestep_spacing == "trailing"

    # same seed, same pixels; another seed, other pixels
    again = await face.generate("a woman smiling", seed=11, out_path=tmp_path / "b.png")
    other = await face.generate("a woman smiling", seed=12, out_path=tmp_path / "c.png")
    assert record["sha256"] == image_record(again)["sha256"]
    assert record["sha256"] != image_record(other)["sha256"]


@pytest.mark.images
async def test_lightning_lora_is_fused_into_the_unet(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    face = _face(weights, lightning_lora=str(weights["lora"]))
    face.load()
    base = UNet2DConditionModel.from_pretrained(weights["base"] / "unet").state_dict()
    fused = face.pipe.unet.state_dict()
    assert not any("lora" in k for k in fused), "LoRA layers should be merged and removed"
    key = next(k for k in base if k.endswith("attn1.to_out.0.weight"))
    assert not torch.equal(base[key], fused[key])

    # concurrent calls are serialised, not interleaved inside the pipeline
    outs = [tmp_path / f"{i}.png" for i in range(2)]
    results = await asyncio.gather(
        *(face.generate("a man", seed=i, out_path=p) for i, p in enumerate(outs))
    )
    assert [c.path for c in results] == outs and all(p.stat().st_size > 0 for p in outs)


@pytest.mark.images
def test_mismatched_unet_file_gives_a_clear_error(weights: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "not_a_unet.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(bad))
    face = _face(weights, lightning_unet=str(bad))
    with pytest.raises(ValueError, match="does not match the base model's UNet"):
        face.load()
    assert face.pipe is None
