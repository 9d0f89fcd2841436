"""Small interfaces every image tool follows.

A tool is configured cheaply at construction, does its heavy imports and weight loading in
``load()`` (once, lazily), and reports why it cannot run instead of pretending.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Device = Literal["cpu", "cuda", "mps"]


class ToolUnavailable(RuntimeError):
    """The tool cannot run here (no weights configured, offline, missing extra).

    ``reason`` is short and is recorded in the episode so the router can fall back.
    """

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"{tool} unavailable: {reason}")
        self.tool = tool
        self.reason = reason


# The only decoders Pillow may run on any image we read: Pillow otherwise picks by content
# among every format it knows, including EPS (which runs Ghostscript on the file).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")  # JPEG includes MPO (phone photos)


def open_image(fp: Any) -> Any:
    """``PIL.Image.open`` limited to :data:`IMAGE_FORMATS`; anything else raises
    ``PIL.UnidentifiedImageError`` before a byte of it is decoded."""
    from PIL import Image

    Image.init()  # registers every plugin once, so each format named here is known
    return Image.open(fp, formats=IMAGE_FORMATS)


class InvalidImage(ValueError):
    """Bytes that are not a usable image (not decodable, too large, a decompression bomb)."""


@dataclass
class Candidate:
    """One image a tool produced or found, already written to disk by the tool."""

    path: Path
    module: str
    source_url: str | None = None
    db_id: str | None = None
    seed: int | None = None
    scores: dict[str, float | str] = field(default_factory=dict)
    caption: str | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_record(candidate: Candidate, relative_to: Path | None = None) -> dict[str, Any]:
    """The ``ImageRecord`` dict for a candidate (path relative to the run dir when given)."""
    with open_image(candidate.path) as img:
        width, height = img.size
    path = candidate.path
    shown = str(path.relative_to(relative_to)) if relative_to else str(path)
    return {
        "path": shown,
        "sha256": sha256_file(path),
        "width": width,
        "height": height,
        "module": candidate.module,
        "source_url": candidate.source_url,
        "db_id": candidate.db_id,
        "seed": candidate.seed,
        "scores": dict(candidate.scores),
    }


def verify_image_bytes(data: bytes, max_pixels: int = 40_000_000) -> tuple[str, int, int]:
    """Decode ``data`` fully with Pillow; return (format, width, height) or raise InvalidImage."""
    from PIL import Image

    try:
        with open_image(io.BytesIO(data)) as probe:
            width, height = probe.size
            fmt = probe.format or "?"
            if width * height > max_pixels:
                raise InvalidImage(f"{width}x{height} exceeds the {max_pixels} pixel limit")
            probe.verify()
        with open_image(io.BytesIO(data)) as img:
            img.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        accepted = ", ".join(IMAGE_FORMATS)
        raise InvalidImage(f"not a decodable image: only {accepted} are opened") from exc
    except Exception as exc:
        raise InvalidImage(f"not a decodable image: {type(exc).__name__}: {exc}") from exc
    return fmt, width, height


def resolve_device(device: str) -> str:
    """Validate a device name; 'cuda'/'mps' fall back to a clear error if absent."""
    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda or mps, not {device!r}")
    if device == "cpu":
        return device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ToolUnavailable("device", "cuda requested but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ToolUnavailable("device", "mps requested but not available")
    return device
