"""Image databases from embeddings people already have (the clip-retrieval layout).

clip-retrieval's ``inference`` (run on an img2dataset download, or the published LAION,
cc12m, … embeddings) writes one folder::

    img_emb/img_emb_0.npy  text_emb/text_emb_0.npy  metadata/metadata_0.parquet  ...

Row *i* of shard *n* in every folder is the same image: its CLIP image embedding, its
caption's CLIP text embedding, and its metadata (``url``, ``caption``, and often ``key`` and
``image_path``). :func:`build_from_embeddings` turns that folder into a database without
re-embedding and without copying a vector: the manifest names the shards where they lie, the
AutoFaiss indexes are built memory-mappable over them, and searches read the few rows they
rescore from memory-mapped shards (:class:`ShardedRows`) and the metadata through Arrow
(:class:`ParquetItems`), so a database of millions never has to sit in Python objects.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.image_db import (
    DbItem,
    ShardedRows,
    clip_kind,
    embedding_slug,
    new_manifest,
    write_manifest,
)
from mcu_sim.tools.index_tune import DEFAULT_TARGET_RECALL, tune_entry

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

IMAGE_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"
CAPTION_COLUMNS = ("caption", "text", "txt", "TEXT")
URL_COLUMNS = ("url", "URL")
KEY_COLUMNS = ("key", "id", "image_id")
PATH_COLUMNS = ("image_path", "path")
NORM_TOLERANCE = 0.02


def _shard_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    return int(match.group(1)) if match else -1


def _shards(folder: Path, suffix: str) -> list[Path]:
    """Files of a layout folder in shard order (``img_emb_2`` before ``img_emb_10``)."""
    return sorted(folder.glob(f"*{suffix}"), key=lambda p: (_shard_number(p), p.name))


@dataclass
class EmbeddingsLayout:
    """A clip-retrieval folder, checked: shards pair up one to one with equal row counts."""

    root: Path
    images: list[Path]
    texts: list[Path] | None
    metadata: list[Path]
    rows: list[int]
    dim: int

    @property
    def n_rows(self) -> int:
        return sum(self.rows)


def read_layout(root: Path) -> EmbeddingsLayout:
    """Check the folder and pair its shards; raises ``ValueError`` saying what is wrong."""
    import numpy as np
    import pyarrow.parquet as pq

    root = Path(root)
    images = _shards(root / IMAGE_DIR, ".npy")
    if not images:
        raise ValueError(f"{root} has no {IMAGE_DIR}/*.npy: not a clip-retrieval embeddings folder")
    metadata = _shards(root / META_DIR, ".parquet")
    if len(metadata) != len(images):
        raise ValueError(
            f"{root}: {len(images)} {IMAGE_DIR} shards but {len(metadata)} {META_DIR}/*.parquet"
        )
    texts = _shards(root / TEXT_DIR, ".npy") or None
    if texts is not None and len(texts) != len(images):
        raise ValueError(f"{root}: {len(images)} {IMAGE_DIR} shards but {len(texts)} {TEXT_DIR}")
    rows, dim = [], None
    for number, image in enumerate(images):
        matrix = np.load(image, mmap_mode="r")
        if matrix.ndim != 2 or matrix.dtype not in (np.float32, np.float16):
            raise ValueError(f"{image}: expected a 2-d float32/float16 matrix, got {matrix.dtype}")
        if dim is not None and matrix.shape[1] != dim:
            raise ValueError(f"{image}: {matrix.shape[1]} dims, earlier shards have {dim}")
        dim = int(matrix.shape[1])
        n_meta = pq.ParquetFile(metadata[number]).metadata.num_rows
        if n_meta != matrix.shape[0]:
            raise ValueError(f"{metadata[number]}: {n_meta} rows for {matrix.shape[0]} embeddings")
        if texts is not None and np.load(texts[number], mmap_mode="r").shape != matrix.shape:
            raise ValueError(f"{texts[number]}: shape differs from {image}")
        rows.append(int(matrix.shape[0]))
    assert dim is not None
    return EmbeddingsLayout(root, images, texts, metadata, rows, dim)


def _column(names: list[str], choices: tuple[str, ...]) -> str | None:
    return next((c for c in choices if c in names), None)


class ParquetItems:
    """The metadata shards as a read-only sequence of :class:`DbItem`, built on demand."""

    def __init__(self, paths: list[Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = pq.ParquetFile(paths[0]).schema_arrow.names
        self.columns = {
            "caption": _column(names, CAPTION_COLUMNS),
            "url": _column(names, URL_COLUMNS),
            "key": _column(names, KEY_COLUMNS),
            "path": _column(names, PATH_COLUMNS),
        }
        wanted = sorted({c for c in self.columns.values() if c})
        tables = [pq.read_table(p, columns=wanted, memory_map=True) for p in paths]
        self.table = pa.concat_tables(tables, promote_options="permissive") if tables else None
        self._cols = {
            field: self.table.column(name) for field, name in self.columns.items() if name
        }

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else 0

    def _get(self, field: str, row: int) -> Any:
        column = self._cols.get(field)
        return None if column is None else column[row].as_py()

    def __getitem__(self, row: int) -> DbItem:
        if not 0 <= row < len(self):
            raise IndexError(row)
        key, url = self._get("key", row), self._get("url", row)
        caption = self._get("caption", row)
        extra = {"url": url} if url else {}
        return DbItem(
            id=str(key) if key is not None else f"{row:09d}",
            path=str(self._get("path", row) or ""),
            caption=str(caption).strip() or None if caption else None,
            extra=extra,
        )

    def __iter__(self) -> Any:
        return (self[row] for row in range(len(self)))

    def caption_mask(self) -> np.ndarray:
        """Whether each row has a caption (not blank), one byte per row, worked out by Arrow
        over the whole column: a search asks it of every candidate, which a :class:`DbItem`
        per candidate made cost more than the search."""
        import numpy as np
        import pyarrow.compute as pc

        column = self._cols.get("caption")
        if column is None:
            return np.zeros(len(self), dtype=bool)
        text = pc.utf8_trim_whitespace(pc.cast(column, "string"))
        present = pc.fill_null(pc.and_(pc.is_valid(text), pc.not_equal(text, "")), False)
        return np.asarray(present.to_numpy(), dtype=bool)


def _check_normalised(layout: EmbeddingsLayout) -> None:
    """clip-retrieval writes unit vectors; inner product then is cosine. Check a sample."""
    import numpy as np

    for shards in (layout.images, layout.texts) if layout.texts else (layout.images,):
        sample = np.asarray(np.load(shards[0], mmap_mode="r")[:256], dtype=np.float32)
        norms = np.linalg.norm(sample, axis=1)
        norms = norms[norms > 0]  # a zero row is an image without caption
        if norms.size and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            raise ValueError(
                f"{shards[0]}: embeddings are not L2-normalised (norms {norms.min():.3f}-"
                f"{norms.max():.3f}); write them normalised (clip-retrieval does by default)"
            )


def build_from_embeddings(
    embeddings: Path,
    out: Path,
    *,
    model_name: str,
    pretrained: str | None = None,
    progress: bool = True,
    stats_sample: int = 2000,
    target_recall: float | None = DEFAULT_TARGET_RECALL,
) -> dict[str, Any]:
    """Index a clip-retrieval folder into the database ``out``; returns a summary.

    ``model_name``/``pretrained`` name the CLIP model the embeddings were made with: searches
    encode descriptions with it, so it must be that very model. Approximate indexes get the
    smallest ``nprobe`` reaching ``target_recall``, the image index measured with the caption
    embeddings as queries when there are any (``None``: AutoFaiss's time-budget choice).
    """
    from mcu_sim.tools.image_db import similarity_stats
    from mcu_sim.tools.index_build import autofaiss_index

    started = time.monotonic()
    layout = read_layout(Path(embeddings))
    _check_normalised(layout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new --out folder")
    kind = clip_kind(model_name)
    slug = embedding_slug(kind)
    n = layout.n_rows
    image_infos = autofaiss_index(layout.images, out / f"{slug}.images.faiss", n, progress)
    entry: dict[str, Any] = {
        "kind": kind,
        "model_name": model_name,
        "pretrained": pretrained,
        "random_weights": False,
        "dim": layout.dim,
        "images": [str(p.resolve()) for p in layout.images],
        "image_index": f"{slug}.images.faiss",
        "index_key": image_infos["index_key"],
        "index_param": image_infos.get("index_param") or None,
        "captions": None,
        "caption_index": None,
        "stats": None,
    }
    if layout.texts is not None:
        text_infos = autofaiss_index(layout.texts, out / f"{slug}.captions.faiss", n, progress)
        entry.update(
            captions=[str(p.resolve()) for p in layout.texts],
            caption_index=f"{slug}.captions.faiss",
            caption_index_param=text_infos.get("index_param") or None,
        )
        import numpy as np

        items = ParquetItems(layout.metadata)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, stats_sample), replace=False))
        has_caption = items.caption_mask()[sample]
        stats = similarity_stats(
            ShardedRows(layout.images)[sample], ShardedRows(layout.texts)[sample], has_caption
        )
        entry["stats"] = stats.to_dict() if stats else None
    if target_recall:
        tune_entry(out, entry, target_recall)
    manifest = new_manifest(".", n)
    manifest["source"] = {
        "layout": "clip-retrieval",
        "embeddings": str(layout.root.resolve()),
        "metadata": [str(p.resolve()) for p in layout.metadata],
    }
    manifest["embeddings"][kind] = entry
    write_manifest(out, manifest)  # last: a crash leaves no half database
    return {
        "out": str(out),
        "n_items": n,
        "dim": layout.dim,
        "shards": len(layout.images),
        "embedding": kind,
        "index_key": entry["index_key"],
        "index_param": entry["index_param"],
        "index_tuning": entry.get("index_tuning"),
        "stats": entry["stats"],
        "seconds": round(time.monotonic() - started, 3),
    }
