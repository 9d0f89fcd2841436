"""Tune an IVF index's ``nprobe`` for recall, measured against exact search (issue 33).

AutoFaiss tunes an index's search parameters for a query-time budget, which at one million
vectors on two cores bought recall 1.0 at a third of the speed the index can give. Searches
here take the index's pool of :data:`SEARCH_POOL` candidates and rescore them exactly, so what
users see is whether the exact top ``k`` made it into that pool. :func:`tune_nprobe` picks the
smallest ``nprobe`` whose recall of the exact top :data:`TUNE_K` within the pool reaches a
target, on a sample of realistic queries:

- caption (text) embeddings searched against the image index, when the database has them
  (text to image is how episodes search);
- otherwise held-out database vectors: each query is a stored vector, and its own row is left
  out of both the exact answer and the index's (leave-one-out).

The exact answer is brute force over the memory-mapped shards, a shard at a time. The recall
that must reach the target is the lower end of a one-sided 95 % confidence interval over the
queries (mean less 1.645 standard errors), so held-out queries reach the target too. The
search doubles ``nprobe`` until the target is met, then bisects; a higher target can never
give a smaller ``nprobe``. Everything goes through faiss's public API
(``try_extract_index_ivf``, ``ParameterSpace.set_index_parameters``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.image_db import SEARCH_POOL, ShardedRows, read_manifest, write_manifest

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
TUNE_QUERIES = 500  # a minute of exact search at 1M x 768 on two cores
TUNE_K = 10
CONFIDENCE_Z = 1.645  # one-sided 95 %
EXACT_BLOCK = 50_000


def exact_top(
    paths: list[Path], queries: np.ndarray, k: int, leave_out: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-``k`` rows by inner product over the shards, best first.

    ``leave_out[i]`` is a row query ``i`` may not find (its own, for held-out queries). One
    shard is mapped at a time, so the process never holds more than a shard of vectors.
    """
    import numpy as np

    queries = np.asarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for path in paths:
        shard = np.load(path, mmap_mode="r")
        for start in range(0, shard.shape[0], EXACT_BLOCK):
            block = np.asarray(shard[start : start + EXACT_BLOCK], dtype=np.float32)
            scores = queries @ block.T
            first = offset + start
            if leave_out is not None:
                mine = np.flatnonzero((leave_out >= first) & (leave_out < first + len(block)))
                scores[mine, leave_out[mine] - first] = -np.inf
            top = min(k, scores.shape[1])
            part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], 1)
            cand_ids = np.concatenate([best_ids, part + first], 1)
            keep = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(cand_scores, keep, 1)
            best_ids = np.take_along_axis(cand_ids, keep, 1)
        offset += shard.shape[0]
        del shard
    return best_ids


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each query, the share of its exact answer (``truth``, -1 = none) in ``found``."""
    import numpy as np

    hits = np.array(
        [len(set(f.tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth, strict=True)]
    )
    wanted = np.maximum((truth >= 0).sum(axis=1), 1)
    return hits / wanted


def tuning_queries(
    base: list[Path], captions: list[Path] | None, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Up to ``n`` unit queries, the rows to leave out (or ``None``), and what they are.

    Caption vectors when ``captions`` is given and some rows have one (all-zero rows are
    images without caption), else held-out vectors of ``base``.
    """
    import numpy as np

    total = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in base)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(total, size=min(total, 2 * n), replace=False))
    for source, paths in (("captions", captions), ("held-out vectors", base)):
        if not paths:
            continue
        vectors = ShardedRows(paths)[rows]
        norms = np.linalg.norm(vectors, axis=1)
        keep = np.flatnonzero(norms > 0)
        keep = np.sort(rng.permutation(keep)[:n])
        if keep.size:
            queries = vectors[keep] / norms[keep, None]
            return queries, (rows[keep] if source == "held-out vectors" else None), source
    raise ValueError(f"no non-zero vectors to tune with in {base[0]}...")


def _param(base_param: str | None, nprobe: int) -> str:
    """AutoFaiss's parameter string with ``nprobe`` replaced (``efSearch`` kept at 2x)."""
    pairs = [p.split("=", 1) for p in (base_param or "").split(",") if "=" in p]
    values = {name.strip(): value.strip() for name, value in pairs}
    values["nprobe"] = str(nprobe)
    if "efSearch" in values:  # an HNSW quantizer: AutoFaiss keeps efSearch at twice nprobe
        values["efSearch"] = str(max(2 * nprobe, 16))
    return ",".join(f"{name}={value}" for name, value in values.items())


def tune_nprobe(
    index: Any,
    base: list[Path],
    *,
    target: float = DEFAULT_TARGET_RECALL,
    captions: list[Path] | None = None,
    base_param: str | None = None,
    k: int = TUNE_K,
    pool: int = SEARCH_POOL,
    n_queries: int = TUNE_QUERIES,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Set and return the smallest ``nprobe`` reaching ``target``; ``None`` if not an IVF.

    The index is left with the chosen parameters. The answer records the parameter string
    (``index_param``), the recall measured and how (queries, ``k``, ``pool``), and the
    recall and its lower bound at every ``nprobe`` tried (``curve``). An index that cannot
    reach the target even probing every list (compressed codes) gets the smallest
    ``nprobe`` giving its best recall.
    """
    import faiss
    import numpy as np

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall must be within (0, 1], got {target}")
    started = time.monotonic()
    nlist = int(ivf.nlist)
    queries, own, source = tuning_queries(base, captions, n_queries, seed)
    truth = exact_top(base, queries, k, own)
    wanted = min(pool, int(index.ntotal)) + (own is not None)
    space = faiss.ParameterSpace()
    curve: dict[int, tuple[float, float]] = {}

    def measure(nprobe: int) -> float:
        if nprobe not in curve:
            space.set_index_parameters(index, _param(base_param, nprobe))
            _, found = index.search(queries, wanted)
            if own is not None:  # drop the query's own row, keep the pool's size
                order = np.argsort(found == own[:, None], axis=1, kind="stable")
                found = np.take_along_axis(found, order, 1)[:, : wanted - 1]
            per_query = recall_per_query(found, truth)
            spread = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0
            curve[nprobe] = (
                float(per_query.mean()),
                float(per_query.mean() - CONFIDENCE_Z * spread),
            )
        return curve[nprobe][1]

    def smallest(goal: float) -> int:
        failing, nprobe = 0, 1
        while measure(nprobe) < goal and nprobe < nlist:
            failing, nprobe = nprobe, min(2 * nprobe, nlist)
        if measure(nprobe) < goal:  # not even with every list
            return nprobe
        while nprobe - failing > 1:  # measure(failing) < goal <= measure(nprobe)
            middle = (failing + nprobe) // 2
            failing, nprobe = (failing, middle) if measure(middle) >= goal else (middle, nprobe)
        return nprobe

    chosen = smallest(target)
    reached = measure(chosen) >= target
    if not reached:  # even every list falls short: the smallest nprobe giving the best
        log.warning("index cannot reach recall %.3f (best %.3f)", target, measure(nlist))
        chosen = smallest(measure(nlist))
    param = _param(base_param, chosen)
    space.set_index_parameters(index, param)
    return {
        "index_param": param,
        "nprobe": chosen,
        "nlist": nlist,
        "target_recall": target,
        "reached": reached,
        "recall": round(curve[chosen][0], 4),
        "recall_low": round(curve[chosen][1], 4),
        "k": k,
        "pool": wanted - (own is not None),
        "queries": len(queries),
        "query_source": source,
        "autofaiss_index_param": base_param,
        "curve": {str(p): [round(v, 4) for v in curve[p]] for p in sorted(curve)},
        "seconds": round(time.monotonic() - started, 2),
    }


def tune_index_file(
    index_path: Path,
    base: list[Path],
    *,
    target: float = DEFAULT_TARGET_RECALL,
    captions: list[Path] | None = None,
    base_param: str | None = None,
    n_queries: int = TUNE_QUERIES,
) -> dict[str, Any] | None:
    """:func:`tune_nprobe` on a saved index, opened memory-mapped as searches open it."""
    import faiss

    index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)
    try:
        return tune_nprobe(
            index,
            base,
            target=target,
            captions=captions,
            base_param=base_param,
            n_queries=n_queries,
        )
    finally:
        del index


def _paths(db_dir: Path, names: str | list[str] | None) -> list[Path] | None:
    """An entry's vector files: one name in the database, or shards where they lie."""
    if not names:
        return None
    return [Path(db_dir) / name for name in ([names] if isinstance(names, str) else names)]


def tune_entry(
    db_dir: Path, entry: dict[str, Any], target: float | None, n_queries: int = TUNE_QUERIES
) -> None:
    """Tune both indexes of a manifest entry in place (``index_param``, ``index_tuning``,
    ``caption_index_param``, ``caption_index_tuning``); exact indexes are left alone.

    The image index is tuned on caption queries when the entry has captions; the caption
    index on held-out captions. AutoFaiss's own choice is kept in the tuning record, and
    re-tuning starts from it; no ``target`` (0 or ``None``) puts it back.
    """
    images, captions = _paths(db_dir, entry.get("images")), _paths(db_dir, entry.get("captions"))
    plans = (
        ("index", "image_index", images, captions),
        ("caption_index", "caption_index", captions, None),
    )
    for prefix, index_field, base, queries in plans:
        if not entry.get(index_field) or not base:
            continue
        before = entry.get(f"{prefix}_tuning") or {}
        if not target:
            if before:
                entry[f"{prefix}_param"] = before["autofaiss_index_param"]
                del entry[f"{prefix}_tuning"]
            continue
        tuning = tune_index_file(
            Path(db_dir) / entry[index_field],
            base,
            target=target,
            captions=queries,
            base_param=before.get("autofaiss_index_param", entry.get(f"{prefix}_param")),
            n_queries=n_queries,
        )
        if tuning is not None:
            entry[f"{prefix}_param"] = tuning["index_param"]
            entry[f"{prefix}_tuning"] = tuning


def tune_database(
    db_dir: Path, target: float | None = DEFAULT_TARGET_RECALL, n_queries: int = TUNE_QUERIES
) -> dict[str, Any]:
    """Re-tune every index of an existing database for ``target`` (none: AutoFaiss's own
    choice back) and rewrite its manifest; returns the tuning records by embedding (what
    ``mcu index tune`` prints)."""
    manifest = read_manifest(db_dir)
    report = {}
    for kind, entry in manifest["embeddings"].items():
        tune_entry(db_dir, entry, target, n_queries)
        report[kind] = {
            part: entry.get(f"{prefix}_tuning")
            for part, prefix in (("images", "index"), ("captions", "caption_index"))
        }
    write_manifest(db_dir, manifest)
    return report
