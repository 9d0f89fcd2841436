"""An image database at STARK's scale: build and search 1M CLIP-sized vectors.

    python bench/retrieval.py                 # 1,000,000 x 768, 1,000 queries
    python bench/retrieval.py --smoke         # 30,000 x 64, 100 queries, for CI
    python bench/retrieval.py --workdir DIR --reuse   # measure again what DIR holds

The bench writes synthetic embeddings in the clip-retrieval layout (``img_emb/*.npy`` shards
of 100,000 rows, ``metadata/*.parquet``), clustered like real CLIP embeddings (a few thousand
topics, each image near its topic: the nearest neighbours are then a real question, unlike
uniform noise where every vector is equally far), then runs the product's own path:
``build_from_embeddings`` (what ``mcu index build --embeddings`` calls) with the AutoFaiss
settings we ship and ``nprobe`` tuned for ``--target-recall`` (``tools/index_tune.py``), in a
child process whose peak RSS is the build's peak memory. With ``--reuse`` a ``--workdir``
that already holds the vectors and the database is measured again without rebuilding (and
re-tuned, in a child, when ``--target-recall`` differs from the one it was built for).

Before timing, every vector shard and index file is read once, so exact search and the index
both start with the page cache warm. It prints, for 1,000 held-out queries from the same
distribution (one batch, the same for every search):

- exact search (numpy over the memory-mapped shards): queries per second, batched (and one by
  one on the first 20 queries);
- the index alone with the tuned parameters: recall@10 against exact, queries per second
  (batched and one by one);
- the shipped search (``ImageDatabase.search_vector``): the index's pool of 64 candidates
  rescored exactly from the memory-mapped vectors: recall@10 and queries per second, one by
  one as episodes search;
- a sweep of ``nprobe`` (recall@10, queries per second batched and single), which shows the
  trade-off the tuning chose from;
- build seconds (tuning included), build peak RSS, index size on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
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


def topic_centres(rng: np.random.Generator, topics: int, dim: int) -> np.ndarray:
    """The unit topic centres: the first draw of the generator seeded for the layout."""
    centers = rng.standard_normal((topics, dim), dtype=np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def write_layout(root: Path, n: int, dim: int, topics: int, seed: int) -> np.ndarray:
    """Write the shards and metadata; return the topic centres (queries come from them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = topic_centres(rng, topics, dim)
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


class NoTextEncoder:
    """Stands in for the CLIP text encoder: the bench searches by vector only."""

    def load(self) -> None:
        pass

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError("the bench searches by vector")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall of the exact answers (the product's measure, averaged over queries)."""
    from mcu_sim.tools.index_tune import recall_per_query

    return float(recall_per_query(found, truth).mean())


def build_child(layout: Path, out: Path, target: float) -> None:
    """Runs in the child process: the product's build, then its peak RSS."""
    from mcu_sim.tools.index_embeddings import build_from_embeddings

    summary = build_from_embeddings(
        layout, out, model_name="ViT-L-14", progress=False, target_recall=target or None
    )
    summary["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(summary))


def peak_rss_mb() -> float:
    """The peak RSS of this process or of any process it waited for (AutoFaiss builds in a
    child of its own), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def tune_child(db: Path, target: float) -> None:
    """Runs in the child process: re-tune a kept database (``mcu index tune``)."""
    from mcu_sim.tools.index_tune import tune_database

    started = time.monotonic()
    report = tune_database(db, target)
    summary = {"seconds": round(time.monotonic() - started, 1), "tuning": report}
    summary["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(summary))


def _child(*args: str) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--topics", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95, help="0: AutoFaiss's")
    parser.add_argument(
        "--sweep", default="1,2,4,8,16,32,64,128,256", help="nprobe values to measure"
    )
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="reuse what --workdir holds")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--build-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--tune-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_child:
        build_child(
            Path(args.build_child[0]), Path(args.build_child[1]), float(args.build_child[2])
        )
        return
    if args.tune_child:
        tune_child(Path(args.tune_child[0]), float(args.tune_child[1]))
        return
    if args.smoke:
        args.n, args.dim, args.topics, args.queries = 30_000, 64, 300, 100
    if args.reuse and not args.workdir:
        parser.error("--reuse needs --workdir")
    with tempfile.TemporaryDirectory(prefix="mcu-bench-retrieval-") as tmp:
        result = run(args, args.workdir or Path(tmp))
    print(json.dumps(result) if args.json else _table(result))


def _prepare(args: argparse.Namespace, work: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The vectors and the database (made, or reused); the topic centres and build summary."""
    layout, db = work / "emb", work / "db"
    shape = {"n": args.n, "dim": args.dim, "topics": args.topics, "seed": 0}
    marker, built = layout / "bench.json", work / "build.json"
    reuse = args.reuse and marker.is_file() and json.loads(marker.read_text()) == shape
    if reuse:
        centers = topic_centres(np.random.default_rng(0), args.topics, args.dim)
        generate_s = json.loads(built.read_text()).get("generate_s") if built.is_file() else None
    else:
        for stale in (layout, db):
            if stale.exists():
                shutil.rmtree(stale)
        started = time.perf_counter()
        centers = write_layout(layout, args.n, args.dim, args.topics, seed=0)
        generate_s = round(time.perf_counter() - started, 1)
        marker.write_text(json.dumps(shape))
    if not (reuse and built.is_file() and (db / "db.json").is_file()):
        if db.exists():
            shutil.rmtree(db)
        build = _child("--build-child", str(layout), str(db), str(args.target_recall))
        build["generate_s"] = generate_s
        built.write_text(json.dumps(build))
    build = json.loads(built.read_text())
    tuning = build.get("index_tuning") or {}
    if args.target_recall and tuning.get("target_recall") != args.target_recall:
        build["retune"] = _child("--tune-child", str(db), str(args.target_recall))
        build["index_tuning"] = next(iter(build["retune"]["tuning"].values()))["images"]
    elif not args.target_recall and tuning:
        raise SystemExit("--target-recall 0 on a tuned database: rebuild without --reuse")
    return centers, build


def _warm(paths: list[Path]) -> None:
    """Read every file once: the page cache is then warm for exact search and index alike."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 * 2**20):
                pass


def _timed_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """The index's top ``k`` of the batch, queries per second batched and one by one."""
    t0 = time.perf_counter()
    _, found = index.search(queries, k)
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:
        index.search(q[None, :], k)
    single_s = time.perf_counter() - t0
    return found, len(queries) / batch_s, len(queries) / single_s


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    from mcu_sim.tools.image_db import read_manifest
    from mcu_sim.tools.index_tune import exact_top
    from mcu_sim.tools.retrieval import ImageDatabase

    db = work / "db"
    centers, build = _prepare(args, work)
    queries = clustered(np.random.default_rng(1), centers, args.queries, spread=1.0)
    entry = next(iter(read_manifest(db)["embeddings"].values()))
    shards = [Path(p) for p in entry["images"]]
    _warm([*shards, *db.glob("*.faiss")])
    t0 = time.perf_counter()
    truth = exact_top(shards, queries, args.k)
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries[:20]:
        exact_top(shards, q[None, :], args.k)
    exact_single_qps = 20 / (time.perf_counter() - t0)

    index = faiss.read_index(str(db / entry["image_index"]), faiss.IO_FLAG_MMAP)
    space = faiss.ParameterSpace()
    sweep = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        tuning = build.get("index_tuning") or {}
        values = {int(v) for v in args.sweep.split(",")} | {tuning.get("nprobe") or 1}
        autofaiss = (tuning.get("autofaiss_index_param") or "").removeprefix("nprobe=")
        values |= {int(autofaiss)} if autofaiss.isdigit() else set()
        for nprobe in sorted(v for v in values if v <= ivf.nlist):
            space.set_index_parameters(index, f"nprobe={nprobe}")
            found, batched, single = _timed_search(index, queries, args.k)
            sweep.append(
                {
                    "nprobe": nprobe,
                    "recall_at_10": round(recall(found, truth), 4),
                    "qps_batched": round(batched, 1),
                    "qps_single": round(single, 1),
                    "speedup_batched": round(batched * exact_s / len(queries), 2),
                }
            )
    if entry.get("index_param"):
        space.set_index_parameters(index, entry["index_param"])
    found, index_qps_batched, index_qps_single = _timed_search(index, queries, args.k)

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
    exact_qps = n_q / exact_s
    return {
        "vectors": args.n,
        "dim": args.dim,
        "queries": n_q,
        "index_key": entry["index_key"],
        "index_param": entry.get("index_param"),
        "index_tuning": build.get("index_tuning"),
        "generate_s": build.get("generate_s"),
        "build_s": build["seconds"],
        "build_peak_rss_mb": round(build["peak_rss_mb"], 1),
        "retune_s": build.get("retune", {}).get("seconds"),
        "vectors_on_disk_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
        "index_on_disk_mb": round(size / 2**20, 1),
        "exact_qps_batched": round(exact_qps, 1),
        "exact_qps_single": round(exact_single_qps, 2),
        "index_recall_at_10": round(recall(found, truth), 4),
        "index_qps_batched": round(index_qps_batched, 1),
        "index_qps_single": round(index_qps_single, 1),
        "shipped_recall_at_10": round(recall(np.array(database_hits), truth), 4),
        "shipped_qps_single": round(n_q / shipped_s, 1),
        "shipped_speedup_vs_exact": round(exact_s / shipped_s, 2),
        "index_speedup_vs_exact": round(index_qps_batched / exact_qps, 2),
        "sweep": sweep,
    }


def _table(result: dict[str, Any]) -> str:
    lines = [f"{key:28} {value}" for key, value in result.items() if key != "sweep"]
    if result["sweep"]:
        lines += ["", "nprobe  recall@10  qps batched  qps single  speed-up (batched)"]
        lines += [
            f"{row['nprobe']:6}  {row['recall_at_10']:9}  {row['qps_batched']:11}  "
            f"{row['qps_single']:10}  {row['speedup_batched']:6}x"
            for row in result["sweep"]
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
