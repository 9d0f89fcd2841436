"""What every image scorer shares: the :class:`Score`, the :class:`ImageScorer` base, helpers.

MAGID (§3, App. I) accepts a generated image when its CLIP score against the description is
at least 0.21 and its aesthetic score at least 0.51, and checks it is safe; STARK (§3.9)
drops unsafe images and images that do not match their description. Each scorer here turns
a batch of image files into one :class:`Score` per image and never pretends: when it cannot
score (no weights configured, missing extra, unreadable file) the score's ``value`` is
``None`` and its ``note`` says ``not scored: <why>``. Thresholds are applied by the caller.

This is the bottom of the scorers: the concrete ones (:mod:`mcu_sim.tools.clip_score`,
:mod:`mcu_sim.tools.aesthetic`, :mod:`mcu_sim.tools.nsfw`) import it, and
:mod:`mcu_sim.tools.scorers` (the factory) imports them; nothing here imports upward.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mcu_sim.tools.base import InvalidImage, ToolUnavailable, open_image, resolve_device

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_IMAGE_PIXELS = 40_000_000
IMAGE_KEY = "mcu_sim.file_key"
IMAGES_EXTRA_HINT = "install the images extra: pip install 'mcu-sim[images]'"


@dataclass(frozen=True)
class Score:
    """One scorer's verdict on one image.

    ``value`` is on the scale the thresholds use (cosine for CLIP, 0-1 for aesthetics,
    NSFW probability); ``raw`` keeps the model's own number when it differs (the aesthetic
    predictor's ~1-10 rating). ``value is None`` means the image was not scored, and
    ``note`` then starts with ``not scored:``.
    """

    name: str
    value: float | None
    version: str
    note: str = ""
    raw: float | None = None

    @property
    def scored(self) -> bool:
        return self.value is not None

    def passes(self, threshold: float, higher_is_better: bool = True) -> bool | None:
        """Whether the value clears ``threshold``; ``None`` when there is no value."""
        if self.value is None:
            return None
        return self.value >= threshold if higher_is_better else self.value < threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        return cls(
            **{k: data.get(k) for k in ("name", "value", "version")},
            note=data.get("note") or "",
            raw=data.get("raw"),
        )


def scores_record(scores: Iterable[Score]) -> dict[str, float | str]:
    """Flatten scores into ``ImageRecord.scores``: ``{name: value or note,
    "name.version": version, "name.raw": raw}`` (raw only when present)."""
    record: dict[str, float | str] = {}
    for score in scores:
        record[score.name] = score.value if score.value is not None else score.note
        record[f"{score.name}.version"] = score.version
        if score.raw is not None:
            record[f"{score.name}.raw"] = score.raw
    return record


def not_scored(name: str, version: str, why: str) -> Score:
    return Score(name=name, value=None, version=version, note=f"not scored: {why}")


def scoring_failed(exc: BaseException) -> str:
    """The ``not scored`` reason for a scorer that raised while scoring (not loading)."""
    return f"scoring failed: {type(exc).__name__}: {exc}"[:300]


def missing_package(module: str, pip_name: str) -> str | None:
    """A reason string when ``module`` cannot be imported, without importing it."""
    if importlib.util.find_spec(module) is None:
        return f"{pip_name} is not installed; {IMAGES_EXTRA_HINT}"
    return None


def open_rgb(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image:
    """Decode an image file fully into an RGB PIL image, or raise :class:`InvalidImage`.

    ``img.info[IMAGE_KEY]`` identifies the file version (path, size, mtime) so scorers that
    share a CLIP backbone can reuse its embedding instead of encoding the image twice."""
    from PIL import Image as PILImage

    try:
        with open_image(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidImage(f"{width}x{height} exceeds the {max_pixels} pixel limit")
            img.load()
            rgb = img.convert("RGB")
    except InvalidImage:
        raise
    except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
        raise InvalidImage(f"{type(exc).__name__}: {exc}") from exc
    stat = path.stat()
    rgb.info[IMAGE_KEY] = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return rgb


class ImageScorer(ABC):
    """Lazy-loading, batching, thread-safe base of the image scorers.

    Subclasses give a cheap configuration check (``_check``), the heavy ``_load`` and the
    per-batch scoring (``_score_batch``). ``load()`` runs once; a failure is remembered so a
    misconfigured scorer does not retry a slow load for every image.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    needs_texts: ClassVar[bool] = False

    def __init__(self, device: str = "cpu", batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if device not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda or mps, not {device!r}")
        self.device = device
        self.batch_size = batch_size
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loaded = False
        self._failure: str | None = None

    # -- subclass hooks
    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies model, weights and scoring rule; recorded with every score."""

    @abstractmethod
    def _check(self) -> str | None:
        """Cheap configuration check (no heavy imports): the reason it cannot run, or None."""

    @abstractmethod
    def _load(self) -> None:
        """Import the heavy libraries and load weights; raise ToolUnavailable with a why."""

    @abstractmethod
    def _score_batch(
        self, images: list[Image], texts: list[str] | None
    ) -> list[tuple[float, float | None, str]]:
        """One ``(value, raw, note)`` per image, in order."""

    # -- public API
    def available(self) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, why)``. Does not load weights; a failed load is
        remembered and reported here."""
        if self._failure:
            return False, self._failure
        reason = self._check()
        return (False, reason) if reason else (True, "ok")

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Load the model once; raise :class:`ToolUnavailable` with the reason otherwise."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            if self._failure is None:
                self._failure = self._try_load()
            if self._failure is not None:
                raise ToolUnavailable(self.name, self._failure)
            self._loaded = True

    def _try_load(self) -> str | None:
        reason = self._check()
        if reason:
            return reason
        try:
            resolve_device(self.device)
            self._load()
        except ToolUnavailable as exc:
            return exc.reason
        except ImportError as exc:
            return f"cannot import {exc.name or exc}; {IMAGES_EXTRA_HINT}"
        except Exception as exc:
            return f"loading failed: {type(exc).__name__}: {exc}"
        return None

    def score_sync(
        self, images: Sequence[Path | str], texts: Sequence[str] | None = None
    ) -> list[Score]:
        """Blocking version of :meth:`score`."""
        paths = [Path(p) for p in images]
        text_list = self._check_texts(paths, texts)
        if not paths:
            return []
        try:
            self.load()
        except ToolUnavailable as exc:
            return [not_scored(self.name, self.version, exc.reason) for _ in paths]
        results: list[Score | None] = [None] * len(paths)
        for start in range(0, len(paths), self.batch_size):
            indices = range(start, min(len(paths), start + self.batch_size))
            opened: list[tuple[int, Image]] = []
            for i in indices:
                try:
                    opened.append((i, open_rgb(paths[i])))
                except InvalidImage as exc:
                    why = f"cannot read image {paths[i].name}: {exc}"
                    results[i] = not_scored(self.name, self.version, why)
            if not opened:
                continue
            batch_texts = [text_list[i] for i, _ in opened] if text_list is not None else None
            try:
                with self._run_lock:
                    values = self._score_batch([img for _, img in opened], batch_texts)
            except Exception as exc:  # a model failing at run time: this batch is unscored
                why = scoring_failed(exc)
                for i, _ in opened:
                    results[i] = not_scored(self.name, self.version, why)
                continue
            for (i, _), (value, raw, note) in zip(opened, values, strict=True):
                results[i] = Score(self.name, float(value), self.version, note, raw)
        return [r for r in results if r is not None]

    async def score(
        self, images: Sequence[Path | str], texts: Sequence[str] | None = None
    ) -> list[Score]:
        """One :class:`Score` per image, in order. Runs the model in a worker thread so the
        event loop keeps serving other episodes."""
        return await asyncio.to_thread(
            self.score_sync, list(images), list(texts) if texts is not None else None
        )

    def _check_texts(self, paths: list[Path], texts: Sequence[str] | None) -> list[str] | None:
        if texts is None:
            if self.needs_texts:
                raise ValueError(f"{self.name} scorer needs one text per image; got none")
            return None
        text_list = [str(t) for t in texts]
        if len(text_list) != len(paths):
            raise ValueError(
                f"{self.name} scorer got {len(paths)} images but {len(text_list)} texts; "
                "pass one text per image"
            )
        return text_list
