"""On-disk layout of an image database, and the DialogCC similarity arithmetic.

A database is one flat directory (flat so the shipped one fits the ``data/image_db/*``
package-data glob):

- ``db.json``: the manifest: format version, where the images live, and one entry per
  embedding that was computed (``"minilm"`` for caption embeddings, ``"clip:<model>"`` for
  CLIP image and caption embeddings), each naming its files, dimension and statistics.
- ``items.jsonl``: one item per line (``id``, ``path``, ``caption``, optional licence and
  source fields); line *i* is row *i* of every embedding matrix and FAISS index.
- ``<slug>.<part>.npy`` / ``<slug>.<part>.faiss``: L2-normalised float32 embeddings and the
  AutoFaiss index over them (``part`` is ``images`` or ``captions``).

This module is pure (json, numpy): no torch, no faiss; numpy is imported inside the
functions that compute, so importing the layout stays light.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


FORMAT_NAME = "mcu-image-db"
FORMAT_VERSION = 1
MANIFEST = "db.json"
ITEMS = "items.jsonl"
MINILM_KIND = "minilm"
DEFAULT_ALPHA = 0.5
SEARCH_POOL = 64  # candidates a search takes from each index, then rescores exactly


class DatabaseFormatError(ValueError):
    """The directory is not a readable image database."""


@dataclass
class DbItem:
    """One image of the database. ``path`` is relative to the images root unless absolute."""

    id: str
    path: str
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        row: dict[str, Any] = {"id": self.id, "path": self.path, "caption": self.caption}
        row.update(self.extra)
        return json.dumps(row, ensure_ascii=False)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> DbItem:
        rest = {k: v for k, v in row.items() if k not in ("id", "path", "caption")}
        return cls(id=str(row["id"]), path=str(row["path"]), caption=row.get("caption"), extra=rest)


@dataclass
class ZStats:
    """Mean and standard deviation of description-image and description-caption cosines.

    DialogCC z-scores both similarity types before mixing them, because the modality gap
    puts text-image cosines on a much lower scale than text-text cosines.
    """

    image_mean: float
    image_std: float
    caption_mean: float
    caption_std: float
    alpha: float = DEFAULT_ALPHA
    pairs: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def mean_std(similarities: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation, with the std floored to stay divisible."""
    import numpy as np

    values = np.asarray(similarities, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot compute z-score statistics of zero similarities")
    return float(values.mean()), max(float(values.std()), 1e-6)


def dialogcc_score(
    desc_image_sim: np.ndarray | float,
    desc_caption_sim: np.ndarray | float,
    stats: ZStats,
    alpha: float | None = None,
) -> np.ndarray:
    """DialogCC's combined score: ``alpha * z(s_img) + (1 - alpha) * z(s_cap)``.

    ``NaN`` in ``desc_caption_sim`` marks an item without a caption; its score is then the
    z-scored image similarity alone, so uncaptioned images are neither boosted nor buried.
    """
    import numpy as np

    weight = stats.alpha if alpha is None else alpha
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {weight}")
    z_img = (np.asarray(desc_image_sim, dtype=np.float64) - stats.image_mean) / stats.image_std
    s_cap = np.asarray(desc_caption_sim, dtype=np.float64)
    z_cap = (s_cap - stats.caption_mean) / stats.caption_std
    mixed = weight * z_img + (1.0 - weight) * z_cap
    return np.where(np.isnan(s_cap), z_img, mixed)


def similarity_stats(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    has_caption: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    max_items: int = 2000,
    seed: int = 0,
) -> ZStats | None:
    """Estimate the z-score statistics from the database itself.

    Captions stand in for descriptions: every caption is compared with every *other* item's
    image and caption (matching pairs are left out, as a query rarely has its exact twin).
    At most ``max_items`` captioned items are sampled. ``None`` when fewer than two captions.
    """
    import numpy as np

    rows = np.flatnonzero(has_caption)
    if rows.size < 2:
        return None
    if rows.size > max_items:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_items, replace=False))
    caps = np.asarray(caption_emb[rows], dtype=np.float32)
    imgs = np.asarray(image_emb[rows], dtype=np.float32)
    off_diagonal = ~np.eye(rows.size, dtype=bool)
    img_mean, img_std = mean_std((caps @ imgs.T)[off_diagonal])
    cap_mean, cap_std = mean_std((caps @ caps.T)[off_diagonal])
    return ZStats(img_mean, img_std, cap_mean, cap_std, alpha=alpha, pairs=int(off_diagonal.sum()))


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows; all-zero rows (no caption) stay zero."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def embedding_slug(kind: str) -> str:
    """A file-name-safe, unique stem for an embedding kind (``clip:ViT-L-14-336`` → ...)."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,60}", kind):
        return kind
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", kind).strip("_")[-40:]
    return f"{clean}-{hashlib.sha256(kind.encode()).hexdigest()[:8]}"


def clip_kind(model_name: str) -> str:
    return f"clip:{model_name}"


def read_manifest(db_dir: Path) -> dict[str, Any]:
    path = Path(db_dir) / MANIFEST
    if not path.is_file():
        raise DatabaseFormatError(
            f"{db_dir} is not an image database (no {MANIFEST}); "
            "build one with `mcu index build --images DIR --out DB`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatabaseFormatError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT_NAME:
        raise DatabaseFormatError(f"{path} is not an {FORMAT_NAME} manifest")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise DatabaseFormatError(
            f"{path} has format version {manifest['version']}; this mcu-sim reads up to "
            f"{FORMAT_VERSION}: upgrade mcu-sim or rebuild the database"
        )
    return manifest


def write_manifest(db_dir: Path, manifest: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves a half-written manifest."""
    path = Path(db_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def new_manifest(images_root: str, n_items: int) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "images_root": images_root,
        "n_items": n_items,
        "embeddings": {},
    }


def read_items(db_dir: Path) -> list[DbItem]:
    path = Path(db_dir) / ITEMS
    if not path.is_file():
        raise DatabaseFormatError(f"{db_dir} has a manifest but no {ITEMS}: rebuild it")
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                items.append(DbItem.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError) as exc:
                raise DatabaseFormatError(f"{path}:{number}: bad item: {exc}") from exc
    return items


def write_items(db_dir: Path, items: list[DbItem]) -> None:
    path = Path(db_dir) / ITEMS
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(item.to_json() + "\n")
    tmp.replace(path)


def images_root(db_dir: Path, manifest: dict[str, Any]) -> Path:
    root = Path(manifest.get("images_root", "."))
    return root if root.is_absolute() else Path(db_dir) / root


def item_file(db_dir: Path, manifest: dict[str, Any], item: DbItem) -> Path:
    path = Path(item.path)
    return path if path.is_absolute() else images_root(db_dir, manifest) / path


class ShardedRows:
    """Rows of several memory-mapped ``.npy`` shards, addressed as one matrix (``m[rows]``)."""

    def __init__(self, paths: list[Path]) -> None:
        import numpy as np

        self.shards = [np.load(p, mmap_mode="r") for p in paths]
        self.starts = [0]
        for shard in self.shards:
            self.starts.append(self.starts[-1] + shard.shape[0])
        self.shape = (self.starts[-1], int(self.shards[0].shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        import numpy as np

        wanted = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.shape[0]):
            raise IndexError(f"row out of range 0-{self.shape[0] - 1}")
        out = np.empty((wanted.size, self.shape[1]), dtype=np.float32)
        shard_of = np.searchsorted(self.starts, wanted, side="right") - 1
        for shard in np.unique(shard_of):  # one gather per shard, not one read per row
            at = np.flatnonzero(shard_of == shard)
            out[at] = self.shards[shard][wanted[at] - self.starts[shard]]
        return out if np.ndim(rows) else out[0]
