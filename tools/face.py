"""The virtual face (STARK §3.3): an SDXL-Lightning portrait from the episode's attribute prompt.

SDXL-Lightning is SDXL distilled for a few sampling steps. It ships either as full UNet weights
(``sdxl_lightning_{N}step_unet.safetensors``) or as a LoRA on the SDXL base; either is applied on
top of a local SDXL base model. Sampling follows its recipe: Euler with ``"trailing"`` timestep
spacing, guidance scale 0, and the number of steps the weights were distilled for.

    face = FaceGenerator(
        base_model="/models/sdxl-base",
        lightning_unet="/models/sdxl_lightning_4step_unet.safetensors",
    )
    ok, why = face.available()
    candidate = await face.generate("a portrait of ...", seed=7, out_path=run_dir / "face.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate
from mcu_sim.tools.sdxl import (
    GenerationRequest,
    SDXLTool,
    check_weights_file,
    cpu_generator,
    dtype_kwargs,
    fuse_unet_lora,
    load_sdxl_pipeline,
    load_state_dict_file,
    missing_packages,
    save_png,
)


class FaceGenerator(SDXLTool):
    """SDXL-Lightning text-to-image for the person's face.

    With neither ``lightning_unet`` nor ``lightning_lora``, ``base_model`` itself must already be
    a Lightning (few-step) model.
    """

    name = "face"

    def __init__(
        self,
        *,
        base_model: str | None,
        lightning_unet: str | None = None,
        lightning_lora: str | None = None,
        steps: int = 4,
        device: str = "cpu",
        dtype: str = "float32",
        height: int = 1024,
        width: int = 1024,
    ) -> None:
        super().__init__(
            base_model=base_model, device=device, dtype=dtype, height=height, width=width
        )
        if lightning_unet and lightning_lora:
            raise ValueError("set lightning_unet or lightning_lora, not both")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        self.lightning_unet = lightning_unet
        self.lightning_lora = lightning_lora
        self.steps = steps

    def _extra_checks(self) -> tuple[bool, str]:
        for path, what in (
            (self.lightning_unet, "Lightning UNet"),
            (self.lightning_lora, "Lightning LoRA"),
        ):
            ok, reason = check_weights_file(path, what)
            if not ok:
                return ok, reason
        if self.lightning_lora and missing_packages("peft"):
            return False, "loading a LoRA needs the peft package (install mcu-sim[images])"
        return True, ""

    def _build(self) -> Any:
        from diffusers import EulerDiscreteScheduler

        assert self.base_model is not None  # checked by available()
        pipe = load_sdxl_pipeline(self.base_model, dtype=self.dtype, tool=self.name)
        if self.lightning_unet:
            _load_full_unet(pipe, Path(self.lightning_unet))
        elif self.lightning_lora:
            state = load_state_dict_file(Path(self.lightning_lora))
            fuse_unet_lora(pipe, state, adapter_name="lightning")
        pipe.scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        return pipe

    def request(
        self,
        prompt: str,
        seed: int,
        out_path: Path,
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
    ) -> GenerationRequest:
        """A checked request for ``generate_batch`` (size and steps default to the tool's)."""
        if not prompt.strip():
            raise ValueError("the face prompt is empty")
        height, width, steps = self.sized(height, width, steps)
        return GenerationRequest(prompt, int(seed), Path(out_path), height, width, steps)

    def _generate_batch_sync(self, requests: Sequence[GenerationRequest]) -> list[Candidate]:
        first = requests[0]
        result = self.pipe(
            prompt=[r.prompt for r in requests],
            num_inference_steps=first.steps,
            guidance_scale=0.0,
            height=first.height,
            width=first.width,
            generator=[cpu_generator(r.seed) for r in requests],
        )
        return [
            Candidate(
                path=save_png(image, r.out_path), module="face", seed=r.seed, caption=r.prompt
            )
            for image, r in zip(result.images, requests, strict=True)
        ]

    async def generate(self, prompt: str, seed: int, out_path: Path) -> Candidate:
        """Render the face for ``prompt`` with ``seed`` and write it as a PNG at ``out_path``."""
        return (await self.generate_batch([self.request(prompt, seed, out_path)]))[0]


def _load_full_unet(pipe: Any, path: Path) -> None:
    """Replace the UNet weights with a full UNet file (or a diffusers ``unet`` folder)."""
    if path.is_dir():
        from diffusers import UNet2DConditionModel

        dtype = str(pipe.unet.dtype).removeprefix("torch.")
        pipe.unet = UNet2DConditionModel.from_pretrained(
            path, local_files_only=True, **dtype_kwargs(dtype)
        )
        return
    state = load_state_dict_file(path)
    missing, unexpected = pipe.unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the base model's UNet: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "expected SDXL UNet weights in diffusers naming"
        )
