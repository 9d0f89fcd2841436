"""Tuning an IVF index's nprobe for recall (tools/index_tune.py): real AutoFaiss builds over
30,000 clustered 32-d vectors in the clip-retrieval layout, checked against exact search on
queries the tuning never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcu_sim.tools.image_db import read_manifest
from mcu_sim.tools.index_tune import exact_top, recall_per_query, tune_nprobe, tuning_queries

pytestmark = pytest.mark.images

N, DIM, TOPICS, SHARD = 30_000, 32, 1_000, 10_000
KIND = "clip:synthetic"


class Topics:
    """Clustered unit vectors (a topic centre plus noise) and caption-like neighbours."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        centres = self.rng.standard_normal((TOPICS, DIM))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def images(self, n: int) -> np.ndarray:
        rows = self.centres[self.rng.integers(0, TOPICS, n)]
        return _unit(rows + self.rng.standard_normal((n, DIM)) / np.sqrt(DIM))

    def captions(self, images: np.ndarray) -> np.ndarray:
        return _unit(images + 0.5 * self.rng.standard_normal(images.shape) / np.sqrt(DIM))


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _layout(root: Path, images: np.ndarray, captions: np.ndarray | None) -> Path:
    for sub in ("img_emb", "metadata", *(("text_emb",) if captions is not None else ())):
        (root / sub).mkdir(parents=True)
    for shard, start in enumerate(range(0, len(images), SHARD)):
        rows = slice(start, start + SHARD)
        np.save(root / "img_emb" / f"img_emb_{shard}.npy", images[rows])
        if captions is not None:
            np.save(root / "text_emb" / f"text_emb_{shard}.npy", captions[rows])
        ids = range(start, min(start + SHARD, len(images)))
        meta = {"key": [str(i) for i in ids], "caption": [f"picture {i}" for i in ids]}
        pq.write_table(pa.table(meta), root / "metadata" / f"metadata_{shard}.parquet")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two databases over the same images: with captions (tuned for 0.95 at build time),
    and without (built with AutoFaiss's own choice), plus fresh queries from the same
    distribution."""
    pytest.importorskip("autofaiss")
    from mcu_sim.tools.index_embeddings import build_from_embeddings

    root = tmp_path_factory.mktemp("tune")
    topics = Topics()
    images = topics.images(N)
    captions = topics.captions(images)
    with_captions = _layout(root / "emb", images, captions)
    build_from_embeddings(with_captions, root / "db", model_name="synthetic", progress=False)
    bare = _layout(root / "bare-emb", images, None)
    build_from_embeddings(bare, root / "bare", model_name="synthetic", target_recall=None)
    fresh = topics.images(2_000)
    return {
        "db": root / "db",
        "bare": root / "bare",
        "images": images,
        "fresh_images": fresh,
        "fresh_captions": topics.captions(fresh),
        "shards": sorted((with_captions / "img_emb").glob("*.npy")),
        "caption_shards": sorted((with_captions / "text_emb").glob("*.npy")),
    }


def _index(db: Path, entry: dict, param: str | None = None):
    import faiss

    index = faiss.read_index(str(db / entry["image_index"]), faiss.IO_FLAG_MMAP)
    faiss.ParameterSpace().set_index_parameters(index, param or entry["index_param"])
    return index


def _no_text() -> dict:
    """A stand-in text encoder: these tests search by vector."""

    class NoText:
        def load(self) -> None:
            pass

    return {(KIND, None, "cpu"): NoText()}


def _recall_in_pool(index, images: np.ndarray, queries: np.ndarray) -> float:
    """Share of the exact top 10 found in the index's pool of 64 (what search rescores)."""
    truth = np.argsort(-(queries @ images.T), axis=1)[:, :10]
    _, found = index.search(queries, 64)
    return float(recall_per_query(found, truth).mean())


def test_tuned_nprobe_reaches_the_target_on_held_out_caption_queries(data: dict) -> None:
    from mcu_sim.tools.retrieval import ImageDatabase

    entry = read_manifest(data["db"])["embeddings"][KIND]
    tuning = entry["index_tuning"]
    nprobe, nlist = tuning["nprobe"], tuning["nlist"]
    assert entry["index_key"] == f"IVF{nlist},Flat" and 1 < nprobe < nlist
    assert tuning["query_source"] == "captions" and tuning["reached"]
    # the smallest that reaches the target: one list fewer fell short on the tuning queries
    assert tuning["curve"][str(nprobe)][1] >= 0.95 > tuning["curve"][str(nprobe - 1)][1]
    index = _index(data["db"], entry)
    held_out = _recall_in_pool(index, data["images"], data["fresh_captions"])
    assert held_out >= 0.95
    fewer = _index(data["db"], entry, f"nprobe={nprobe // 2}")
    assert _recall_in_pool(fewer, data["images"], data["fresh_captions"]) < 0.95

    # what users see: the shipped search's top 10, by image similarity, against exact
    db = ImageDatabase(data["db"], clip_model="synthetic", combine=False, encoders=_no_text())
    queries = data["fresh_captions"][:300]
    truth = np.argsort(-(queries @ data["images"].T), axis=1)[:, :10]
    found = np.array([[int(it.id) for it, _ in db.search_vector(q, k=10)] for q in queries])
    assert recall_per_query(found, truth).mean() >= 0.95


def test_a_higher_target_never_gives_a_smaller_nprobe(data: dict) -> None:
    entry = read_manifest(data["db"])["embeddings"][KIND]
    index = _index(data["db"], entry)
    chosen = []
    for target in (0.5, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0):
        tuning = tune_nprobe(
            index, data["shards"], target=target, captions=data["caption_shards"], n_queries=200
        )
        assert tuning is not None and tuning["recall_low"] >= target
        chosen.append(tuning["nprobe"])
    assert chosen == sorted(chosen) and chosen[0] < chosen[3] < chosen[-1]


def test_the_manifest_records_the_measurement_and_search_applies_it(data: dict) -> None:
    import faiss

    from mcu_sim.tools.retrieval import ImageDatabase

    entry = read_manifest(data["db"])["embeddings"][KIND]
    tuning = entry["index_tuning"]
    assert entry["index_param"] == tuning["index_param"] == f"nprobe={tuning['nprobe']}"
    assert (tuning["k"], tuning["pool"], tuning["queries"], tuning["target_recall"]) == (
        10,
        64,
        500,
        0.95,
    )
    assert tuning["recall"] >= tuning["recall_low"] >= 0.95
    assert tuning["autofaiss_index_param"].startswith("nprobe=")  # AutoFaiss's, kept
    captions = entry["caption_index_tuning"]  # the caption index: held-out captions
    assert captions["query_source"] == "held-out vectors" and captions["recall_low"] >= 0.95
    assert entry["caption_index_param"] == captions["index_param"]
    db = ImageDatabase(data["db"], clip_model="synthetic", encoders=_no_text())
    db.load()
    ivf = faiss.extract_index_ivf(db._embedding.image_index)
    assert ivf.nprobe == tuning["nprobe"]


def test_without_captions_and_retuned_from_the_command_line(data: dict) -> None:
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    entry = read_manifest(data["bare"])["embeddings"][KIND]
    autofaiss_param = entry["index_param"]  # built with no target: AutoFaiss's choice
    assert "index_tuning" not in entry and autofaiss_param.startswith("nprobe=")
    result = CliRunner().invoke(app, ["index", "tune", str(data["bare"]), "--target-recall", "0.9"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[KIND]["images"]["target_recall"] == 0.9
    entry = read_manifest(data["bare"])["embeddings"][KIND]
    tuning = entry["index_tuning"]
    assert tuning["query_source"] == "held-out vectors" and tuning["recall_low"] >= 0.9
    assert tuning["autofaiss_index_param"] == autofaiss_param != entry["index_param"]
    index = _index(data["bare"], entry)
    assert _recall_in_pool(index, data["images"], data["fresh_images"]) >= 0.9
    again = CliRunner().invoke(app, ["index", "tune", str(data["bare"]), "--target-recall", "0.99"])
    assert again.exit_code == 0, again.output
    higher = read_manifest(data["bare"])["embeddings"][KIND]["index_tuning"]
    assert higher["nprobe"] > tuning["nprobe"]
    assert higher["autofaiss_index_param"] == autofaiss_param  # re-tuning starts from it
    back = CliRunner().invoke(app, ["index", "tune", str(data["bare"]), "--target-recall", "0"])
    assert back.exit_code == 0, back.output
    entry = read_manifest(data["bare"])["embeddings"][KIND]  # AutoFaiss's choice again
    assert entry["index_param"] == autofaiss_param and "index_tuning" not in entry


def test_held_out_queries_never_find_themselves_and_captions_come_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal((50, 4)))
    base[7] = 0.0  # a row without vector is never a query
    np.save(tmp_path / "a.npy", base[:20])
    np.save(tmp_path / "b.npy", base[20:])
    shards = [tmp_path / "a.npy", tmp_path / "b.npy"]
    queries, own, source = tuning_queries(shards, None, n=49)
    assert source == "held-out vectors" and len(queries) == 49 and 7 not in own
    assert np.allclose(queries, base[own])
    top = exact_top(shards, queries, 5, own)
    assert not (top == own[:, None]).any()
    expected = np.argsort(-(queries @ base.T + np.where(np.eye(50)[own] > 0, -np.inf, 0)), 1)
    assert (top == expected[:, :5]).all()
    captions = _unit(rng.standard_normal((50, 4)))
    captions[:10] = 0.0  # uncaptioned images
    np.save(tmp_path / "c.npy", captions)
    queries, own, source = tuning_queries(shards, [tmp_path / "c.npy"], n=100)
    assert source == "captions" and own is None and len(queries) == 40


def test_an_exact_index_is_not_tuned(tmp_path: Path) -> None:
    import faiss

    vectors = _unit(np.random.default_rng(0).standard_normal((100, 8)))
    np.save(tmp_path / "v.npy", vectors)
    flat = faiss.IndexFlatIP(8)
    flat.add(vectors)
    assert tune_nprobe(flat, [tmp_path / "v.npy"]) is None


def test_building_an_index_leaves_the_callers_logging_alone(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """AutoFaiss configures logging when it starts (``dictConfig`` closes the handlers
    installed, ``basicConfig`` adds one to stderr where there was none) and draws progress
    bars; it runs in a child process, so the caller's logging is as it was and, without
    ``progress``, nothing is drawn."""
    import logging

    from mcu_sim.tools.index_build import autofaiss_index

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    root.handlers = []  # an application that logs nothing: AutoFaiss would add a handler
    try:
        shard = tmp_path / "img_emb_0.npy"
        np.save(shard, _unit(np.random.default_rng(0).standard_normal((500, 16))))
        infos = autofaiss_index(shard, tmp_path / "x.faiss", 500)
        assert infos["index_key"] == "Flat" and (tmp_path / "x.faiss").is_file()
        assert root.handlers == [] and root.level == saved[1]
    finally:
        root.handlers, _ = saved
    printed = capfd.readouterr()
    assert "it/s" not in printed.err and "%|" not in printed.err  # no tqdm bar
