"""Tiny random models and sample images for the scorer tests and benches.

Every model is built from a small config with seeded random weights and written to disk in
the same layout as the real weights, so the scorers load it through their production code
path: an open_clip ``local-dir:`` folder, the LAION aesthetic predictor's ``.pth`` state
dict, and transformers image/text classifier folders. Nothing here downloads anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# OpenAI CLIP's normalisation, defined once (PhotoMaker's ID encoder uses it too).
from mcu_sim.tools.photomaker import CLIP_MEAN, CLIP_STD

__all__ = ["CLIP_MEAN", "CLIP_STD", "TINY_CLIP_CONFIG", "save_tiny_clip"]

TINY_CLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
SAFETY_LABELS = ("safe", "needs_caution", "unsafe")
_WORD_TEXT = (
    "i you we the a to and is am are was my your it this that have had do not no yes hello hi "
    "thanks good great fine love like photo picture dog cat beach trip family friend today "
    "yesterday happy sad hate kill hurt weapon die attack"
)
TINY_WORDS = tuple(_WORD_TEXT.split())


def save_tiny_clip(
    folder: Path, *, seed: int = 0, embed_dim: int = 32, with_weights: bool = True
) -> str:
    """Write an open_clip folder (config + safetensors); return its ``local-dir:`` name."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(TINY_CLIP_CONFIG))
    cfg["embed_dim"] = embed_dim
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    if with_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIP(**cfg)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def save_tiny_aesthetic_mlp(
    path: Path, input_dim: int, *, seed: int = 0, rating_bias: float = 5.0
) -> Path:
    """Write a random predictor in LAION's layout (``torch.save`` of the state dict).

    The last bias is set to ``rating_bias`` so ratings land near it, like a real ~1-10
    rating, instead of near zero.
    """
    import torch

    from mcu_sim.tools.aesthetic import build_aesthetic_mlp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = build_aesthetic_mlp(input_dim)
    with torch.no_grad():
        mlp.layers[7].bias.fill_(rating_bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), path)
    return path


def save_tiny_image_classifier(
    folder: Path, labels: Sequence[str] = ("normal", "nsfw"), *, seed: int = 0
) -> Path:
    """A tiny random ViT image classifier with its image processor, like Falconsai's."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_pickscore(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random transformers CLIP (PickScore's architecture) with its processor: a
    character-level CLIP tokenizer and a 32-pixel image processor, written in place."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokens), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    return folder


def save_tiny_text_classifier(
    folder: Path, labels: Sequence[str] = SAFETY_LABELS, *, seed: int = 0
) -> Path:
    """A tiny random BERT sequence classifier with a word-level tokenizer built in place."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate([*specials, *TINY_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
    fast.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------- images


def write_landscape(path: Path, seed: int = 0, size: tuple[int, int] = (320, 240)) -> Path:
    """A natural-looking synthetic photo: sky gradient, sun, hills, textured grass."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = size
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([70, 130, 200]) * (1 - y) + np.array([190, 220, 245]) * y
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * rng.uniform(0.5, 0.65))
    grass = np.array([60, 120, 50]) + rng.normal(0, 18, (height - horizon, width, 3))
    pixels[horizon:] = grass
    img = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(img)
    sun_x, sun_r = int(width * rng.uniform(0.6, 0.85)), int(height * 0.08)
    draw.ellipse([sun_x - sun_r, 20, sun_x + sun_r, 20 + 2 * sun_r], fill=(255, 236, 160))
    for _ in range(3):
        cx, r = int(rng.uniform(0, width)), int(rng.uniform(0.2, 0.45) * width)
        draw.ellipse([cx - r, horizon - r // 3, cx + r, horizon + r // 3], fill=(50, 95, 60))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90)
    return path


def write_flesh_tone(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    """A smooth, skin-coloured image with soft shading (a hard case for skin detectors)."""
    import numpy as np
    from PIL import Image

    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    shade = 1 - 0.35 * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2)
    base = np.array([224, 172, 140], dtype=float)
    pixels = base[None, None, :] * shade[..., None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(path, quality=92)
    return path


def find_real_photos(limit: int = 4) -> list[Path]:
    """Real photos available offline: the shipped image database (``tools/data``) first,
    then scikit-learn's two sample photos. Possibly empty."""
    import importlib.util

    found: list[Path] = []
    data = Path(__file__).resolve().parent.parent / "tools" / "data"
    if data.is_dir():
        for pattern in ("*.jpg", "*.jpeg", "*.png", "*.webp"):
            found.extend(sorted(data.rglob(pattern)))
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        sample = Path(spec.origin).parent / "datasets" / "images"
        found.extend(sorted(sample.glob("*.jpg")))
    return found[:limit]
