"""Tiny random SDXL components and PhotoMaker checkpoints for tests and smoke benchmarks.

Everything here is built from configs with random weights and written to disk in the same
layouts the real weights use, so the tools load it through their normal ``load()`` path:

- ``save_tiny_sdxl(dir)``: a diffusers ``StableDiffusionXLPipeline`` folder (``model_index.json``).
- ``save_tiny_lightning_unet(base, file)``: full UNet weights in one safetensors file, like the
  SDXL-Lightning ``*_unet.safetensors`` files.
- ``save_tiny_lightning_lora(base, file)``: UNet LoRA weights as diffusers' training scripts save
  them.
- ``save_tiny_photomaker(base, file)``: a torch state dict with the two top-level keys of the
  published ``photomaker-v1.bin`` (``id_encoder``, ``lora_weights``), key names included.

No hub access: the tokenizers use a small byte-level BPE vocabulary generated here.
Heavy imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

#: Words that become single tokens in the tiny vocabulary (others split into characters).
TINY_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "img",
    "man",
    "woman",
    "boy",
    "girl",
    "person",
    "photo",
    "portrait",
    "face",
    "smiling",
    "beach",
    "park",
    "year",
    "old",
    "from",
)

TEXT_HIDDEN = 32  # per text encoder; SDXL: 768 and 1280
TIME_EMBED = 8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars], strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply byte-pair merges (lowest rank first) until none applies."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, 1 << 30), i) for i, pair in enumerate(pairwise(symbols))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


@cache
def _tiny_vocab(
    words: tuple[str, ...],
) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """A byte-level BPE vocabulary in which each of ``words`` is a single token.

    Merges are added greedily, each with the lowest priority so far; a word that already
    reduces to one token with the earlier merges keeps doing so, so the result is stable.
    """
    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols := _bpe(symbols, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(ranks)
            vocab_tokens.append(pair[0] + pair[1])
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_tokens))}
    merges = tuple(pair for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1]))
    return vocab, merges


def tiny_clip_tokenizer(words: Iterable[str] = TINY_WORDS, pad_token: str = "<|endoftext|>") -> Any:
    """A ``CLIPTokenizer`` over a tiny vocabulary (``pad_token="!"`` mimics SDXL's second one)."""
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab(tuple(w.lower() for w in words))
    return CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=77
    )


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """The seven SDXL components at toy sizes (random weights, deterministic for ``seed``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": CLIPTextModel(text_config),
        "text_encoder_2": CLIPTextModelWithProjection(text_config),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
    }


def save_tiny_sdxl(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random SDXL pipeline folder (loadable with ``from_pretrained``)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def save_tiny_lightning_unet(base_dir: Path, out_file: Path, seed: int = 1) -> Path:
    """Random full UNet weights for the tiny base config, as one safetensors file."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    config = UNet2DConditionModel.load_config(Path(base_dir) / "unet")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(out_file))
    return Path(out_file)


def _attention_linears(unet: Any) -> list[tuple[str, Any]]:
    """(module path, Attention) for every attention block of a UNet."""
    from diffusers.models.attention_processor import Attention

    return [(name, mod) for name, mod in unet.named_modules() if isinstance(mod, Attention)]


def save_tiny_lightning_lora(base_dir: Path, out_file: Path, rank: int = 2, seed: int = 2) -> Path:
    """Random UNet LoRA weights in diffusers' saved format (``unet.<path>.lora_A.weight``)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(base_dir) / "unet")
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for path, attn in _attention_linears(unet):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            layer = attn.get_submodule(proj)
            down = torch.randn(rank, layer.in_features, generator=gen) * 0.1
            up = torch.randn(layer.out_features, rank, generator=gen) * 0.1
            state[f"unet.{path}.{proj}.lora_A.weight"] = down
            state[f"unet.{path}.{proj}.lora_B.weight"] = up
    save_file(state, str(out_file))
    return Path(out_file)


def tiny_id_encoder_state(
    text_width: int,
    *,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = TEXT_HIDDEN,
    seed: int = 3,
) -> dict[str, Any]:
    """An ``id_encoder`` state dict in the published PhotoMaker v1 key layout.

    The CLIP part comes from transformers' ``CLIPVisionModelWithProjection`` (keys
    ``vision_model.*`` and ``visual_projection.weight``); the extra projection and the fuse MLP
    are written key by key so that this file checks the loader's names independently.
    Real sizes: vision 1024 wide, projection 768, projection 2 → 1280, text width 2048.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_attention_heads=max(1, vision_hidden // 64),
        num_hidden_layers=vision_layers,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    state = dict(CLIPVisionModelWithProjection(config).state_dict())
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen) * 0.05

    state["visual_projection_2.weight"] = rand(text_width - projection_dim, vision_hidden)
    for block, width_in in (("mlp1", 2 * text_width), ("mlp2", text_width)):
        prefix = f"fuse_module.{block}"
        state[f"{prefix}.layernorm.weight"] = torch.ones(width_in)
        state[f"{prefix}.layernorm.bias"] = torch.zeros(width_in)
        state[f"{prefix}.fc1.weight"] = rand(text_width, width_in)
        state[f"{prefix}.fc1.bias"] = rand(text_width)
        state[f"{prefix}.fc2.weight"] = rand(text_width, text_width)
        state[f"{prefix}.fc2.bias"] = rand(text_width)
    state["fuse_module.layer_norm.weight"] = torch.ones(text_width)
    state["fuse_module.layer_norm.bias"] = torch.zeros(text_width)
    return state


def tiny_photomaker_lora_state(unet: Any, rank: int = 4, seed: int = 4) -> dict[str, Any]:
    """UNet LoRA in the published PhotoMaker layout (old diffusers attention-processor names:
    ``unet.<path>.processor.to_q_lora.down.weight``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for path, attn in _attention_linears(unet):
        for name, proj in (
            ("to_q", "to_q"),
            ("to_k", "to_k"),
            ("to_v", "to_v"),
            ("to_out", "to_out.0"),
        ):
            layer = attn.get_submodule(proj)
            prefix = f"unet.{path}.processor.{name}_lora"
            state[f"{prefix}.down.weight"] = (
                torch.randn(rank, layer.in_features, generator=gen) * 0.1
            )
            state[f"{prefix}.up.weight"] = (
                torch.randn(layer.out_features, rank, generator=gen) * 0.1
            )
    return state


def save_tiny_photomaker(base_dir: Path, out_file: Path, **id_encoder_kwargs: Any) -> Path:
    """A tiny ``photomaker-v1.bin`` matching the tiny SDXL at ``base_dir`` (``torch.save``)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    base = Path(base_dir)
    width = sum(
        CLIPTextConfig.from_pretrained(base / sub).hidden_size
        for sub in ("text_encoder", "text_encoder_2")
    )
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    checkpoint = {
        "id_encoder": tiny_id_encoder_state(width, **id_encoder_kwargs),
        "lora_weights": tiny_photomaker_lora_state(unet),
    }
    torch.save(checkpoint, out_file)
    return Path(out_file)
