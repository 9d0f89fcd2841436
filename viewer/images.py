"""Turn an :class:`ImageRecord` into something an ``<img src>`` can use offline.

Either a path relative to the page (so the page keeps working when the run directory is
moved or opened from disk) or, with ``embed``, a ``data:`` URI. Files that are missing,
outside the run directory or not images give a reason instead of a broken ``<img>``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mcu_sim.personas.schema import ImageRecord

# Magic bytes -> MIME type: trust the content, not the file name.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True)
class ImageSrc:
    """``src`` for the page, or ``problem`` saying why there is none."""

    src: str | None
    problem: str | None = None


def sniff_mime(head: bytes) -> str | None:
    for magic, mime in SIGNATURES:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class ImageResolver:
    """Resolves image records of one run for pages written into ``page_dir``."""

    def __init__(self, run_root: Path, page_dir: Path, embed: bool = False) -> None:
        self.run_root = run_root.resolve()
        self.page_dir = page_dir.resolve()
        self.embed = embed
        self._cache: dict[str, ImageSrc] = {}

    def __call__(self, record: ImageRecord | None) -> ImageSrc:
        if record is None:
            return ImageSrc(None, "no image")
        if record.path not in self._cache:
            self._cache[record.path] = self._resolve(record.path)
        return self._cache[record.path]

    def _resolve(self, recorded: str) -> ImageSrc:
        path = (self.run_root / recorded).resolve()
        if not path.is_relative_to(self.run_root):
            return ImageSrc(None, f"image path {recorded!r} points outside the run directory")
        try:
            with path.open("rb") as handle:
                head = handle.read(16)
        except OSError:
            return ImageSrc(None, f"image file {recorded} is missing")
        mime = sniff_mime(head)
        if mime is None:
            return ImageSrc(None, f"{recorded} is not a PNG, JPEG, GIF or WebP image")
        if self.embed:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return ImageSrc(f"data:{mime};base64,{data}")
        relative = Path(os.path.relpath(path, self.page_dir)).as_posix()
        return ImageSrc(quote(relative))
