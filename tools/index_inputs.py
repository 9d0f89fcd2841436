"""Where the images of a new database come from: a folder, or a parquet file.

Folder: every image file below it (sorted), its caption from ``<stem>.txt`` and licence or
source fields from ``<stem>.json`` (the img2dataset layout). Parquet: an image column with
bytes (written into ``<out>/images``) or paths (relative to the parquet file), plus optional
caption and id columns.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mcu_sim.tools.image_db import DbItem, embedding_slug

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR_KEYS = ("url", "license", "source", "attribution", "title")
PARQUET_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "image_bytes", "bytes")
PARQUET_PATH_COLUMNS = ("path", "image_path", "filepath", "file", "file_name")
PARQUET_CAPTION_COLUMNS = ("caption", "text", "txt", "description", "alt")
PARQUET_ID_COLUMNS = ("id", "key", "image_id")


def _sidecars(image: Path) -> tuple[str | None, dict[str, Any]]:
    """Caption from ``<stem>.txt`` and licence/source fields from ``<stem>.json``, if present."""
    text = image.with_suffix(".txt")
    caption = text.read_text(encoding="utf-8").strip() or None if text.is_file() else None
    extra: dict[str, Any] = {}
    meta = image.with_suffix(".json")
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
        if isinstance(data, dict):
            extra = {k: data[k] for k in SIDECAR_KEYS if data.get(k) is not None}
    return caption, extra


def _root_for(folder: Path, out: Path) -> str:
    """Images root as stored in the manifest: relative when inside the database folder."""
    folder, out = folder.resolve(), out.resolve()
    return os.path.relpath(folder, out) if folder.is_relative_to(out) else str(folder)


def _from_folder(images_dir: Path, out: Path) -> tuple[list[DbItem], list[Path], str]:
    root = Path(images_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--images {images_dir} is not a folder")
    skip_under = out.resolve() if out.resolve() != root else None
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not (skip_under and p.resolve().is_relative_to(skip_under))
    )
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    rels = [p.relative_to(root).as_posix() for p in files]
    ids = [r.rsplit(".", 1)[0] for r in rels]
    if len(set(ids)) != len(ids):
        ids = rels  # a.jpg and a.png both present: keep the suffix in the id
    items = []
    for ident, rel, file in zip(ids, rels, files, strict=True):
        caption, extra = _sidecars(file)
        items.append(DbItem(id=ident, path=rel, caption=caption, extra=extra))
    return items, files, _root_for(root, out)


def _column(names: list[str], choices: tuple[str, ...]) -> str | None:
    lowered = {n.lower(): n for n in names}
    return next((lowered[c] for c in choices if c in lowered), None)


def _from_parquet(parquet: Path, out: Path) -> tuple[list[DbItem], list[Path], str]:
    """Rows with image bytes are written to ``out/images``; path rows point at their files."""
    import pyarrow.parquet as pq

    from mcu_sim.tools.base import InvalidImage, verify_image_bytes

    source = pq.ParquetFile(parquet)
    names = source.schema_arrow.names
    img_col = _column(names, PARQUET_IMAGE_COLUMNS)
    path_col = _column(names, PARQUET_PATH_COLUMNS)
    cap_col = _column(names, PARQUET_CAPTION_COLUMNS)
    id_col = _column(names, PARQUET_ID_COLUMNS)
    if img_col is None and path_col is None:
        raise ValueError(
            f"{parquet} has no image column: expected one of "
            f"{PARQUET_IMAGE_COLUMNS + PARQUET_PATH_COLUMNS}, found {names}"
        )
    base = Path(parquet).resolve().parent
    store = out / "images"
    items: list[DbItem] = []
    files: list[Path] = []
    row = 0
    for batch in source.iter_batches(batch_size=512):
        for record in batch.to_pylist():
            ident = (
                str(record[id_col]) if id_col and record.get(id_col) is not None else f"{row:08d}"
            )
            row += 1
            value = record.get(img_col) if img_col else None
            if isinstance(value, dict):  # Hugging Face datasets' Image feature
                value = value.get("bytes") or value.get("path")
            if value is None and path_col:
                value = record.get(path_col)
            caption = (
                (str(record[cap_col]).strip() or None) if cap_col and record.get(cap_col) else None
            )
            if isinstance(value, bytes | bytearray):
                try:
                    fmt, _, _ = verify_image_bytes(bytes(value))
                except InvalidImage as exc:
                    log.warning("parquet row %s skipped: %s", ident, exc)
                    continue
                store.mkdir(parents=True, exist_ok=True)
                name = f"{embedding_slug(ident)}.{fmt.lower().replace('jpeg', 'jpg')}"
                (store / name).write_bytes(bytes(value))
                items.append(DbItem(id=ident, path=f"images/{name}", caption=caption))
                files.append(store / name)
            elif isinstance(value, str) and value:
                file = (base / value).resolve()
                items.append(DbItem(id=ident, path=str(file), caption=caption))
                files.append(file)
    if not items:
        raise ValueError(f"{parquet} holds no usable image rows")
    return items, files, "."


def collect_items(
    images_dir: Path | None, parquet: Path | None, out: Path
) -> tuple[list[DbItem], list[Path], str]:
    """Items, their absolute files and the manifest's images root, from a folder or parquet."""
    if images_dir is not None:
        return _from_folder(Path(images_dir), out)
    assert parquet is not None
    return _from_parquet(Path(parquet), out)
