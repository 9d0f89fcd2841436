"""The training formats (``llava``, ``sharegpt``) of a generated run with real PNG images:
placeholders match image files, speakers alternate as the formats require, records have the
shape of the formats' documented examples, and the files load with ``datasets``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.dataset.export import export_run
from mcu_sim.dataset.marks import without_marked
from mcu_sim.personas.schema import ASSISTANT, Episode
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.sample import build_sample_run, edit_episode

# The sample record of LLaVA's docs/Finetune_Custom_Data.md (github.com/haotian-liu/LLaVA).
LLAVA_DOC_EXAMPLE = {
    "id": "997bb945-628d-4724-b370-b84de974a19f",
    "image": "part-000001/997bb945-628d-4724-b370-b84de974a19f.jpg",
    "conversations": [
        {
            "from": "human",
            "value": "<image>\nWrite a prompt for Stable Diffusion to generate this image.",
        },
        {"from": "gpt", "value": "a beautiful painting of chernobyl by nekro, pascal blanche"},
    ],
}
# The conversational vision format of TRL's dataset_formats guide (an image column and
# messages whose content is a list of typed parts).
TRL_DOC_EXAMPLE = {
    "images": ["sky.png"],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What color is the sky?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]},
    ],
}


@pytest.fixture
def run_dir(fake_openai: FakeOpenAIServer, tmp_path: Path) -> Path:
    """ep-00000011: three sessions with images shared by the user; one utterance holds a
    literal ``<image>`` that must not count as a placeholder."""
    root = tmp_path / "run"
    build_sample_run(root, fake_openai, sessions=3)

    def literal(data: dict[str, Any]) -> None:
        data["sessions"][0]["turns"][1]["utterance"] += " I typed <image> by hand."

    edit_episode(root, "ep-00000011", literal)
    return root


def _episode(run: Path) -> Episode:
    """The episode as the exports see it by default: the filters' marked items left out."""
    return without_marked(Episode.model_validate(RunDir(run).read_episode("ep-00000011")))


def _images(record: dict[str, Any]) -> list[str]:
    image = record.get("image", [])
    return [image] if isinstance(image, str) else image


def _shape(value: Any) -> Any:
    """Keys and value types, lists reduced to the shape of their first item."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def expected_user_images(episode: Episode) -> list[str]:
    """Aligned images the user shares, in turn order, up to the assistant's last turn."""
    requests = {r.id: r for r in episode.image_requests}
    found: list[tuple[tuple[int, int], str]] = []
    last_assistant = (0, 0)
    for session in episode.sessions:
        for turn in session.turns:
            if turn.speaker == ASSISTANT:
                last_assistant = (session.index, turn.id)
            request = requests.get(turn.request_id or "")
            if turn.sharing and request and request.status == "aligned" and request.image:
                found.append(((session.index, turn.id), request.image.path))
    return [path for position, path in found if position < last_assistant]


def test_llava_records_per_session(run_dir: Path, tmp_path: Path) -> None:
    folder = export_run(run_dir, "llava", tmp_path / "llava")
    records = json.loads((folder / "llava.json").read_text())
    episode = _episode(run_dir)
    assert [r["id"] for r in records] == [f"ep-00000011-session{n}" for n in (1, 2, 3)]
    images_by_sha = {}
    for request in episode.image_requests:
        if request.image:
            images_by_sha[request.image.path] = request.image.sha256
    for record in records:
        assert list(record) == list(LLAVA_DOC_EXAMPLE)  # id, image, conversations
        turns = record["conversations"]
        assert _shape(turns[0]) == _shape(LLAVA_DOC_EXAMPLE["conversations"][0])
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert len(turns) % 2 == 0  # starts with human, ends with gpt
        placeholders = sum(t["value"].count("<image>") for t in turns)
        paths = _images(record)
        assert placeholders == len(paths) > 0
        assert all(t["value"].count("<image>") == 0 for t in turns if t["from"] == "gpt")
        for path in paths:
            assert not Path(path).is_absolute()
            data = (folder / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == images_by_sha[path]
    # earlier sessions are the context of later ones
    first, second, third = (r["conversations"] for r in records)
    assert second[: len(first)] == first and third[: len(second)] == second
    assert "[Session 2, " in second[len(first)]["value"]
    assert "I typed < image > by hand." in first[2]["value"]  # not a placeholder
    # one record per episode holds every image the user shares before the last reply
    whole = json.loads((export_run(run_dir, "llava", unit="episode") / "llava.json").read_text())
    assert [r["id"] for r in whole] == ["ep-00000011"]
    assert _images(whole[0]) == expected_user_images(episode)
    assert whole[0]["conversations"] == third


def test_llava_with_the_user_as_the_model(run_dir: Path, tmp_path: Path) -> None:
    folder = export_run(run_dir, "llava", tmp_path / "u", unit="episode", model_speaker="user")
    (record,) = json.loads((folder / "llava.json").read_text())
    episode = _episode(run_dir)
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    user_lines = {t.utterance for s in episode.sessions for t in s.turns if t.speaker != ASSISTANT}
    assistant_lines = {
        t.utterance for s in episode.sessions for t in s.turns if t.speaker == ASSISTANT
    }
    gpt_text = "\n".join(t["value"] for t in turns if t["from"] == "gpt")
    human_text = "\n".join(t["value"] for t in turns if t["from"] == "human")
    assert any(line and line in gpt_text for line in user_lines)
    assert not any(line and line in gpt_text for line in assistant_lines)
    assert any(line and line in human_text for line in assistant_lines)
    # the model's own images are what it would produce: descriptions, not inputs
    assert "image" not in record and "<image>" not in gpt_text + human_text
    assert "[image: " in gpt_text
    assert not (folder / "images").exists()


def test_sharegpt_messages_load_with_datasets(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    folder = export_run(run_dir, "sharegpt", tmp_path / "sg")
    lines = (folder / "sharegpt.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [f"ep-00000011-session{n}" for n in (1, 2, 3)]
    for record in records:
        assert set(TRL_DOC_EXAMPLE) <= set(record)
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert len(messages) % 2 == 0
        parts = [part for m in messages for part in m["content"]]
        assert {p["type"] for p in parts} == {"text", "image"}
        for part in parts:
            assert isinstance(part["text" if part["type"] == "text" else "image"], str)
        assert [p["image"] for p in parts if p["type"] == "image"] == record["images"]
        assert all((folder / path).is_file() for path in record["images"])
    assert _shape(records[0]["messages"][1]) == _shape(TRL_DOC_EXAMPLE["messages"][1])
    assert records[-1]["images"] == expected_user_images(_episode(run_dir))

    loaded = datasets.load_dataset(
        "json",
        data_files=str(folder / "sharegpt.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "c"),
    )
    assert loaded.num_rows == 3
    row = loaded[2]
    assert row["messages"][0]["role"] == "user" and row["images"] == records[2]["images"]
    absolute = loaded.map(lambda r: {"images": [str(folder / p) for p in r["images"]]})
    opened = absolute.cast_column("images", datasets.List(datasets.Image()))[2]["images"]
    assert len(opened) == len(records[2]["images"]) and opened[0].size[0] > 0


def test_training_formats_from_the_cli(run_dir: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    out = tmp_path / "cli"
    args = ["export", str(run_dir), "-f", "sharegpt", "-o", str(out), "--unit", "episode"]
    result = cli.invoke(app, [*args, "--model-speaker", "user"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "sharegpt.jsonl").read_text().splitlines()]
    assert record["id"] == "ep-00000011" and record["images"] == []
    result = cli.invoke(app, [*args, "--model-speaker", "narrator"])
    assert result.exit_code == 2 and "assistant, user" in result.output
    result = cli.invoke(app, ["export", str(run_dir), "-f", "llava", "--unit", "turn"])
    assert result.exit_code == 2 and "session, episode" in result.output
