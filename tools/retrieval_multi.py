"""Several image databases searched together, with one z-scored ranking (STARK §3.8).

STARK retrieves from five sources at once (cc12m, redcaps12m and three smaller ones). Raw
cosines do not compare across databases: each collection (and each embedding model) has its
own similarity scale. Every database therefore ranks its own candidates on the z-scale of its
own statistics (:class:`~mcu_sim.tools.image_db.ZStats`, estimated when it was built): the
DialogCC mix of z-scored image and caption similarities where captions exist, the z-scored
image similarity otherwise, and, for a database built without statistics, the raw cosine
(which then competes on an unequal footing: build with captions to avoid it). The top ``k`` of
all databases merged by that score is the answer; ties keep the configured database order.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate, ToolUnavailable
from mcu_sim.tools.image_db import DbItem
from mcu_sim.tools.retrieval import ImageDatabase, below_min_combined


def rank_score(scores: dict[str, Any], stats: Any) -> float:
    """The score a result competes with across databases (see the module docstring)."""
    if "combined" in scores:
        return float(scores["combined"])
    if stats is not None:
        return (float(scores["similarity"]) - stats.image_mean) / stats.image_std
    return float(scores["similarity"])


class DatabaseSet:
    """The retrieval tool over ``images.retrieval.databases``: same interface as one database."""

    def __init__(self, db_dirs: list[Path], **options: Any) -> None:
        if not db_dirs:
            raise ValueError("a DatabaseSet needs at least one database")
        encoders: dict[tuple[str, str | None, str], Any] = {}  # one model loaded once
        self.databases = [ImageDatabase(Path(d), encoders=encoders, **options) for d in db_dirs]
        self._lock = threading.Lock()

    @property
    def embedding_kind(self) -> str | None:
        kinds = {db.embedding_kind for db in self.databases}
        return kinds.pop() if len(kinds) == 1 else None

    def available(self) -> tuple[bool, str]:
        """Available when every database is: a missing one is a configuration error."""
        notes = []
        for db in self.databases:
            ok, why = db.available()
            if not ok:
                return False, f"{db.db_dir}: {why}"
            if why:
                notes.append(f"{db.db_dir.name}: {why}")
        return True, "; ".join(notes)

    def load(self) -> None:
        with self._lock:
            for db in self.databases:
                db.load()

    def _merge(
        self, found: list[tuple[int, list[tuple[DbItem, dict[str, Any]]]]], k: int
    ) -> list[tuple[int, DbItem, dict[str, Any]]]:
        merged = []
        for position, results in found:
            db = self.databases[position]
            for item, scores in results:
                scores = {**scores, "database": db.db_dir.name}
                scores["rank_score"] = rank_score(scores, db.stats)
                merged.append((position, item, scores))
        merged.sort(key=lambda hit: -hit[2]["rank_score"])  # stable: database order on ties
        return merged[:k]

    def search_vector(self, query: Any, k: int = 5) -> list[tuple[DbItem, dict[str, Any]]]:
        """Top-``k`` over all databases for one embedding (all databases in its space)."""
        self.load()
        found = [(pos, db.search_vector(query, k)) for pos, db in enumerate(self.databases)]
        return [(item, scores) for _, item, scores in self._merge(found, k)]

    def search_sync(
        self, description: str, k: int = 5, out_dir: Path | None = None
    ) -> list[Candidate]:
        """Top-``k`` candidates over all databases; only the winners are copied or fetched."""
        self.load()
        dropped: list[dict[str, Any]] = []
        found = [
            (pos, db.search_texts(description, k, dropped)) for pos, db in enumerate(self.databases)
        ]
        winners = self._merge(found, k)
        if not winners and dropped:
            floor = self.databases[0].min_combined
            raise ToolUnavailable("retrieval", below_min_combined(dropped, floor))
        return [self.databases[pos].candidate(item, sc, out_dir) for pos, item, sc in winners]

    async def search(
        self, description: str, k: int = 5, out_dir: Path | None = None
    ) -> list[Candidate]:
        return await asyncio.to_thread(self.search_sync, description, k, out_dir)


def open_databases(db_dirs: list[Path], **options: Any) -> ImageDatabase | DatabaseSet:
    """One database as itself, several as a :class:`DatabaseSet`."""
    if not db_dirs:
        raise ToolUnavailable("retrieval", "no image database configured")
    if len(db_dirs) == 1:
        return ImageDatabase(Path(db_dirs[0]), **options)
    return DatabaseSet(db_dirs, **options)
