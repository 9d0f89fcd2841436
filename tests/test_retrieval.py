"""Image database: DialogCC scoring on known vectors, a real AutoFaiss index over a tiny random
open_clip model, and the shipped database answering offline through MiniLM caption search."""

from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mcu_sim.tools.base import ToolUnavailable, image_record, sha256_file
from mcu_sim.tools.image_db import (
    ZStats,
    dialogcc_score,
    mean_std,
    read_manifest,
    similarity_stats,
)
from mcu_sim.tools.retrieval import ImageDatabase, build_index, default_database_dir

# -- DialogCC arithmetic (pure numpy) --------------------------------------------------------


def test_dialogcc_score_on_known_vectors() -> None:
    description = np.array([1.0, 0.0, 0.0])
    image = np.array([0.6, 0.8, 0.0])  # cosine 0.6 with the description
    caption = np.array([0.8, 0.0, 0.6])  # cosine 0.8
    stats = ZStats(image_mean=0.2, image_std=0.2, caption_mean=0.5, caption_std=0.1)
    s_img, s_cap = float(description @ image), float(description @ caption)
    # z(image) = (0.6 - 0.2) / 0.2 = 2, z(caption) = (0.8 - 0.5) / 0.1 = 3
    assert dialogcc_score(s_img, s_cap, stats) == pytest.approx(2.5)
    assert dialogcc_score(s_img, s_cap, stats, alpha=1.0) == pytest.approx(2.0)
    assert dialogcc_score(s_img, s_cap, stats, alpha=0.0) == pytest.approx(3.0)
    both = dialogcc_score(np.array([0.6, 0.2]), np.array([np.nan, 0.4]), stats)
    assert both.tolist() == pytest.approx([2.0, 0.5 * 0.0 + 0.5 * -1.0])  # NaN: image z alone
    with pytest.raises(ValueError, match="alpha"):
        dialogcc_score(0.1, 0.1, stats, alpha=1.5)


def test_similarity_stats_leave_out_matching_pairs() -> None:
    images = np.eye(3, dtype=np.float32)
    captions = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    stats = similarity_stats(images, captions, np.array([True, True, True]), alpha=0.5)
    assert stats is not None
    # caption i vs image j (i != j): 0,0, .6,0, 0,0 ; caption vs caption: .6,0, .6,0, 0,0
    assert (stats.image_mean, stats.image_std) == pytest.approx(
        mean_std(np.array([0, 0, 0.6, 0, 0, 0]))
    )
    assert stats.caption_mean == pytest.approx(0.2)
    assert stats.pairs == 6
    assert similarity_stats(images, captions, np.array([True, False, False])) is None


def test_importing_the_tools_loads_no_heavy_library() -> None:
    code = (
        "import sys, mcu_sim.tools.retrieval, mcu_sim.tools.web_search, mcu_sim.tools.embedders;"
        "print(sorted(m for m in ('torch', 'faiss', 'open_clip', 'transformers', 'autofaiss')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_database_is_unavailable_with_a_hint(tmp_path: Path) -> None:
    db = ImageDatabase(tmp_path / "nowhere")
    ok, why = db.available()
    assert not ok and "mcu index build" in why
    assert db.embedding_kind is None


# -- a real index over a tiny random open_clip model ------------------------------------------

SHAPES = ["red square", "green circle", "blue triangle", "yellow stripes", "white cross"]


def _draw(name: str, size: int = 48) -> Image.Image:
    colour, shape = name.split()
    img = Image.new("RGB", (size, size), "black")
    pen = ImageDraw.Draw(img)
    box = (8, 8, size - 8, size - 8)
    if shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(size // 2, 6), (6, size - 6), (size - 6, size - 6)], fill=colour)
    elif shape == "stripes":
        for x in range(0, size, 8):
            pen.rectangle((x, 0, x + 3, size), fill=colour)
    else:
        pen.rectangle((size // 2 - 4, 4, size // 2 + 4, size - 4), fill=colour)
        pen.rectangle((4, size // 2 - 4, size - 4, size // 2 + 4), fill=colour)
    return img


@pytest.fixture(scope="module")
def clip_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from mcu_sim.testing.tiny_clip import save_tiny_clip

    root = tmp_path_factory.mktemp("clipdb")
    model_name = save_tiny_clip(root / "tiny_clip")
    images = root / "images"
    images.mkdir()
    for i, name in enumerate(SHAPES):
        _draw(name).save(images / f"shape{i}.png")
        if i < 4:  # the last one has no caption
            (images / f"shape{i}.txt").write_text(f"a {name} on black")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    info = build_index(
        images,
        None,
        root / "db",
        model_name=model_name,
        pretrained=None,
        batch_size=2,
        device="cpu",
        progress=False,
    )
    assert info.n_items == 6 and info.n_captions == 4
    assert info.index_key == "Flat" and info.dim == 32
    assert info.embeddings == sorted([f"clip:{model_name}", "minilm"])
    assert [s[0] for s in info.skipped] == ["broken"]
    assert info.stats is not None and info.stats["alpha"] == 0.5
    return root / "db", model_name


@pytest.mark.images
def test_index_returns_the_image_whose_embedding_is_queried(clip_db: tuple[Path, str]) -> None:
    db_dir, model_name = clip_db
    manifest = read_manifest(db_dir)
    entry = manifest["embeddings"][f"clip:{model_name}"]
    assert (db_dir / entry["image_index"]).is_file() and entry["stats"]["pairs"] == 12
    vectors = np.load(db_dir / entry["images"])
    db = ImageDatabase(db_dir, clip_model=model_name, combine=False)
    assert db.embedding_kind == f"clip:{model_name}"
    ids = [json.loads(line)["id"] for line in (db_dir / "items.jsonl").read_text().splitlines()]
    for row, item_id in enumerate(ids):
        if item_id == "broken":
            continue
        (top, scores), *_ = db.search_vector(vectors[row], k=3)
        assert top.id == item_id
        assert scores["similarity"] == pytest.approx(1.0, abs=1e-5)
    found = [item.id for item, _ in db.search_vector(vectors[ids.index("shape0")], k=10)]
    assert "broken" not in found and len(found) == 5
    with pytest.raises(ValueError, match="zero"):
        db.search_vector(np.zeros(32), k=1)


@pytest.mark.images
async def test_text_search_copies_images_and_reports_combined_scores(
    clip_db: tuple[Path, str], tmp_path: Path
) -> None:
    db_dir, model_name = clip_db
    db = ImageDatabase(db_dir, clip_model=model_name)
    ok, why = db.available()
    assert ok, why
    found = await db.search("a red square on black", 3, tmp_path / "episode")
    assert len(found) == 3
    stats = ZStats.from_dict(read_manifest(db_dir)["embeddings"][f"clip:{model_name}"]["stats"])
    combined = []
    for candidate in found:
        assert candidate.module == "retrieval"
        assert candidate.path.parent == tmp_path / "episode"
        assert candidate.scores["embedding"] == f"clip:{model_name}"
        original = db_dir.parent / "images" / f"{candidate.db_id}.png"
        assert sha256_file(candidate.path) == sha256_file(original)
        caption_sim = candidate.scores.get("caption_similarity", np.nan)
        expected = dialogcc_score(candidate.scores["similarity"], caption_sim, stats)
        assert candidate.scores["combined"] == pytest.approx(float(expected))
        combined.append(candidate.scores["combined"])
    assert combined == sorted(combined, reverse=True)
    record = image_record(found[0], relative_to=tmp_path)
    assert record["module"] == "retrieval" and record["db_id"] == found[0].db_id
    assert (record["width"], record["height"]) == (48, 48)


@pytest.mark.images
def test_mcu_index_build_command(clip_db: tuple[Path, str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    _, model_name = clip_db
    images = _pics(tmp_path / "pics")
    args = ["index", "build", "--images", str(images), "--out", str(tmp_path / "db")]
    result = CliRunner().invoke(app, [*args, "--model", model_name, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "db")
    entry = manifest["embeddings"][f"clip:{model_name}"]
    assert entry["index_key"] == "Flat" and (tmp_path / "db" / entry["image_index"]).is_file()
    assert entry["random_weights"] is False  # a local-dir: model carries its own weights
    vectors = np.load(tmp_path / "db" / entry["images"])
    db = ImageDatabase(tmp_path / "db", clip_model=model_name)
    assert db.search_vector(vectors[1], k=1)[0][0].id == "green_circle"


def _pics(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    for name in SHAPES[:count]:
        _draw(name).save(folder / f"{name.replace(' ', '_')}.png")
    return folder


def test_a_bare_model_name_without_weights_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    images = _pics(tmp_path / "pics")
    args = ["index", "build", "--images", str(images), "--out", str(tmp_path / "db")]
    result = CliRunner().invoke(app, args)  # the default model, ViT-L-14-336, no --pretrained
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "open_clip 'ViT-L-14-336' needs weights: pass --pretrained" in message
    assert "--random-weights" in message
    assert not (tmp_path / "db").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="needs weights"):
        build_index(images, None, tmp_path / "db2", model_name="ViT-B-32", progress=False)


@pytest.mark.images
def test_random_weights_only_on_request_and_recorded(tmp_path: Path) -> None:
    """A bare name registered with open_clip (a tiny config): random weights need the flag,
    and the database says it was built with them."""
    import open_clip

    from mcu_sim.testing.tiny_clip import TINY_CLIP_CONFIG
    from mcu_sim.tools.index_build import check_clip_weights

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "TinyTestCLIP.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / "configs")
    images = _pics(tmp_path / "pics")
    with pytest.raises(ValueError, match="'TinyTestCLIP' needs weights"):
        build_index(images, None, tmp_path / "db", model_name="TinyTestCLIP", progress=False)
    info = build_index(
        images, None, tmp_path / "db", model_name="TinyTestCLIP", random_weights=True,
        minilm=False, progress=False,
    )  # fmt: skip
    entry = read_manifest(tmp_path / "db")["embeddings"]["clip:TinyTestCLIP"]
    assert info.dim == TINY_CLIP_CONFIG["embed_dim"] and entry["random_weights"] is True
    check_clip_weights("TinyTestCLIP", "weights.safetensors", random_weights=False)  # fine
    check_clip_weights("local-dir:/models/clip", None, random_weights=False)  # carries its own


@pytest.mark.images
def test_unknown_clip_model_falls_back_to_captions(clip_db: tuple[Path, str]) -> None:
    db = ImageDatabase(clip_db[0], clip_model="ViT-L-14-336")
    assert db.embedding_kind == "minilm"
    assert db.fallback_reason is not None and "ViT-L-14-336" in db.fallback_reason


@pytest.mark.images
def test_missing_clip_weights_file_is_reported(clip_db: tuple[Path, str], tmp_path: Path) -> None:
    db_dir, model_name = clip_db
    weights = tmp_path / "no" / "weights.safetensors"
    db = ImageDatabase(db_dir, clip_model=model_name, clip_pretrained=str(weights))
    ok, why = db.available()
    assert not ok and str(weights) in why


def test_out_folder_must_be_new_or_a_database(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _draw("red square").save(tmp_path / "images" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_index(tmp_path / "images", None, tmp_path / "out", model_name=None, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        build_index(None, None, tmp_path / "x", model_name=None, progress=False)


@pytest.mark.images
def test_caption_only_build_excludes_unreadable_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _draw("red square").save(folder / "square.png")
    (folder / "square.txt").write_text("a red square")
    (folder / "fake.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "fake.txt").write_text("a red square drawn in html")
    info = build_index(folder, None, folder, model_name=None, progress=False)
    assert [s[0] for s in info.skipped] == ["fake"]
    found = ImageDatabase(folder).search_sync("a red square", k=5)
    assert [c.db_id for c in found] == ["square"]


# -- the shipped database, MiniLM caption search -----------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> ImageDatabase:
    db = ImageDatabase(default_database_dir())
    db.load()
    return db


@pytest.mark.images
@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("A photo of my cat lying on the sofa", "cat"),
        ("my morning espresso at the cafe", "coffee"),
        ("we watched the rocket launch last night", "rocket_launch_pad"),
        ("stars and galaxies far away in the night sky", "deep_space"),
    ],
)
async def test_shipped_database_answers_offline(
    shipped: ImageDatabase, description: str, expected: str, tmp_path: Path
) -> None:
    assert shipped.embedding_kind == "minilm"
    assert shipped.available() == (True, "")
    found = await shipped.search(description, 2, tmp_path)
    assert found[0].db_id == expected
    assert found[0].scores["embedding"] == "minilm"
    assert found[0].scores["similarity"] > found[1].scores["similarity"]
    assert found[0].caption and found[0].path.name == f"db_{expected}.jpg"
    assert sha256_file(found[0].path) == sha256_file(default_database_dir() / f"{expected}.jpg")


def test_shipped_database_is_small_and_licensed() -> None:
    folder = default_database_dir()
    manifest = read_manifest(folder)
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    assert manifest["n_items"] == len(items) >= 10
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3_000_000
    for item in items:
        assert item["caption"] and item["license"] in ("CC0", "CC0 1.0", "Public domain")
        with Image.open(folder / item["path"]) as img:
            assert max(img.size) <= 512
    licence = (folder / "LICENSE.md").read_text()
    assert all(item["id"] in licence for item in items)


@pytest.mark.images
def test_caption_only_database_from_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, name in enumerate(["red square", "green circle", "blue triangle"]):
        buffer = BytesIO()
        _draw(name).save(buffer, format="PNG")
        rows.append({"key": f"k{i}", "jpg": buffer.getvalue(), "caption": f"a {name}"})
    rows.append({"key": "bad", "jpg": b"garbage", "caption": "nothing"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shapes.parquet")
    info = build_index(
        None, tmp_path / "shapes.parquet", tmp_path / "db", model_name=None, progress=False
    )
    assert (info.n_items, info.embeddings) == (3, ["minilm"])
    assert sorted(p.name for p in (tmp_path / "db" / "images").iterdir()) == [
        "k0.png",
        "k1.png",
        "k2.png",
    ]
    db = ImageDatabase(tmp_path / "db", min_similarity=0.3)
    found = db.search_sync("a green circle", k=3)
    assert found[0].db_id == "k1" and found[0].path == tmp_path / "db" / "images" / "k1.png"
    assert all(c.scores["similarity"] >= 0.3 for c in found)
    with pytest.raises(ValueError, match="empty description"):
        db.search_sync("  ", k=1)


@pytest.mark.images
def test_clip_without_open_clip_weights_path_is_unavailable(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    from mcu_sim.tools.embedders import ClipEmbedder

    embedder = ClipEmbedder("ViT-B-32", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ToolUnavailable, match="cannot load open_clip"):
        embedder.load()
