"""An image database at STARK's scale: build and search 1M CLIP-sized vectors.

    python bench/retrieval.py                 # 1,000,000 x 768, 1,000 queries
    python bench/retrieval.py --smoke         # 30,000 x 64, 100 queries, for CI

The bench writes synthetic embeddings in the clip-retrieval layout (``img_emb/*.npy`` shards
of 100,000 rows, ``metadata/*.parquet``), clustered like real CLIP embeddings (a few thousand
topics, each image near its topic: the nearest neighbours are then a real question, unlike
uniform noise where every vector is equally far), then runs the product's own path:
``build_from_embeddings`` (what ``mcu index build --embeddings`` calls) with the AutoFaiss
settings we ship, in a child process whose peak RSS is the build's peak memory.

It prints, for 1,000 held-out queries from the same distribution:

- exact search (numpy over the memory-mapped shards): queries per second, batched;
- the index alone: recall@10 against exact, queries per second (batched and one by one);
- the shipped search (``ImageDatabase.search_vector``): the index's pool of 64 candidates
  rescored exactly from the memory-mapped vectors: recall@10 and queries per second, one by
  one as episodes search;
- build seconds, build peak RSS, index size on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARD_ROWS = 100_000


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` unit vectors, each its topic centre plus noise (cosine to the centre ~0.7)."""
    topics = rng.integers(0, centers.shape[0], size=n)
    noise = rng.standard_normal((n, centers.shape[1]), dtype=np.float32)
    rows = centers[topics] + noise * (spread / np.sqrt(centers.shape[1]))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def write_layout(root: Path, n: int, dim: int, topics: int, seed: int) -> np.ndarray:
    """Write the shards and metadata; return the topic centres (queries come from them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for shard, start in enumerate(range(0, n, SHARD_ROWS)):
        rows = min(SHARD_ROWS, n - start)
        out = np.lib.format.open_memmap(
            root / "img_emb" / f"img_emb_{shard}.npy", mode="w+", dtype=np.float32,
            shape=(rows, dim),
        )  # fmt: skip
        for chunk in range(0, rows, 25_000):
            size = min(25_000, rows - chunk)
            out[chunk : chunk + size] = clustered(rng, centers, size, spread=1.0)
        out.flush()
        del out
        ids = range(start, start + rows)
        table = pa.table(
            {
                "key": [f"{i:09d}" for i in ids],
                "url": [f"https://example.org/{i}.jpg" for i in ids],
                "caption": [f"synthetic image {i}" for i in ids],
            }
        )
        pq.write_table(table, root / "metadata" / f"metadata_{shard}.parquet")
    return centers


def exact_top(shards: list[Path], queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-``k`` by inner product over the memory-mapped shards, and the seconds."""
    started = time.perf_counter()
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    offset = 0
    for path in shards:
        base = np.load(path, mmap_mode="r")
        for start in range(0, base.shape[0], 50_000):
            block = np.asarray(base[start : start + 50_000])
            scores = queries @ block.T
            top = np.argpartition(-scores, k, axis=1)[:, :k]
            cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
            cand_ids = np.concatenate([best_ids, top + offset + start], 1)
            keep = np.argsort(-cand_scores, axis=1)[:, :k]
            best_scores = np.take_along_axis(cand_scores, keep, 1)
            best_ids = np.take_along_axis(cand_ids, keep, 1)
        offset += base.shape[0]
    return best_ids, time.perf_counter() - started


class NoTextEncoder:
    """Stands in for the CLIP text encoder: the bench searches by vector only."""

    def load(self) -> None:
        pass

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError("the bench searches by vector")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / truth.size


def build_child(layout: Path, out: Path) -> None:
    """Runs in the child process: the product's build, then its own peak RSS."""
    from mcu_sim.tools.index_embeddings import build_from_embeddings

    summary = build_from_embeddings(layout, out, model_name="ViT-L-14", progress=False)
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--topics", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--build-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_child:
        build_child(*args.build_child)
        return
    if args.smoke:
        args.n, args.dim, args.topics, args.queries = 30_000, 64, 300, 100
    with tempfile.TemporaryDirectory(prefix="mcu-bench-retrieval-") as tmp:
        result = run(args, args.workdir or Path(tmp))
    print(json.dumps(result) if args.json else _table(result))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    from mcu_sim.tools.image_db import read_manifest
    from mcu_sim.tools.retrieval import ImageDatabase

    layout, db = work / "emb", work / "db"
    started = time.perf_counter()
    centers = write_layout(layout, args.n, args.dim, args.topics, seed=0)
    generate_s = time.perf_counter() - started
    queries = clustered(np.random.default_rng(1), centers, args.queries, spread=1.0)
    child = subprocess.run(
        [sys.executable, __file__, "--build-child", str(layout), str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"build failed:\n{child.stderr[-3000:]}")
    build = json.loads(child.stdout.strip().splitlines()[-1])
    entry = next(iter(read_manifest(db)["embeddings"].values()))
    shards = [Path(p) for p in entry["images"]]
    truth, exact_s = exact_top(shards, queries, args.k)

    index = faiss.read_index(str(db / entry["image_index"]), faiss.IO_FLAG_MMAP)
    if entry.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, entry["index_param"])
    index.search(queries[:10], args.k)  # warm the page cache of the lists a little
    t0 = time.perf_counter()
    _, found = index.search(queries, args.k)
    index_batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:
        index.search(q[None, :], args.k)
    index_single_s = time.perf_counter() - t0

    # the shipped search: a pool from the index, rescored exactly; no text encoder needed
    key = (entry["kind"], entry.get("pretrained"), "cpu")
    database = ImageDatabase(db, clip_model="ViT-L-14", encoders={key: NoTextEncoder()})
    database_hits = []
    database.search_vector(queries[0], args.k)  # loads the items and indexes once
    t0 = time.perf_counter()
    for q in queries:
        hits = database.search_vector(q, args.k)
        database_hits.append([int(item.id) for item, _ in hits])
    shipped_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in db.glob("*.faiss"))
    n_q = len(queries)
    return {
        "vectors": args.n,
        "dim": args.dim,
        "queries": n_q,
        "index_key": entry["index_key"],
        "index_param": entry.get("index_param"),
        "generate_s": round(generate_s, 1),
        "build_s": build["seconds"],
        "build_peak_rss_mb": round(build["peak_rss_mb"], 1),
        "vectors_on_disk_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
        "index_on_disk_mb": round(size / 2**20, 1),
        "exact_qps_batched": round(n_q / exact_s, 1),
        "index_recall_at_10": round(recall(found, truth), 4),
        "index_qps_batched": round(n_q / index_batch_s, 1),
        "index_qps_single": round(n_q / index_single_s, 1),
        "shipped_recall_at_10": round(recall(np.array(database_hits), truth), 4),
        "shipped_qps_single": round(n_q / shipped_s, 1),
        "shipped_speedup_vs_exact": round(exact_s / shipped_s, 2),
        "index_speedup_vs_exact": round(exact_s / index_batch_s, 2),
    }


def _table(result: dict[str, Any]) -> str:
    return "\n".join(f"{key:28} {value}" for key, value in result.items())


if __name__ == "__main__":
    main()
