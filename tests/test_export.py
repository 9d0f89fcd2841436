"""Exports of a real run directory (episodes from the real graph against the fake endpoint,
real PNG images): Parquet, a Hugging Face dataset folder with its card, STARK and JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config_filters import FilterSettings
from mcu_sim.dataset.export import export_run, image_paths
from mcu_sim.dataset.marks import without_marked
from mcu_sim.graphs.filters import filter_episode
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.sample import build_sample_run, edit_episode


@pytest.fixture
def run_dir(fake_openai: FakeOpenAIServer, tmp_path: Path) -> Path:
    """ep-00000011 complete with images (two from the shipped database, web images with a
    source URL), ep-00000012 filtered as a whole, ep-00000013 failed."""
    root = tmp_path / "run"
    build_sample_run(root, fake_openai, sessions=2)

    def sources(data: dict[str, Any]) -> None:
        for request in data["image_requests"]:
            image = request.get("image")
            if request["status"] != "aligned" or not image:
                continue
            if image["module"] == "retrieval":
                image["db_id"] = "cat" if request["id"].endswith("1") else "astronaut"
            else:
                image["source_url"] = f"https://images.example.org/{request['id']}.png"

    edit_episode(root, "ep-00000011", sources)
    return root


def _card_header(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_parquet_has_one_row_per_kept_episode(run_dir: Path, tmp_path: Path) -> None:
    target = export_run(run_dir, "parquet", tmp_path / "out.parquet")
    table = pq.read_table(target)
    assert table.column("episode_id").to_pylist() == ["ep-00000011"]
    row = table.to_pylist()[0]
    raw = Episode.model_validate(RunDir(run_dir).read_episode("ep-00000011"))
    episode = without_marked(raw)  # the default export leaves marked items out
    assert image_paths(episode) != image_paths(raw)  # the sample has a misaligned image
    assert json.loads(row["sessions"]) == episode.model_dump(mode="json")["sessions"]
    assert row["n_sessions"] == 2 and row["age"] == episode.demographics.age
    assert row["persona_sentences"] == [a.sentence for a in episode.persona]
    assert row["image_paths"] == image_paths(episode) and row["image_paths"]
    assert row["n_images_aligned"] == sum(r.status == "aligned" for r in episode.image_requests)
    everything = pq.read_table(export_run(run_dir, "parquet", include_filtered=True))
    assert sorted(everything.column("status").to_pylist()) == ["complete", "filtered"]
    assert not list(target.parent.glob(".*.tmp"))


def test_hf_folder_has_data_images_and_a_card(run_dir: Path, tmp_path: Path) -> None:
    folder = export_run(run_dir, "hf", tmp_path / "hf")
    files = sorted(p.name for p in (folder / "data").iterdir())
    assert files == ["train-00000-of-00001.parquet"]
    table = pq.read_table(folder / "data" / files[0])
    assert table.num_rows == 1
    for path in table.column("image_paths").to_pylist()[0]:
        assert (folder / path).is_file()  # linked beside the data, same relative path
    readme = (folder / "README.md").read_text()
    header = _card_header(readme)
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert header["size_categories"] == ["n<1K"]
    manifest = RunDir(run_dir).read_manifest()
    assert manifest["config_fingerprint"] in readme
    assert "episodes: 1 (episodes the filters kept; 1 filtered out)" in readme
    # album-2 is shown again in a sharing turn of the sample: three uses of two images
    assert "image database (retrieval) | 3 | Public domain: 2, CC0: 1" in readme
    assert "`cat` (1x): CC0, Stefan van der Walt" in readme
    assert "images.example.org" in readme and "source_url" in readme
    assert "CreativeML Open RAIL++-M" in readme
    assert "```yaml\nllm:" in readme  # the generating config
    # a second export replaces the first, leaving no temporary folder behind
    export_run(run_dir, "hf", folder, include_filtered=True)
    assert pq.read_table(folder / "data" / files[0]).num_rows == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_hf_folder_loads_with_datasets(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets  # the dev extra has it: this test must run, not skip

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cache outside the test
    folder = export_run(run_dir, "hf", tmp_path / "hf", include_filtered=True)
    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "c"))
    assert loaded.num_rows == 2
    rows = {row["episode_id"]: row for row in loaded}
    assert sorted(rows) == ["ep-00000011", "ep-00000012"]
    run = RunDir(run_dir)
    for episode_id, row in rows.items():
        episode = without_marked(Episode.model_validate(run.read_episode(episode_id)))
        assert row["status"] == episode.status
        assert row["name"] == episode.demographics.name and row["age"] == episode.demographics.age
        assert row["persona_sentences"] == [a.sentence for a in episode.persona]
        assert row["n_sessions"] == len(episode.sessions) == 2
        # typed nested rows (tests/test_hf_typed.py checks every field)
        assert [(s["index"], s["date"]) for s in row["sessions"]] == [
            (s.index, s.date) for s in episode.sessions
        ]
        assert [t["utterance"] for s in row["sessions"] for t in s["turns"]] == [
            t.utterance for s in episode.sessions for t in s.turns
        ]
        assert row["image_paths"] == image_paths(episode)
        for path in row["image_paths"]:
            assert (folder / path).is_file()
    assert rows["ep-00000012"]["status"] == "filtered"
    assert rows["ep-00000011"]["image_paths"]  # the complete one has images
    features = loaded.features
    assert features["age"].dtype == "int32" and features["persona_sentences"].feature.dtype == (
        "string"
    )


def test_flat_and_jsonl_exports(run_dir: Path) -> None:
    flat = export_run(run_dir, "flat-jsonl")
    rows = [json.loads(line) for line in flat.read_text().splitlines()]
    assert [r["unique_id"] for r in rows] == ["ep-00000011"]
    assert set(rows[0]) >= {"session1", "session2", "persona_sentence", "mobile_device"}
    jsonl = export_run(run_dir, "jsonl", include_filtered=True)
    episodes = [Episode.model_validate_json(line) for line in jsonl.read_text().splitlines()]
    assert [e.episode_id for e in episodes] == ["ep-00000011", "ep-00000012"]
    with pytest.raises(ValueError, match=r"now 'flat-jsonl'.*'stark-hf'.*'stark-json'"):
        export_run(run_dir, "stark")  # the old name says where each layout went


def test_export_cli(run_dir: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    result = cli.invoke(app, ["export", str(run_dir), "-f", "parquet", "-o", str(tmp_path / "x")])
    assert result.exit_code == 0 and (tmp_path / "x").is_file()
    result = cli.invoke(app, ["export", str(run_dir), "-f", "xml"])
    listed = " ".join(result.output.split())  # the console wraps long lines
    assert (
        result.exit_code == 2 and "hf, parquet, stark-hf, stark-json, flat-jsonl, jsonl" in listed
    )
    result = cli.invoke(app, ["export", str(tmp_path / "missing"), "-f", "jsonl"])
    assert result.exit_code == 2 and "not a run directory" in result.output


def _mark_session_unsafe(run_dir: Path, index: int) -> Episode:
    """Session ``index`` of ep-00000011 judged unsafe, its marks recomputed by the filter."""

    def change(data: dict[str, Any]) -> None:
        session = next(s for s in data["sessions"] if s["index"] == index)
        session["safety"] = {"label": "unsafe", "reason": "a threat", "checker": "test"}
        episode = Episode.model_validate(data)
        marked = filter_episode(episode, FilterSettings(min_sessions=1, max_sessions=20))
        data["removals"] = [r.model_dump(mode="json") for r in marked.removals]
        data["status"] = marked.status

    edit_episode(run_dir, "ep-00000011", change)
    return Episode.model_validate(RunDir(run_dir).read_episode("ep-00000011"))


def test_exports_leave_out_marked_items_unless_keep_marked(run_dir: Path, tmp_path: Path) -> None:
    raw = _mark_session_unsafe(run_dir, 1)
    rules = {r.rule: r.target for r in raw.removals}
    assert rules["unsafe_dialogue"] == "session[1]" and raw.status == "complete"
    misaligned = rules["misaligned_image"].removeprefix("image:")
    cli = CliRunner()
    out = tmp_path / "left-out.jsonl"
    result = cli.invoke(app, ["export", str(run_dir), "-f", "jsonl", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (left_out,) = [Episode.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [s.index for s in left_out.sessions] == [2]  # the unsafe session is left out
    assert all(r.session == 2 for r in left_out.image_requests if r.origin == "sharing")
    request = next(r for r in left_out.image_requests if r.id == misaligned)
    assert request.image is None and request.status == "unaligned"
    assert request.reason and "misaligned_image" in request.reason
    assert left_out.removals == raw.removals  # what was left out is still named
    stark = export_run(run_dir, "flat-jsonl", tmp_path / "stark.jsonl")
    assert "session1" not in json.loads(stark.read_text())

    kept = tmp_path / "kept.jsonl"
    args = ["export", str(run_dir), "-f", "jsonl", "-o", str(kept), "--keep-marked"]
    assert cli.invoke(app, args).exit_code == 0
    (everything,) = [Episode.model_validate_json(line) for line in kept.read_text().splitlines()]
    assert everything == raw  # every marked item in place, flagged by its removals


def test_an_episode_is_dropped_only_when_every_session_is_unsafe(
    run_dir: Path, tmp_path: Path
) -> None:
    _mark_session_unsafe(run_dir, 1)
    assert [e.episode_id for e in _jsonl(export_run(run_dir, "jsonl", tmp_path / "a"))] == [
        "ep-00000011"
    ]
    raw = _mark_session_unsafe(run_dir, 2)
    assert raw.status == "filtered"
    assert any(r.target == "episode" and r.rule == "unsafe_dialogue" for r in raw.removals)
    assert _jsonl(export_run(run_dir, "jsonl", tmp_path / "b")) == []
    everything = _jsonl(export_run(run_dir, "jsonl", tmp_path / "c", include_filtered=True))
    (kept,) = [e for e in everything if e.episode_id == "ep-00000011"]
    assert len(kept.sessions) == 2  # with every session marked, the episode mark decides


def _jsonl(path: Path) -> list[Episode]:
    return [Episode.model_validate_json(line) for line in path.read_text().splitlines()]
