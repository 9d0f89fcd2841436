"""Personalised text-to-image (STARK §3.8): a PhotoMaker v1 adapter on diffusers' SDXL pipeline.

diffusers has no PhotoMaker pipeline; this module is a small adapter of our own around the
published checkpoint (``photomaker-v1.bin``, a torch state dict with two top-level keys):

- ``id_encoder``: a CLIP vision tower (``vision_model.*``, ``visual_projection``) plus
  ``visual_projection_2`` and ``fuse_module`` (MLPs ``mlp1``/``mlp2`` and ``layer_norm``).
- ``lora_weights``: UNet LoRA weights that diffusers' ``load_lora_weights`` understands; they are
  fused into the UNet at load time.

How a prompt is conditioned on the person: the prompt must name the subject as
``<class word> img`` ("a photo of a woman img at the beach"). The trigger token is removed and
the class word's position is repeated once per ID image. Both SDXL text encoders encode that
sequence; each ID image's CLIP features (projection 1 and 2 concatenated, as wide as the text
embedding) are fused with the class word's embedding, and the fused vectors take those
positions. The first ``style_strength`` fraction of the steps uses the plain prompt (class word
once, no identity) so the layout follows the text before the identity is injected.

All widths come from the loaded checkpoint and text encoders, so tiny test models work as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcu_sim.personas.trigger import TRIGGER_WORD, check_trigger_prompt
from mcu_sim.tools.base import Candidate
from mcu_sim.tools.sdxl import (
    GenerationRequest,
    SDXLTool,
    check_weights_file,
    cpu_generator,
    fuse_unet_lora,
    load_sdxl_pipeline,
    load_state_dict_file,
    save_png,
    torch_dtype,
)

__all__ = ["PhotoMakerGenerator", "check_trigger_prompt", "split_trigger"]

DEFAULT_NEGATIVE = (
    "blurry, low quality, lowres, deformed face, distorted features, bad anatomy, extra fingers, "
    "extra limbs, watermark, text, cartoon, painting"
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TriggerTokens:
    """Token ids (no special tokens) for one tokenizer, with and without the identity slots."""

    with_identity: list[int]  # class token repeated once per ID image, trigger removed
    class_positions: list[int]  # where the repeated class tokens sit in ``with_identity``
    text_only: list[int]  # trigger removed, class token once


def split_trigger(ids: list[int], trigger_ids: list[int], num_images: int) -> TriggerTokens:
    """Locate the trigger token(s) in ``ids`` and build the two token sequences."""
    if not trigger_ids:
        raise ValueError("the trigger word tokenizes to nothing")
    width = len(trigger_ids)
    starts = [i for i in range(len(ids) - width + 1) if ids[i : i + width] == trigger_ids]
    if len(starts) != 1:
        raise ValueError(f"expected the trigger word once in the prompt, found {len(starts)}")
    start = starts[0]
    if start == 0:
        raise ValueError("no class word before the trigger word (expected '<class word> img')")
    before, after = ids[: start - 1], ids[start + width :]
    class_id = ids[start - 1]
    return TriggerTokens(
        with_identity=[*before, *[class_id] * num_images, *after],
        class_positions=list(range(len(before), len(before) + num_images)),
        text_only=[*before, class_id, *after],
    )


def _pad(tokenizer: Any, ids: list[int]) -> list[int]:
    """BOS + ids + EOS, padded to the tokenizer's length (with room checked by the caller)."""
    length = tokenizer.model_max_length
    body = ids[: length - 2]
    seq = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    return seq + [tokenizer.pad_token_id] * (length - len(seq))


# ---------------------------------------------------------------------------------------------
# ID encoder (built inside functions: torch is imported lazily)


def _vision_config_from_state(state: dict[str, Any]) -> Any:
    """CLIP vision config inferred from the ``id_encoder`` tensor shapes.

    Shapes give every size but the head count, which follows CLIP's 64-wide heads
    (ViT-L/14: 1024 / 64 = 16).
    """
    from transformers import CLIPVisionConfig

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"id_encoder position embedding has {positions} rows; not a square grid")
    layers = {k.split(".")[3] for k in state if k.startswith("vision_model.encoder.layers.")}
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_attention_heads=max(1, hidden // 64),
        num_hidden_layers=len(layers),
        image_size=grid * patch_size,
        patch_size=patch_size,
        projection_dim=state["visual_projection.weight"].shape[0],
    )


def build_id_encoder(state: dict[str, Any], text_width: int) -> Any:
    """The ID encoder module with the checkpoint's weights (strict key match)."""
    import torch
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import CLIPVisionModelWithProjection

    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if any(k.startswith(("qformer_perceiver", "perceiver_resampler")) for k in state):
        raise ValueError("this looks like a PhotoMaker v2 checkpoint; only v1 is supported")
    try:
        config = _vision_config_from_state(state)
        fuse_width = state["fuse_module.layer_norm.weight"].shape[0]
        extra_width = state["visual_projection_2.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"id_encoder lacks {exc}; not a PhotoMaker v1 checkpoint") from exc
    if fuse_width != text_width or config.projection_dim + extra_width != text_width:
        raise ValueError(
            f"checkpoint widths (fuse {fuse_width}, projections {config.projection_dim}+"
            f"{extra_width}) do not match the base model's text embedding width {text_width}; "
            "PhotoMaker v1 needs an SDXL base"
        )

    def fuse_block(width_in: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "layernorm": nn.LayerNorm(width_in),
                "fc1": nn.Linear(width_in, text_width),
                "fc2": nn.Linear(text_width, text_width),
            }
        )

    with init_empty_weights():  # parameters come from the checkpoint; skip random init
        encoder = CLIPVisionModelWithProjection(config)
        encoder.visual_projection_2 = nn.Linear(config.hidden_size, extra_width, bias=False)
        encoder.fuse_module = nn.ModuleDict(
            {
                "mlp1": fuse_block(2 * text_width),
                "mlp2": fuse_block(text_width),
                "layer_norm": nn.LayerNorm(text_width),
            }
        )
    result = encoder.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"id_encoder keys do not match PhotoMaker v1: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    encoder.requires_grad_(False)
    return encoder.eval().to(torch.float32)


def _run_block(block: Any, x: Any, residual: bool) -> Any:
    import torch.nn.functional as F

    out = block["fc2"](F.gelu(block["fc1"](block["layernorm"](x))))
    return out + x if residual else out


def fuse_identity(encoder: Any, class_embeds: Any, id_embeds: Any) -> Any:
    """Fuse each class-word embedding (n, D) with its ID embedding (n, D) -> (n, D)."""
    import torch

    fuse = encoder.fuse_module
    mixed = _run_block(fuse["mlp1"], torch.cat([class_embeds, id_embeds], dim=-1), residual=False)
    mixed = _run_block(fuse["mlp2"], mixed + class_embeds, residual=True)
    return fuse["layer_norm"](mixed)


def id_embeddings(encoder: Any, pixel_values: Any) -> Any:
    """(n, 3, s, s) images -> (n, D): both projections of the pooled CLIP features."""
    import torch

    pooled = encoder.vision_model(pixel_values=pixel_values).pooler_output
    return torch.cat([encoder.visual_projection(pooled), encoder.visual_projection_2(pooled)], -1)


def preprocess_faces(paths: list[Path], size: int) -> Any:
    """CLIP preprocessing: shortest side to ``size`` (bicubic), centre crop, normalise."""
    import numpy as np
    import torch
    from PIL import Image

    from mcu_sim.tools.base import open_image

    batch = []
    for path in paths:
        with open_image(path) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            new = (max(size, round(img.width * scale)), max(size, round(img.height * scale)))
            img = img.resize(new, Image.Resampling.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((left, top, left + size, top + size))
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
        batch.append(torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)))
    return torch.stack(batch)


# ---------------------------------------------------------------------------------------------
# the tool


class PhotoMakerGenerator(SDXLTool):
    """PhotoMaker v1 on an SDXL base: the person's face image(s) + a ``<class word> img`` prompt.

    ``style_strength`` is the fraction of the steps run on the plain prompt before the identity
    is merged in (0 merges from the first step).
    """

    name = "photomaker"
    required_packages = ("torch", "diffusers", "transformers", "peft", "accelerate")

    def __init__(
        self,
        *,
        base_model: str | None,
        photomaker_ckpt: str | None,
        trigger_word: str = TRIGGER_WORD,
        steps: int = 30,
        device: str = "cpu",
        dtype: str = "float32",
        height: int = 1024,
        width: int = 1024,
        guidance_scale: float = 5.0,
        style_strength: float = 0.2,
    ) -> None:
        super().__init__(
            base_model=base_model, device=device, dtype=dtype, height=height, width=width
        )
        if not re.fullmatch(r"\w+", trigger_word):
            raise ValueError(f"trigger_word must be one word, not {trigger_word!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        if not 0.0 <= style_strength < 1.0:
            raise ValueError(f"style_strength must be in [0, 1), not {style_strength}")
        self.photomaker_ckpt = photomaker_ckpt
        self.trigger_word = trigger_word
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.style_strength = style_strength
        self.id_encoder: Any = None

    def _extra_checks(self) -> tuple[bool, str]:
        if not self.photomaker_ckpt:
            return False, "no PhotoMaker checkpoint configured (photomaker-v1.bin)"
        return check_weights_file(self.photomaker_ckpt, "PhotoMaker checkpoint")

    def _build(self) -> Any:
        assert self.base_model is not None and self.photomaker_ckpt is not None
        checkpoint = load_state_dict_file(Path(self.photomaker_ckpt))
        parts = {"id_encoder", "lora_weights"}
        if not isinstance(checkpoint, dict) or not parts <= set(checkpoint):
            found = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint)
            raise ValueError(
                f"{self.photomaker_ckpt} is not a PhotoMaker v1 checkpoint: expected top-level "
                f"keys 'id_encoder' and 'lora_weights', found {found}"
            )
        pipe = load_sdxl_pipeline(self.base_model, dtype=self.dtype, tool=self.name)
        text_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        encoder = build_id_encoder(checkpoint["id_encoder"], text_width)
        fuse_unet_lora(pipe, checkpoint["lora_weights"], adapter_name="photomaker")
        self.id_encoder = encoder.to(self.device, torch_dtype(self.dtype))
        return pipe

    def unload(self) -> None:
        super().unload()
        self.id_encoder = None

    # -- prompt encoding ----------------------------------------------------------------------
    def _encode(self, per_tokenizer: list[list[int]]) -> tuple[Any, Any]:
        """SDXL text conditioning for explicit token ids: (prompt_embeds, pooled_embeds)."""
        import torch

        pipe = self.pipe
        hidden, pooled = [], None
        pairs = zip(
            (pipe.tokenizer, pipe.tokenizer_2),
            (pipe.text_encoder, pipe.text_encoder_2),
            per_tokenizer,
            strict=True,
        )
        for tokenizer, encoder, ids in pairs:
            input_ids = torch.tensor([_pad(tokenizer, ids)], device=pipe.device)
            out = encoder(input_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            pooled = out[0]  # the projected text embedding of the second encoder
        return torch.cat(hidden, dim=-1), pooled

    def _conditioning(self, prompt: str, id_images: list[Path]) -> tuple[Any, Any, Any]:
        """(identity prompt embeds, plain prompt embeds, pooled embeds)."""
        pipe = self.pipe
        splits = []
        for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            trigger = tokenizer(self.trigger_word, add_special_tokens=False).input_ids
            splits.append(split_trigger(ids, trigger, len(id_images)))
        positions = splits[0].class_positions
        if any(s.class_positions != positions for s in splits):
            raise ValueError("the two SDXL tokenizers disagree on where the class word is")
        room = pipe.tokenizer.model_max_length - 2
        if positions[-1] >= room:
            raise ValueError(
                f"the '<class word> {self.trigger_word}' must fall within the first {room} tokens; "
                "put it earlier in the prompt or shorten the prompt"
            )
        embeds, pooled = self._encode([s.with_identity for s in splits])
        plain, _ = self._encode([s.text_only for s in splits])

        encoder = self.id_encoder
        size = encoder.config.image_size
        pixels = preprocess_faces(id_images, size).to(pipe.device, encoder.dtype)
        identity = id_embeddings(encoder, pixels)
        slots = [p + 1 for p in positions]  # +1 for the BOS token
        fused = fuse_identity(encoder, embeds[0, slots].to(encoder.dtype), identity)
        embeds = embeds.clone()
        embeds[0, slots] = fused.to(embeds.dtype)
        return embeds, plain, pooled

    def request(
        self,
        prompt: str,
        id_images: list[Path],
        seed: int,
        out_path: Path,
        negative_prompt: str | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
    ) -> GenerationRequest:
        """A checked request for ``generate_batch`` (size and steps default to the tool's)."""
        check_trigger_prompt(prompt, self.trigger_word)
        if not id_images:
            raise ValueError("PhotoMaker needs at least one ID image (the episode's face)")
        missing = [str(p) for p in id_images if not Path(p).is_file()]
        if missing:
            raise ValueError(f"ID image(s) not found: {', '.join(missing)}")
        negative = DEFAULT_NEGATIVE if negative_prompt is None else negative_prompt
        height, width, steps = self.sized(height, width, steps)
        return GenerationRequest(
            prompt,
            int(seed),
            Path(out_path),
            height,
            width,
            steps,
            id_images=tuple(Path(p) for p in id_images),
            negative_prompt=negative,
        )

    def _generate_batch_sync(self, requests: Sequence[GenerationRequest]) -> list[Candidate]:
        import torch

        with torch.no_grad():
            conditions = [self._conditioning(r.prompt, list(r.id_images)) for r in requests]
        embeds = torch.cat([c[0] for c in conditions])
        plain = torch.cat([c[1] for c in conditions])
        pooled = torch.cat([c[2] for c in conditions])
        first = requests[0]
        merge_step = int(self.style_strength * first.steps)
        count = len(requests)

        def merge_identity(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            # after step merge_step - 1, the remaining steps see the identity embeddings (the
            # last ``count`` rows are the prompts; the negative ones come first under CFG)
            if step != merge_step - 1:
                return {}
            current = tensors["prompt_embeds"].clone()
            current[-count:] = embeds.to(current.dtype)
            return {"prompt_embeds": current}

        result = self.pipe(
            prompt_embeds=plain if merge_step > 0 else embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt=[r.negative_prompt for r in requests],
            num_inference_steps=first.steps,
            guidance_scale=self.guidance_scale,
            height=first.height,
            width=first.width,
            generator=[cpu_generator(r.seed) for r in requests],
            callback_on_step_end=merge_identity,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )
        return [
            Candidate(
                path=save_png(image, r.out_path), module="photomaker", seed=r.seed, caption=r.prompt
            )
            for image, r in zip(result.images, requests, strict=True)
        ]

    async def generate(
        self,
        prompt: str,
        id_images: list[Path],
        seed: int,
        out_path: Path,
        negative_prompt: str | None = None,
    ) -> Candidate:
        """Render ``prompt`` (containing ``<class word> img``) as the person in ``id_images``."""
        request = self.request(prompt, id_images, seed, out_path, negative_prompt)
        return (await self.generate_batch([request]))[0]
