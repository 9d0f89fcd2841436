"""CLIP score: how well an image matches its description (MAGID §3, threshold 0.21).

The score is the plain cosine similarity of the L2-normalised open_clip image and text
embeddings, in [-1, 1] (not multiplied by 100 and not clipped at 0 as in some CLIPScore
variants), so MAGID's 0.21 threshold applies as is.

Weights must be configured. ``pretrained`` is a checkpoint file or an open_clip tag; a
``local-dir:/path`` model name reads ``open_clip_config.json`` and the checkpoint from that
folder. Random weights are only used when asked for explicitly with ``random_weights=True``
(tests and benches); leaving the weights unset makes the scorer unavailable with a message
that says what to set, rather than silently scoring with a random model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.base import ToolUnavailable, resolve_device
from mcu_sim.tools.scoring import IMAGE_KEY, ImageScorer, Score, missing_package, open_rgb

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

SCORER_REVISION = "1"
LOCAL_DIR = "local-dir:"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")
NOT_CONFIGURED = (
    "no CLIP weights configured: set images.scorers.clip.pretrained to a checkpoint file "
    "or open_clip tag, or use model 'local-dir:/folder' holding open_clip_config.json and "
    "the weights (random_weights: true is for tests only)"
)


def file_fingerprint(path: Path) -> str:
    """``name@sha256:<12 hex>`` of a weights file, so a score names the exact weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"{path.name}@sha256:{digest.hexdigest()[:12]}"


def find_local_checkpoint(folder: Path) -> Path | None:
    """The checkpoint open_clip would pick in a ``local-dir:`` folder (safetensors first)."""
    found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
    found.sort(key=lambda p: p.suffix != ".safetensors")
    return found[0] if found else None


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES)


class ClipBackbone:
    """An open_clip model, its preprocessing and tokenizer, loaded once and shareable.

    ``embed_images``/``embed_texts`` return L2-normalised float32 arrays of shape (N, D).
    ``seed`` fixes the random initialisation when ``random_weights`` is set, so test scores
    are the same in every process.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = None,
        device: str = "cpu",
        *,
        random_weights: bool = False,
        seed: int = 0,
        cache_size: int = 512,
    ) -> None:
        if random_weights and pretrained:
            raise ValueError("random_weights=True contradicts pretrained=...; choose one")
        if model_name.startswith(LOCAL_DIR) and pretrained:
            raise ValueError(
                "pretrained is ignored for local-dir: models; put the checkpoint in the folder"
            )
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self.random_weights = random_weights
        self.seed = seed
        self.embed_dim: int | None = None
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._version: str | None = None
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def local_dir(self) -> Path | None:
        if self.model_name.startswith(LOCAL_DIR):
            return Path(self.model_name[len(LOCAL_DIR) :])
        return None

    def check(self) -> str | None:
        """Why this backbone cannot load, from configuration alone; None when it may."""
        missing = missing_package("open_clip", "open_clip_torch")
        if missing:
            return missing
        folder = self.local_dir
        if folder is not None:
            if not (folder / "open_clip_config.json").is_file():
                return f"CLIP folder {folder} has no open_clip_config.json"
            if not self.random_weights and find_local_checkpoint(folder) is None:
                return (
                    f"no CLIP weights (*.safetensors, *.bin, *.pth) in {folder}; "
                    "put the checkpoint there"
                )
            return None
        if self.pretrained is None:
            return None if self.random_weights else NOT_CONFIGURED
        if _looks_like_path(self.pretrained) and not Path(self.pretrained).is_file():
            return f"CLIP weights file {self.pretrained} not found"
        return None

    @property
    def version(self) -> str:
        """``open_clip <model> weights=<file@sha | tag | random-init(seed=N)>``."""
        if self._version is None:
            self._version = f"open_clip {self._model_label()} weights={self._weights_label()}"
        return self._version

    def _model_label(self) -> str:
        folder = self.local_dir
        return f"local-dir:{folder.name}" if folder is not None else self.model_name

    def _weights_label(self) -> str:
        if self.random_weights:
            return f"random-init(seed={self.seed})"
        folder = self.local_dir
        path = find_local_checkpoint(folder) if folder and folder.is_dir() else None
        if path is None and self.pretrained and Path(self.pretrained).is_file():
            path = Path(self.pretrained)
        if path is not None:
            return file_fingerprint(path)
        return f"tag:{self.pretrained}" if self.pretrained else "unset"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Build the model and load its weights (once); raise ToolUnavailable otherwise."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            reason = self.check()
            if reason:
                raise ToolUnavailable("clip", reason)
            self._build()

    def _build(self) -> None:
        import open_clip
        import torch

        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name,
                    pretrained=None if self.random_weights else self.pretrained,
                    load_weights=not self.random_weights,
                    device=device,
                    pretrained_text=False,
                    pretrained_image=False,
                )
            except Exception as exc:
                raise ToolUnavailable(
                    "clip",
                    f"could not load open_clip {self.model_name} with weights "
                    f"{self.pretrained or 'from its folder'}: {type(exc).__name__}: {exc}",
                ) from exc
        model.eval()
        tokenizer = open_clip.get_tokenizer(self.model_name)
        with torch.inference_mode():
            probe = model.encode_text(tokenizer([""]).to(device))
        self.embed_dim = int(probe.shape[-1])
        self._preprocess, self._tokenizer = preprocess, tokenizer
        self._model = model
        _ = self.version  # fingerprint the weights now, not in the middle of scoring

    def embed_images(self, images: list[Image]) -> np.ndarray:
        """Normalised image embeddings; images opened by :func:`open_rgb` are cached by file
        version, so the CLIP and aesthetic scorers encode each file once."""
        import numpy as np
        import torch

        self.load()
        keys = [img.info.get(IMAGE_KEY) for img in images]
        with self._lock:
            cached = {k: self._cache[k] for k in keys if k is not None and k in self._cache}
        todo: list[int] = []  # first image of each file not cached yet, or an unkeyed one
        first_of: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is None:
                todo.append(i)
            elif key not in cached and key not in first_of:
                first_of[key] = i
                todo.append(i)
        fresh: dict[int, np.ndarray] = {}
        if todo:
            batch = torch.stack([self._preprocess(images[i]) for i in todo]).to(self.device)
            with torch.inference_mode():
                encoded = _normalised(self._model.encode_image(batch))
            fresh = dict(zip(todo, encoded, strict=True))
            with self._lock:
                for key, i in first_of.items():
                    self._cache[key] = fresh[i]
                    self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        for key, i in first_of.items():
            cached[key] = fresh[i]
        rows = [fresh[i] if keys[i] is None else cached[keys[i]] for i in range(len(images))]
        return np.stack(rows).astype("float32")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        self.load()
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self._model.encode_text(tokens)
        return _normalised(features)

    def unload(self) -> None:
        with self._lock:
            self._model = self._preprocess = self._tokenizer = None
            self._cache.clear()


def _normalised(features: Any) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype("float32")


class ClipScorer(ImageScorer):
    """Cosine similarity between each image and its text (one text per image)."""

    name = "clip"
    needs_texts = True

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = None,
        device: str = "cpu",
        *,
        random_weights: bool = False,
        batch_size: int = 16,
        backbone: ClipBackbone | None = None,
    ) -> None:
        """Pass ``backbone`` to share one loaded model with the aesthetic scorer; the model
        arguments are then ignored."""
        self.backbone = backbone or ClipBackbone(
            model_name, pretrained, device, random_weights=random_weights
        )
        super().__init__(self.backbone.device, batch_size)

    @property
    def version(self) -> str:
        return f"clip-score/{SCORER_REVISION} cosine {self.backbone.version}"

    def _check(self) -> str | None:
        return self.backbone.check()

    def _load(self) -> None:
        self.backbone.load()

    def _score_batch(
        self, images: list[Image], texts: list[str] | None
    ) -> list[tuple[float, float | None, str]]:
        assert texts is not None  # enforced by needs_texts
        image_emb = self.backbone.embed_images(images)
        text_emb = self.backbone.embed_texts(texts)
        cosines = (image_emb * text_emb).sum(axis=1)
        return [(float(c), None, "") for c in cosines]

    def image_similarity_sync(self, images: list[Path | str]) -> list[list[float]]:
        """Pairwise cosine similarity between images (DialogCC's consistency filter).

        Raises ToolUnavailable when the model cannot load, InvalidImage for a bad file.
        """
        self.load()
        opened = [open_rgb(Path(p)) for p in images]
        if not opened:
            return []
        with self._run_lock:
            emb = self.backbone.embed_images(opened)
        return (emb @ emb.T).tolist()

    async def image_similarity(self, images: list[Path | str]) -> list[list[float]]:
        import asyncio

        return await asyncio.to_thread(self.image_similarity_sync, list(images))


__all__ = ["ClipBackbone", "ClipScorer", "Score", "file_fingerprint"]
