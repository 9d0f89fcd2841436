"""``--format hf`` as Hugging Face users expect it: ``load_dataset`` on the export of a
generated run (real PNG images from every module) gives typed nested rows, not JSON text,
and images that open as PIL, wherever the folder is moved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.dataset import hf_features
from mcu_sim.dataset.export import export_run
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.sample import build_sample_run, edit_episode, write_png


@pytest.fixture
def run_dir(fake_openai: FakeOpenAIServer, tmp_path: Path) -> Path:
    """ep-00000011 with a face and images from retrieval, web search and personalized
    text-to-image; ep-00000012 filtered as a whole."""
    root = tmp_path / "run"
    build_sample_run(root, fake_openai, sessions=2)

    def own_image(data: dict[str, Any]) -> None:
        fields = write_png(root / "images/ep-00000011/pt2i.png", (40, 40), (200, 10, 10))
        image = {"path": "images/ep-00000011/pt2i.png", "module": "personalized_t2i", **fields}
        target = next(r for r in data["image_requests"] if r["status"] != "aligned")
        target.update(status="aligned", reason=None, module="personalized_t2i", image=image)

    edit_episode(root, "ep-00000011", own_image)
    return root


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))

    def load(folder: Path) -> Any:
        cache = tmp_path / f"cache-{folder.name}"
        return datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))

    return load


def assert_same(got: Any, want: Any, where: str, folder: Path) -> int:
    """``got`` (a loaded row's value) holds ``want`` (the episode's, as pydantic dumps it):
    structs are dicts and lists are lists; only free-keyed mappings and mixed-kind values
    are JSON text. Every image record's ``image`` is a PIL image of its file. Returns the
    images checked."""
    from PIL import Image

    if want is None:
        assert got is None, where
        return 0
    if isinstance(want, dict) and isinstance(got, str):  # a free-keyed mapping
        assert json.loads(got) == json.loads(json.dumps(want, default=str)), where
        return 0
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__}, not a struct"
        opened = 0
        if "sha256" in want:  # an image record: its picture is embedded
            picture = got["image"]
            assert isinstance(picture, Image.Image), where
            assert picture.size == (want["width"], want["height"]), where
            with Image.open(folder / want["path"]) as original:
                assert picture.tobytes() == original.convert(picture.mode).tobytes(), where
            opened = 1
        assert set(got) - set(want) <= {"image"}, where
        for key, value in want.items():
            opened += assert_same(got[key], value, f"{where}.{key}", folder)
        return opened
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        return sum(
            assert_same(g, w, f"{where}[{n}]", folder)
            for n, (g, w) in enumerate(zip(got, want, strict=True))
        )
    if isinstance(got, str) and not isinstance(want, str):  # a union of kinds, as text
        assert json.loads(got) == want, where
        return 0
    assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"
    return 0


def test_load_dataset_gives_typed_rows_and_pil_images(run_dir: Path, tmp_path: Path, load: Any):
    folder = export_run(run_dir, "hf", tmp_path / "hf", include_filtered=True, keep_marked=True)
    loaded = load(folder)
    rows = {row["episode_id"]: row for row in loaded}
    assert sorted(rows) == ["ep-00000011", "ep-00000012"]
    run = RunDir(run_dir)
    opened = 0
    for episode_id, row in rows.items():
        episode = Episode.model_validate(run.read_episode(episode_id))
        for name, value in episode.model_dump(mode="python").items():
            opened += assert_same(row[name], value, f"{episode_id}.{name}", folder)
    # the face, the aligned images of every module and the alternatives all opened
    modules = {r["image"]["module"] for r in rows["ep-00000011"]["image_requests"] if r["image"]}
    assert {"retrieval", "web_search", "personalized_t2i"} <= modules
    assert opened >= 6
    session = rows["ep-00000011"]["sessions"][0]
    assert isinstance(session, dict) and isinstance(session["turns"], list)
    assert isinstance(rows["ep-00000011"]["demographics"], dict)

    # filter on nested fields, as a user would
    own = loaded.filter(
        lambda row: any(
            r["image"] is not None and r["image"]["module"] == "personalized_t2i"
            for r in row["image_requests"]
        )
    )
    assert own["episode_id"] == ["ep-00000011"]
    late = loaded.filter(lambda row: row["sessions"][-1]["date"] > row["sessions"][0]["date"])
    assert late.num_rows == 2


def test_features_come_from_the_schema(run_dir: Path, tmp_path: Path) -> None:
    import datasets
    import pyarrow.parquet as pq

    folder = export_run(run_dir, "hf", tmp_path / "hf")
    (data,) = (folder / "data").iterdir()
    features = datasets.Features.from_arrow_schema(pq.read_schema(data))
    assert set(Episode.model_fields) <= set(features)
    image_record = features["image_requests"].feature["image"]
    assert isinstance(image_record["image"], datasets.Image)
    assert set(image_record) == {*hf_features.ImageRecord.model_fields, "image"}
    assert features["sessions"].feature["date"] == datasets.Value("date32")
    assert features["sessions"].feature["turns"].feature["sharing"]["keywords"] == (
        datasets.List(datasets.Value("string"))
    )
    assert features["seeds"] == datasets.Value("string")  # a free-keyed mapping: JSON text


def test_a_field_added_to_the_schema_becomes_a_typed_feature() -> None:
    import datetime as dt

    import datasets
    from pydantic import BaseModel, Field

    from mcu_sim.personas.schema import ImageRecord, Session

    class Moment(BaseModel):
        when: dt.date
        score: float | None = None
        photo: ImageRecord | None = None

    class Later(Episode):
        moments: list[Moment] = Field(default_factory=list)
        kind: str | None = None
        tag: int | str = 0
        notes: dict[str, int] = Field(default_factory=dict)
        extra_sessions: list[Session] = Field(default_factory=list)

    features = hf_features.model_features(Later)
    assert features["moments"] == datasets.List(
        {
            "when": datasets.Value("date32"),
            "score": datasets.Value("float64"),
            "photo": hf_features.model_features(Later)["face"]["image"],
        }
    )
    assert isinstance(features["moments"].feature["photo"]["image"], datasets.Image)
    assert features["kind"] == datasets.Value("string")
    assert features["tag"] == features["notes"] == datasets.Value("string")  # JSON text
    assert features["extra_sessions"] == features["sessions"]


def test_images_open_after_the_folder_moves_and_shards_split_by_size(
    run_dir: Path, tmp_path: Path, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_features, "SHARD_BYTES", 1)  # every episode fills a shard
    folder = export_run(run_dir, "hf", tmp_path / "hf", include_filtered=True, keep_marked=True)
    shards = sorted(p.name for p in (folder / "data").iterdir())
    assert shards == [f"train-0000{n}-of-00002.parquet" for n in (0, 1)]
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    shutil.rmtree(run_dir / "images")  # nothing left to open by path
    loaded = load(moved)
    assert sorted(loaded["episode_id"]) == ["ep-00000011", "ep-00000012"]
    row = next(r for r in loaded if r["episode_id"] == "ep-00000011")
    assert row["face"]["image"]["image"].size == (
        row["face"]["image"]["width"],
        row["face"]["image"]["height"],
    )
