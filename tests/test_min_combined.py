"""DialogCC's threshold on the combined score (§3.3: images below 2.702 are discarded),
``images.retrieval.min_combined``: a tiny CLIP database whose vectors sit at chosen cosines
to the encoded description, with hand-set z-score statistics, so every candidate's combined
score (and so its pass or fail) is worked out by hand; then ``mcu augment --mode dialogcc``
over the real-HTTP fake server on that database, where a moment whose every candidate is
below the threshold ends unaligned with the reason kept."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.config_augment import DIALOGCC_MIN_COMBINED
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.augment import augment_config
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.testing.scripted import scripted_object
from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.image_db import read_manifest, write_manifest
from mcu_sim.tools.retrieval import ImageDatabase

pytestmark = pytest.mark.images
DIM = 8
DESCRIPTION = "a photo of a beagle asleep on a sofa"
# hand-set statistics: z(image) = (s_img - 0.2) / 0.2, z(caption) = (s_cap - 0.5) / 0.1
STATS = {"image_mean": 0.2, "image_std": 0.2, "caption_mean": 0.5, "caption_std": 0.1}
# (id, description-image cosine, description-caption cosine) and the combined score
# S = 0.5 z(image) + 0.5 z(caption), by hand:
#   pass: z = (0.7-0.2)/0.2 = 2.5, (0.8-0.5)/0.1 = 3.0 -> S = 2.75  >= 2.702
#   near: z = (0.6-0.2)/0.2 = 2.0, (0.84-0.5)/0.1 = 3.4 -> S = 2.70  <  2.702 (just)
#   low:  z = (0.3-0.2)/0.2 = 0.5, (0.9-0.5)/0.1 = 4.0 -> S = 2.25  <  2.702
ITEMS = {"pass": (0.7, 0.8, 2.75), "near": (0.6, 0.84, 2.70), "low": (0.3, 0.9, 2.25)}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("open_clip")
    pytest.importorskip("faiss")
    from mcu_sim.testing.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", embed_dim=DIM)


def _query(tiny_clip: str) -> np.ndarray:
    from mcu_sim.tools.embedders import ClipEmbedder

    encoder = ClipEmbedder(tiny_clip, None, "cpu")
    encoder.load()
    vector = np.asarray(encoder.embed_texts([DESCRIPTION])[0], dtype=np.float64)
    return vector / np.linalg.norm(vector)


def _database(root: Path, tiny_clip: str, names: list[str]) -> Path:
    """A clip-retrieval folder whose image and caption vectors have the ``ITEMS`` cosines
    with the description's embedding (each off along its own orthogonal axis), indexed."""
    from mcu_sim.tools.index_embeddings import build_from_embeddings

    q = _query(tiny_clip)
    basis, _ = np.linalg.qr(np.column_stack([q, np.eye(DIM)[:, : DIM - 1]]))
    axes = basis[:, 1:].T  # orthonormal, all orthogonal to q
    images, captions, meta = [], [], []
    for i, name in enumerate(names):
        image_cos, caption_cos, _ = ITEMS[name]
        images.append(image_cos * q + math.sqrt(1 - image_cos**2) * axes[2 * i])
        captions.append(caption_cos * q + math.sqrt(1 - caption_cos**2) * axes[2 * i + 1])
        picture = root / f"{name}.png"
        Image.new("RGB", (16, 16), (40 * i, 90, 160)).save(picture)
        meta.append({"key": name, "caption": f"{name} caption", "url": None})
        meta[-1]["image_path"] = str(picture)
    layout = root / "emb"
    for sub in ("img_emb", "text_emb", "metadata"):
        (layout / sub).mkdir(parents=True)
    np.save(layout / "img_emb" / "img_emb_0.npy", np.array(images, dtype=np.float32))
    np.save(layout / "text_emb" / "text_emb_0.npy", np.array(captions, dtype=np.float32))
    pq.write_table(pa.Table.from_pylist(meta), layout / "metadata" / "metadata_0.parquet")
    out = root / "db"
    build_from_embeddings(layout, out, model_name=tiny_clip, progress=False)
    manifest = read_manifest(out)
    manifest["embeddings"][f"clip:{tiny_clip}"]["stats"] = {**STATS, "alpha": 0.5}
    write_manifest(out, manifest)
    return out


def test_dialogcc_mode_sets_the_papers_threshold_unless_one_is_set() -> None:
    assert DIALOGCC_MIN_COMBINED == 2.702
    assert load_config(None, []).images.retrieval.min_combined is None  # off by default
    dialogcc = augment_config(load_config(None, []), "dialogcc")
    assert dialogcc.images.retrieval.min_combined == 2.702
    assert augment_config(load_config(None, []), "magid").images.retrieval.min_combined is None
    own = augment_config(load_config(None, ["images.retrieval.min_combined=1.5"]), "dialogcc")
    assert own.images.retrieval.min_combined == 1.5
    off = augment_config(load_config(None, ["augment.dialogcc.min_combined=null"]), "dialogcc")
    assert off.images.retrieval.min_combined is None
    with pytest.raises(Exception, match="min_combined"):
        load_config(None, ["images.retrieval.min_combined=50"])  # bounded


def test_candidates_below_the_threshold_are_left_out(tiny_clip: str, tmp_path: Path) -> None:
    db_dir = _database(tmp_path, tiny_clip, ["pass", "near", "low"])
    everything = ImageDatabase(db_dir, clip_model=tiny_clip).search_texts(DESCRIPTION, k=3)
    # the scores are the hand-computed ones, so the pass/fail below is the hand's
    assert {i.id: s["combined"] for i, s in everything} == pytest.approx(
        {name: ITEMS[name][2] for name in ITEMS}, abs=1e-4
    )
    db = ImageDatabase(db_dir, clip_model=tiny_clip, min_combined=DIALOGCC_MIN_COMBINED)
    dropped: list[dict[str, Any]] = []
    kept = db.search_texts(DESCRIPTION, k=3, dropped=dropped)
    assert [item.id for item, _ in kept] == ["pass"]
    assert sorted(d["db_id"] for d in dropped) == ["low", "near"]
    found = db.search_sync(DESCRIPTION, k=3, out_dir=tmp_path / "episode")
    assert [c.db_id for c in found] == ["pass"] and found[0].path.is_file()


def test_nothing_above_the_threshold_says_why(tiny_clip: str, tmp_path: Path) -> None:
    db_dir = _database(tmp_path, tiny_clip, ["near", "low"])
    db = ImageDatabase(db_dir, clip_model=tiny_clip, min_combined=DIALOGCC_MIN_COMBINED)
    with pytest.raises(ToolUnavailable) as raised:
        db.search_sync(DESCRIPTION, k=3)
    assert "min_combined=2.702" in raised.value.reason
    assert "best 2.700, near, of 2" in raised.value.reason
    # a lower threshold lets the near one through
    assert [c.db_id for c in ImageDatabase(db_dir, clip_model=tiny_clip, min_combined=2.6)
            .search_sync(DESCRIPTION, k=3)] == ["near"]  # fmt: skip


def _fixed_descriptions(body: dict[str, Any]) -> str:
    """The scripted model, with every scanner description the one the database was built
    around (the scripted scanner otherwise makes up a phrase)."""
    answer = scripted_object(body)
    for pick in answer.get("moments", []):
        pick["description"] = DESCRIPTION
    return json.dumps(answer)


@pytest.mark.parametrize(("names", "aligned"), [(["pass", "low"], True), (["low"], False)])
def test_augment_dialogcc_aligns_only_above_the_threshold(
    fake_openai: FakeOpenAIServer, tiny_clip: str, tmp_path: Path, names: list[str], aligned: bool
) -> None:
    fake_openai.handler = _fixed_descriptions
    db_dir = _database(tmp_path, tiny_clip, names)
    dialogue = {
        "id": "d1",
        "sessions": [{"turns": [{"speaker": "A", "text": "Look, he fell asleep."}]}],
    }
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps(dialogue) + "\n")
    options = [
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={fake_openai.url}",
        "llm.provider.model=fake-model",
        f"llm.cache.path={tmp_path / 'cache.sqlite'}",
        f"images.retrieval.database={db_dir}",
        f"images.retrieval.clip_model={tiny_clip}",
        "images.qa.scorers=[]",
        "images.qa.clip_threshold=-1",
    ]
    run = tmp_path / "run"
    args = ["augment", str(corpus), "--mode", "dialogcc", "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(app, [*args, *[x for o in options for x in ("--set", o)]])
    assert result.exit_code == 0, result.output
    rundir = RunDir(run)
    (episode,) = [Episode.model_validate(rundir.read_episode(i)) for i in rundir.finished_ids()]
    (request,) = episode.image_requests
    if aligned:
        assert request.status == "aligned" and request.image.db_id == "pass"
        assert request.image.scores["combined"] == pytest.approx(2.75, abs=1e-4)
    else:  # not aligned, and the reason says which threshold and what missed it
        assert request.status == "unaligned"
        assert "min_combined=2.702" in request.reason and "best 2.250, low" in request.reason
