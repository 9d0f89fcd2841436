"""Aesthetic score: LAION's improved aesthetic predictor (MAGID §3, threshold 0.51).

The predictor is a small MLP over the L2-normalised CLIP ViT-L/14 image embedding (768-d):
Linear(d,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16),
Linear(16,1), stored as a state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}`` (for
example ``sac+logos+ava1-l14-linearMSE.pth``). Its output is a rating of roughly 1-10.

Scale: MAGID reports aesthetics on a 0-1 scale (threshold 0.51; PhotoChat's images average
0.49), which is the predictor's rating divided by 10. So ``value = clip(raw / 10, 0, 1)``
and ``raw`` keeps the rating itself.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.clip_score import ClipBackbone, file_fingerprint
from mcu_sim.tools.scoring import ImageScorer

if TYPE_CHECKING:
    from PIL.Image import Image

SCORER_REVISION = "1"
HIDDEN_SIZES = (1024, 128, 64, 16)
LINEAR_INDICES = (0, 2, 4, 6, 7)
EXPECTED_KEYS = frozenset(f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias"))
RATING_SCALE = 10.0
NOT_CONFIGURED = (
    "no aesthetic predictor weights configured: set images.scorers.aesthetic.weights_path to "
    "LAION's improved-aesthetic-predictor .pth (random_weights: true is for tests only)"
)


def build_aesthetic_mlp(input_dim: int) -> Any:
    """The predictor's architecture as an ``nn.Module`` with a ``layers`` Sequential."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h1, h2, h3, h4 = HIDDEN_SIZES
            self.layers = nn.Sequential(
                nn.Linear(input_dim, h1),
                nn.Dropout(0.2),
                nn.Linear(h1, h2),
                nn.Dropout(0.2),
                nn.Linear(h2, h3),
                nn.Dropout(0.1),
                nn.Linear(h3, h4),
                nn.Linear(h4, 1),
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    return AestheticMLP()


def load_aesthetic_state_dict(path: Path) -> dict[str, Any]:
    """Read the predictor weights (.pth/.pt via torch, or .safetensors) and check the layout."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ToolUnavailable("aesthetic", f"{path} does not hold a state dict")
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    keys = set(state)
    if keys != EXPECTED_KEYS:
        missing = sorted(EXPECTED_KEYS - keys)
        extra = sorted(keys - EXPECTED_KEYS)
        raise ToolUnavailable(
            "aesthetic",
            f"{path} is not in the improved-aesthetic-predictor layout "
            f"(missing {missing[:4]}, unexpected {extra[:4]})",
        )
    return state


class AestheticScorer(ImageScorer):
    """The LAION aesthetic rating of each image, reported on MAGID's 0-1 scale."""

    name = "aesthetic"

    def __init__(
        self,
        weights_path: str | Path | None = None,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = None,
        device: str = "cpu",
        *,
        random_weights: bool = False,
        batch_size: int = 16,
        backbone: ClipBackbone | None = None,
        seed: int = 0,
    ) -> None:
        """``random_weights`` gives a random MLP over a random CLIP (tests and benches only).
        ``backbone`` shares a loaded CLIP model with the CLIP scorer."""
        if random_weights and weights_path:
            raise ValueError("random_weights=True contradicts weights_path=...; choose one")
        self.weights_path = Path(weights_path) if weights_path else None
        self.random_weights = random_weights
        self.seed = seed
        self.backbone = backbone or ClipBackbone(
            clip_model, clip_pretrained, device, random_weights=random_weights, seed=seed
        )
        super().__init__(self.backbone.device, batch_size)
        self._mlp: Any = None
        self._weights_label: str | None = None
        self._label_lock = threading.Lock()

    @property
    def version(self) -> str:
        with self._label_lock:
            if self._weights_label is None:
                if self.random_weights:
                    self._weights_label = f"random-init(seed={self.seed})"
                elif self.weights_path and self.weights_path.is_file():
                    self._weights_label = file_fingerprint(self.weights_path)
                else:
                    return f"aesthetic/{SCORER_REVISION} laion-mlp weights=unset"
        return (
            f"aesthetic/{SCORER_REVISION} laion-mlp weights={self._weights_label} "
            f"rating/{RATING_SCALE:g} on {self.backbone.version}"
        )

    def _check(self) -> str | None:
        if self.weights_path is None and not self.random_weights:
            return NOT_CONFIGURED
        if self.weights_path is not None and not self.weights_path.is_file():
            return f"aesthetic predictor weights {self.weights_path} not found"
        return self.backbone.check()

    def _load(self) -> None:
        import torch

        self.backbone.load()
        clip_dim = int(self.backbone.embed_dim or 0)
        if self.weights_path is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                mlp = build_aesthetic_mlp(clip_dim)
        else:
            state = load_aesthetic_state_dict(self.weights_path)
            input_dim = int(state["layers.0.weight"].shape[1])
            if input_dim != clip_dim:
                raise ToolUnavailable(
                    "aesthetic",
                    f"the predictor {self.weights_path.name} expects {input_dim}-d CLIP image "
                    f"embeddings but {self.backbone.model_name} gives {clip_dim}-d; LAION's "
                    "predictor needs CLIP ViT-L/14 (768-d): set aesthetic.clip_model and "
                    "aesthetic.clip_pretrained to the ViT-L/14 OpenAI weights",
                )
            mlp = build_aesthetic_mlp(input_dim)
            try:
                mlp.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ToolUnavailable(
                    "aesthetic",
                    f"{self.weights_path.name} does not fit the predictor's layer sizes "
                    f"{HIDDEN_SIZES}: {str(exc).splitlines()[-1].strip()}",
                ) from exc
        self._mlp = mlp.to(self.device).eval()

    def _score_batch(
        self, images: list[Image], texts: list[str] | None
    ) -> list[tuple[float, float | None, str]]:
        import torch

        embeddings = torch.from_numpy(self.backbone.embed_images(images)).to(self.device)
        with torch.inference_mode():
            ratings = self._mlp(embeddings).squeeze(-1).float().cpu().tolist()
        return [(min(max(r / RATING_SCALE, 0.0), 1.0), float(r), "") for r in ratings]


__all__ = ["AestheticScorer", "build_aesthetic_mlp", "load_aesthetic_state_dict"]
