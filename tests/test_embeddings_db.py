"""Image databases from precomputed embeddings (the clip-retrieval layout), and several
databases searched together with one z-scored ranking. Real files, real FAISS indexes, a tiny
random open_clip model for the text side."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mcu_sim.tools.base import sha256_file
from mcu_sim.tools.image_db import ShardedRows, read_manifest, write_manifest
from mcu_sim.tools.index_embeddings import read_layout
from mcu_sim.tools.retrieval import ImageDatabase
from mcu_sim.tools.retrieval_multi import DatabaseSet

DIM = 8


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mcu_sim.testing.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", embed_dim=DIM)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def write_layout(root: Path, shards: dict[int, tuple[np.ndarray, np.ndarray, list[dict]]]) -> Path:
    """Write img_emb/, text_emb/, metadata/ as clip-retrieval names them."""
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for number, (images, texts, meta) in shards.items():
        np.save(root / "img_emb" / f"img_emb_{number}.npy", images)
        np.save(root / "text_emb" / f"text_emb_{number}.npy", texts)
        pq.write_table(pa.Table.from_pylist(meta), root / "metadata" / f"metadata_{number}.parquet")
    return root


def test_layout_read_in_shard_order_and_searched(tmp_path: Path, tiny_clip: str) -> None:
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    rng = np.random.default_rng(1)
    picture = tmp_path / "local.png"
    Image.new("RGB", (16, 16), "red").save(picture)
    shards, keys = {}, []
    for number, size in ((10, 3), (2, 4), (0, 2)):  # img_emb_10 must come after img_emb_2
        images = _unit(rng.normal(size=(size, DIM)))
        texts = _unit(images + 0.3 * rng.normal(size=(size, DIM)))
        meta = [
            {"key": f"s{number}-{i}", "caption": f"photo {number} {i}", "url": f"http://x/{i}"}
            for i in range(size)
        ]
        if number == 2:
            meta[1]["image_path"] = str(picture)  # the others have no local file
        for row in meta:
            row.setdefault("image_path", None)
        shards[number] = (images, texts, meta)
    root = write_layout(tmp_path / "emb", shards)
    layout = read_layout(root)
    assert [p.name for p in layout.images] == ["img_emb_0.npy", "img_emb_2.npy", "img_emb_10.npy"]
    assert layout.rows == [2, 4, 3] and layout.dim == DIM and layout.n_rows == 9
    order = [0, 2, 10]
    vectors = np.concatenate([shards[n][0] for n in order])
    keys = [row["key"] for n in order for row in shards[n][2]]
    assert np.array_equal(ShardedRows(layout.images)[[8, 0, 3]], vectors[[8, 0, 3]])
    rows = [8, 0, 3, 3, 5, 1, 6]  # any order, repeats, rows of every shard
    assert np.array_equal(ShardedRows(layout.images)[rows], vectors[rows])
    assert np.array_equal(ShardedRows(layout.images)[4], vectors[4])
    with pytest.raises(IndexError):
        ShardedRows(layout.images)[[9]]

    out = tmp_path / "db"
    args = ["index", "build", "--embeddings", str(root), "--out", str(out), "--model", tiny_clip]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.npy"))  # the vectors stay where they were, not copied
    entry = read_manifest(out)["embeddings"][f"clip:{tiny_clip}"]
    assert entry["index_key"] == "Flat" and entry["stats"] is not None
    assert entry["images"] == [str(p.resolve()) for p in layout.images]

    db = ImageDatabase(out, clip_model=tiny_clip)
    assert db.available() == (True, "")
    for row, key in enumerate(keys):
        (item, scores), *_ = db.search_vector(vectors[row], k=3)
        assert item.id == key and scores["similarity"] == pytest.approx(1.0, abs=1e-5)
    item, scores = db.search_vector(vectors[keys.index("s2-1")], k=1)[0]
    assert item.caption == "photo 2 1" and item.extra["url"] == "http://x/1"
    copied = db.candidate(item, scores, tmp_path / "episode")
    assert sha256_file(copied.path) == sha256_file(picture) and copied.db_id == "s2-1"
    found = db.search_texts("photo of a beach", k=4)  # the text side: the tiny CLIP encoder
    assert len(found) == 4 and "combined" in found[0][1]
    bad = tmp_path / "bad"
    write_layout(bad, {0: (shards[0][0] * 3, shards[0][1], shards[0][2])})
    assert "not L2-normalised" in CliRunner().invoke(
        app, [*args[:3], str(bad), "--out", str(tmp_path / "db2"), "--model", tiny_clip]
    ).output.replace("\n", "")


def _at_cosine(cosines: list[float]) -> np.ndarray:
    """Unit vectors whose cosine with e0 is each given value (each off in its own axis)."""
    rows = np.zeros((len(cosines), DIM), dtype=np.float32)
    for i, c in enumerate(cosines):
        rows[i, 0], rows[i, 1 + i] = c, math.sqrt(1 - c * c)
    return rows


def _database(root: Path, name: str, cosines: list[float], mean: float, tiny_clip: str) -> Path:
    from mcu_sim.tools.index_embeddings import build_from_embeddings

    images = _at_cosine(cosines)
    meta = [{"key": f"{name}{i + 1}", "caption": f"{name} {i + 1}", "url": None} for i in range(3)]
    layout = write_layout(root / f"{name}-emb", {0: (images, images, meta)})
    out = root / name
    build_from_embeddings(layout, out, model_name=tiny_clip, progress=False)
    manifest = read_manifest(out)
    # hand-set statistics; alpha = 1 makes the ranking score z(image similarity) alone
    manifest["embeddings"][f"clip:{tiny_clip}"]["stats"] = {
        "image_mean": mean,
        "image_std": 0.1,
        "caption_mean": 0.0,
        "caption_std": 1.0,
        "alpha": 1.0,
    }
    write_manifest(out, manifest)
    return out


def test_two_databases_rank_together_by_z_score(tmp_path: Path, tiny_clip: str) -> None:
    # A's images are close to the query, but so is everything in A (mean 0.7);
    # B's are further, yet far above B's own mean (0.2).
    a = _database(tmp_path, "a", [0.9, 0.8, 0.3], mean=0.7, tiny_clip=tiny_clip)
    b = _database(tmp_path, "b", [0.45, 0.35, 0.1], mean=0.2, tiny_clip=tiny_clip)
    both = DatabaseSet([a, b], clip_model=tiny_clip)
    assert both.available()[0]
    query = np.eye(DIM, dtype=np.float32)[0]
    hits = both.search_vector(query, k=4)
    # z: a1 (0.9-0.7)/0.1 = 2.0, a2 1.0, b1 (0.45-0.2)/0.1 = 2.5, b2 1.5
    assert [item.id for item, _ in hits] == ["b1", "a1", "b2", "a2"]
    assert [s["rank_score"] for _, s in hits] == pytest.approx([2.5, 2.0, 1.5, 1.0], abs=1e-4)
    assert [s["database"] for _, s in hits] == ["b", "a", "b", "a"]
    raw = sorted(hits, key=lambda hit: -hit[1]["similarity"])
    assert [item.id for item, _ in raw] == ["a1", "a2", "b1", "b2"]  # raw cosines would differ


def test_config_databases_open_a_database_set(tmp_path: Path, tiny_clip: str) -> None:
    from mcu_sim.config_images import ImagesConfig
    from mcu_sim.tools.toolbox import ImageToolbox

    a = _database(tmp_path, "a", [0.9, 0.8, 0.3], mean=0.7, tiny_clip=tiny_clip)
    b = _database(tmp_path, "b", [0.45, 0.35, 0.1], mean=0.2, tiny_clip=tiny_clip)
    settings = ImagesConfig.model_validate(
        {"retrieval": {"databases": [str(a), str(b)], "clip_model": tiny_clip}}
    )
    tool = ImageToolbox(settings).tool("retrieval")
    assert isinstance(tool, DatabaseSet)
    assert [db.db_dir for db in tool.databases] == [a, b]
    assert tool.embedding_kind == f"clip:{tiny_clip}"


def test_the_caption_mask_agrees_with_the_items_captions(tmp_path: Path) -> None:
    """A search asks which of its candidates have a caption from a mask worked out once per
    database: Arrow over the metadata column for embeddings, the items otherwise; it says
    what each :class:`DbItem` would say (missing, empty and blank captions have none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mcu_sim.tools.index_embeddings import ParquetItems
    from mcu_sim.tools.retrieval import caption_mask

    captions = ["a dog", None, "", "   ", " a cat ", "7", "x"]
    first, second = tmp_path / "m0.parquet", tmp_path / "m1.parquet"
    pq.write_table(pa.table({"caption": captions[:4]}), first)
    pq.write_table(pa.table({"caption": captions[4:]}), second)
    items = ParquetItems([first, second])
    expected = [bool(items[row].caption) for row in range(len(items))]
    assert expected == [True, False, False, False, True, True, True]
    assert caption_mask(items).tolist() == expected
    assert caption_mask(list(items)).tolist() == expected  # a database of image files
