"""PickScore (Pick-a-Pic, Kirstain et al. 2023): the image-text check STARK §3.9 uses.

PickScore is a CLIP-H model fine-tuned on human preferences; its score is the model's
``logit_scale.exp()`` times the cosine of image and text embeddings (about 18-23 for the
real weights). It loads through transformers' public ``CLIPModel`` and ``AutoProcessor``
from local folders only (``images.scorers.pickscore.model_path``, and ``processor_path``
when the processor is kept apart, as the original release keeps it with
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Without weights every image is recorded
``not scored``; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.scoring import ImageScorer, missing_package

if TYPE_CHECKING:
    from PIL.Image import Image

SCORER_REVISION = "1"
NO_WEIGHTS = (
    "no PickScore weights: set images.scorers.pickscore.model_path to a local copy of "
    "yuvalkirstain/PickScore_v1 (and processor_path to laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"
)


class PickScoreScorer(ImageScorer):
    """Preference-model score of each image against its text (one text per image)."""

    name = "pickscore"
    needs_texts = True

    def __init__(
        self,
        model_path: str | None,
        processor_path: str | None = None,
        device: str = "cpu",
        *,
        batch_size: int = 16,
    ) -> None:
        super().__init__(device, batch_size)
        self.model_path = model_path
        self.processor_path = processor_path or model_path
        self._model = None
        self._processor = None

    @property
    def version(self) -> str:
        label = Path(self.model_path).name if self.model_path else "none"
        return f"pickscore/{SCORER_REVISION} {label}"

    def _check(self) -> str | None:
        if not self.model_path:
            return NO_WEIGHTS
        for path in {self.model_path, self.processor_path}:
            if path and not Path(path).is_dir():
                return f"PickScore folder {path} does not exist"
        return missing_package("transformers", "transformers")

    def _load(self) -> None:
        from transformers import AutoProcessor, CLIPModel

        try:
            self._processor = AutoProcessor.from_pretrained(
                self.processor_path, local_files_only=True
            )
            model = CLIPModel.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ToolUnavailable(self.name, f"cannot load PickScore: {exc}"[:300]) from exc
        self._model = model.eval().to(self.device)

    def _score_batch(
        self, images: list[Image], texts: list[str] | None
    ) -> list[tuple[float, float | None, str]]:
        import torch

        assert texts is not None and self._model is not None and self._processor is not None
        inputs = self._processor(
            images=images,
            text=texts,
            padding=True,
            truncation=True,
            max_length=77,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():  # the forward pass returns normalised embeddings and logits
            out = self._model(**inputs)
            cosine = (out.image_embeds * out.text_embeds).sum(dim=-1)
            scores = out.logits_per_image.diagonal()  # logit_scale.exp() * cosine, per pair
        return [(float(s), float(c), "") for s, c in zip(scores, cosine, strict=True)]
