"""``mcu augment`` end to end on a corpus of our own writing: reading inputs through
mappings (with per-record errors), both modes on the runner over the real-HTTP fake server
(MAGID with a tiny random SDXL, DialogCC on the shipped image database), the gold marker
kept out of every prompt, the turn-selection metrics, and a kill and resume."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.dataset.dialogue_input import InputError, iter_dialogues
from mcu_sim.dataset.dialogue_mapping import load_mapping
from mcu_sim.dataset.turn_eval import evaluate
from mcu_sim.graphs.augment import windows
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.augment import augment_config, prepare_inputs
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.runner import EpisodeRunner
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault
from mcu_sim.testing.scripted import scripted_answer

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "dialogues" / "plain.jsonl"
SECRET = "GOLDSECRET"


def _dialogue(did: str, *sessions: list[tuple[str, str, Any]]) -> dict[str, Any]:
    return {
        "id": did,
        "sessions": [
            {"turns": [{"speaker": s, "text": t, "image": g} for s, t, g in turns]}
            for turns in sessions
        ],
    }


# Turns with a cue word ("look", "here", "photo", "picture", "show") are what the scripted
# scanner picks; the gold images carry a secret the prompts must never contain.
CORPUS = [
    _dialogue(
        "d1",
        [
            ("A", "I got a puppy yesterday.", None),
            ("B", "No way! What breed?", None),
            ("A", "A beagle. Look at those ears.", f"{SECRET}-ears.jpg"),
            ("B", "Adorable.", None),
            ("A", "He chewed my shoe already.", f"{SECRET}-shoe.jpg"),
        ],
        [
            ("B", "How is the puppy?", None),
            ("A", "Here he is asleep on the sofa.", {"caption": f"{SECRET} caption"}),
        ],
    ),
    _dialogue(
        "d2",
        [
            ("C", "Show me your new desk setup!", None),
            ("D", "It is just a plank on two trestles.", None),
            ("D", "But it works.", None),
        ],
    ),
]


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _overrides(server: FakeOpenAIServer, tmp_path: Path, *extra: str) -> list[str]:
    options = [
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={server.url}",
        "llm.provider.model=fake-model",
        "llm.provider.timeout_s=10",
        f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
        "augment.scan.window_turns=3",
        "augment.scan.window_overlap=1",
        *extra,
    ]
    return [item for option in options for item in ("--set", option)]


def _episodes(run: Path) -> dict[str, Episode]:
    rundir = RunDir(run)
    return {i: Episode.model_validate(rundir.read_episode(i)) for i in rundir.finished_ids()}


# ---------------------------------------------------------------- reading inputs


def test_plain_layout_reports_bad_records_and_keeps_the_rest(tmp_path: Path) -> None:
    broken = {"id": "bad", "sessions": [{"turns": [{"speaker": "A"}]}]}  # no text
    path = _write_jsonl(tmp_path / "in.jsonl", [CORPUS[0], "{not json", broken, CORPUS[1]])
    items = list(iter_dialogues(path, load_mapping(None)))
    errors = [i for i in items if isinstance(i, InputError)]
    good = [i for i in items if not isinstance(i, InputError)]
    assert [(e.position, e.key) for e in errors] == [
        (1, "(record)"),
        (2, "sessions.0.turns.0.text"),
    ]
    assert [g["source_id"] for g in good] == ["d1", "d2"]
    assert [g["position"] for g in good] == [0, 3]
    assert good[0]["gold_turns"] == [[1, 3], [1, 5], [2, 2]]
    assert good[1]["gold_turns"] == []
    # the text is kept verbatim and nothing of the gold marker is in the turns
    assert good[0]["sessions"][0]["turns"][2] == {
        "speaker": "A",
        "text": "A beagle. Look at those ears.",
    }


def test_patterns_options_parquet_and_hf_folder(tmp_path: Path) -> None:
    record = {
        "meta": {"key": "x-1"},
        "session_10": {"when": "2023.05.06", "lines": [{"who": "B", "say": "later", "pic": "p"}]},
        "session_2": {"when": "2023-05-01", "lines": [{"who": "A", "say": "first", "pic": None}]},
    }
    path = tmp_path / "one.json"
    path.write_text(json.dumps(record))
    options = ["id=meta.key", "sessions=session_*", "date=when", "turns=lines"]
    mapping = load_mapping(None, [*options, "speaker=who", "text=say", "gold=pic"])
    (dialogue,) = iter_dialogues(path, mapping)
    assert [s["turns"][0]["text"] for s in dialogue["sessions"]] == ["first", "later"]
    assert [s["date"] for s in dialogue["sessions"]] == ["2023-05-01", "2023-05-06"]
    assert dialogue["source_id"] == "x-1" and dialogue["gold_turns"] == [[2, 1]]
    with pytest.raises(ValueError, match="key=path"):
        load_mapping(None, ["nonsense=1"])

    # the STARK Hugging Face layout: flat per-session columns of parallel lists
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "index": 5,
            "session1:date": "2023.04.02",
            "session1:speakers": ["Emma", "AI Assistant"],
            "session1:utterances": ["Look at my kite!", "Lovely."],
            "session1:images_key": ["url:https://example.org/k.jpg", ""],
            "session2:date": "2023.04.09",
            "session2:speakers": ["Emma"],
            "session2:utterances": ["It broke."],
            "session2:images_key": [""],
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "stark.parquet")
    (stark,) = iter_dialogues(tmp_path / "stark.parquet", load_mapping("stark-hf"))
    assert [len(s["turns"]) for s in stark["sessions"]] == [2, 1]
    assert stark["gold_turns"] == [[1, 1]] and stark["source_id"] == "5"

    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:2]]
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    found = list(iter_dialogues(folder, load_mapping(None)))
    assert [d["source_id"] for d in found] == ["garden-01", "bike-02"]
    assert [len(d["gold_turns"]) for d in found] == [3, 1]


def test_windows_decide_every_turn_once() -> None:
    for n in range(1, 30):
        for size in range(2, 7):
            for overlap in range(size):
                decided = [t for _, d in windows(n, size, overlap) for t in d]
                assert decided == list(range(1, n + 1))
                for shown, decide in windows(n, size, overlap):
                    assert len(shown) <= size and decide.stop == shown.stop


# ---------------------------------------------------------------- metrics


def test_turn_metrics_on_a_hand_checked_case() -> None:
    """10 turns; picked s1t2, s1t4, s2t1 (aligned: s1t2 only); gold s1t2, s2t3.
    TP 1, FP 2, FN 1, TN 6: accuracy 0.7, precision 1/3, recall 1/2, F1 0.4."""

    def turn(i: int, picked: bool) -> dict[str, Any]:
        return {"id": i, "speaker": "A", "utterance": "x", "sharing": {} if picked else None}

    episode = {
        "episode_id": "ep-00000000",
        "source": {
            "position": 0,
            "source_id": "h",
            "gold_turns": [{"session": 1, "turn": 2}, {"session": 2, "turn": 3}],
        },
        "sessions": [
            {"index": 1, "turns": [turn(i, i in (2, 4)) for i in range(1, 6)]},
            {"index": 2, "turns": [turn(i, i == 1) for i in range(1, 6)]},
        ],
        "image_requests": [
            {"session": 1, "turn_id": 2, "status": "aligned"},
            {"session": 1, "turn_id": 4, "status": "unaligned"},
            {"session": 2, "turn_id": 1, "status": "unaligned"},
        ],
    }
    without_gold = {**episode, "episode_id": "ep-00000001", "source": {"gold_turns": None}}
    result = evaluate([episode, without_gold])
    assert result is not None and result["dialogues"] == 1
    overall = result["overall"]
    assert (overall["turns"], overall["selected"], overall["gold"]) == (10, 3, 2)
    assert overall["accuracy"] == 0.7
    assert overall["precision"] == round(1 / 3, 4)
    assert overall["recall"] == 0.5
    assert overall["f1"] == 0.4
    assert overall["selected_per_100_turns"] == 30.0
    assert overall["images_per_100_turns"] == 10.0
    assert overall["gold_per_100_turns"] == 20.0
    assert evaluate([without_gold]) is None


# ---------------------------------------------------------------- end to end


def test_magid_with_tiny_sdxl_end_to_end(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from mcu_sim.testing.tiny_sdxl import save_tiny_sdxl

    base = save_tiny_sdxl(tmp_path / "sdxl")
    fake_openai.handler = scripted_answer
    corpus = _write_jsonl(tmp_path / "in.jsonl", CORPUS)
    run = tmp_path / "run"
    extra = [
        f"images.t2i.base_model={base}",
        "images.t2i.steps=2",
        "images.t2i.height=32",
        "images.t2i.width=32",
        "images.face.enabled=false",
        "images.qa.scorers=[nsfw]",
    ]
    args = ["augment", str(corpus), "--mode", "magid", "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(app, [*args, *_overrides(fake_openai, tmp_path, *extra)])
    assert result.exit_code == 0, result.output
    episodes = _episodes(run)
    assert len(episodes) == 2
    d1 = next(e for e in episodes.values() if e.source.source_id == "d1")
    assert d1.kind == "augmented" and d1.demographics is None and d1.source.mode == "magid"
    texts = [[t.utterance for t in s.turns] for s in d1.sessions]
    assert texts == [[t["text"] for t in s["turns"]] for s in CORPUS[0]["sessions"]]
    picked = {(s.index, t.id) for s in d1.sessions for t in s.turns if t.sharing}
    assert picked == {(1, 3), (2, 2)}  # the cue words: "Look", "Here"
    for request in d1.image_requests:
        assert request.status == "aligned" and request.module == "t2i"
        assert (run / request.image.path).is_file()
        assert request.image.seed is not None
    # the gold marker and what it carried never reached a prompt
    bodies = [r.body for r in fake_openai.chat_requests]
    assert "Look at those ears" in json.dumps(bodies) and SECRET not in json.dumps(bodies)
    # windows of 3 turns overlapping by 1: d1 has 2 + 1 windows, d2 one; chain of thought
    # by default, its reasoning field before the selections
    scans = [b for b in bodies if "Decide turns" in json.dumps(b)]
    assert len(scans) == 4
    schemas = [b["response_format"]["json_schema"] for b in scans if b.get("response_format")]
    assert schemas and all(s["name"] == "ScanReasonedOutput" for s in schemas)
    assert all(next(iter(s["schema"]["properties"])) == "reasoning" for s in schemas)
    report = json.loads((run / "eval" / "turns.json").read_text())
    assert report["overall"]["turns"] == 10 and report["overall"]["gold"] == 3
    assert "precision" in result.output or "accuracy" in result.output


def test_dialogcc_on_the_shipped_database_with_a_bad_record(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    broken = {"id": "bad", "sessions": "none"}
    corpus = _write_jsonl(tmp_path / "in.jsonl", [CORPUS[0], broken, CORPUS[1]])
    run = tmp_path / "run"
    extra = ["images.qa.scorers=[]", "images.qa.clip_threshold=-1"]
    args = ["augment", str(corpus), "--mode", "dialogcc", "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(app, [*args, *_overrides(fake_openai, tmp_path, *extra)])
    assert result.exit_code == 0, result.output
    assert "record 1" in result.output and "sessions" in result.output
    errors = (run / "augment" / "errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["position"] for e in errors] == [1]
    episodes = _episodes(run)
    assert sorted(e.source.position for e in episodes.values()) == [0, 2]
    bodies = json.dumps([r.body for r in fake_openai.chat_requests])
    assert "MomentsOutput" in bodies and SECRET not in bodies
    aligned = [r for e in episodes.values() for r in e.image_requests if r.status == "aligned"]
    assert aligned and all(r.module == "retrieval" and r.image.db_id for r in aligned)
    # mcu eval turns reads the run again and writes the same numbers
    before = (run / "eval" / "turns.json").read_text()
    again = CliRunner().invoke(app, ["eval", "turns", str(run)])
    assert again.exit_code == 0 and (run / "eval" / "turns.json").read_text() == before
    # the viewer and the exports take the run as it is
    assert CliRunner().invoke(app, ["view", str(run)]).exit_code == 0
    page = next((run / "view").glob("ep-*.html")).read_text()
    assert "Source dialogue" in page
    out = tmp_path / "export.parquet"
    exported = CliRunner().invoke(app, ["export", str(run), "-f", "parquet", "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    # and the report: its counts are the augmented episodes', counted here
    reported = CliRunner().invoke(app, ["report", str(run)])
    assert reported.exit_code == 0, reported.output
    numbers = json.loads((run / "report" / "report.json").read_text())["run"]
    assert numbers["dataset"]["episodes"] == len(episodes) == 2
    assert numbers["dataset"]["sessions"] == sum(len(e.sessions) for e in episodes.values())
    turns = sum(len(s.turns) for e in episodes.values() for s in e.sessions)
    assert numbers["dataset"]["utterances"] == turns


class _HoldScan:
    """Answers everything, but holds the scanner request of the dialogue with ``marker``
    until released, then fails it: the test kills the run while that dialogue is mid-way."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.held = False

    def __call__(self, body: dict[str, Any]) -> Any:
        if self.marker in json.dumps(body) and not self.held:
            self.held = True
            self.arrived.set()
            self.release.wait(20)
            return Fault.status(503, message="killed")
        return scripted_answer(body)


def test_killed_mid_run_resumes_with_nothing_redone(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    third = _dialogue("d3", [("E", "Here is the HOLDME view from the tower.", "x.jpg")])
    corpus = _write_jsonl(tmp_path / "in.jsonl", [*CORPUS, third])
    options = [o for o in _overrides(fake_openai, tmp_path, "images.enabled=false") if o != "--set"]
    config = augment_config(load_config(None, options), "magid")
    config.run.max_in_flight = 1
    run = tmp_path / "run"
    prepared = prepare_inputs(run, corpus, load_mapping(None), "magid")
    hold = _HoldScan("HOLDME")
    fake_openai.handler = hold
    first = EpisodeRunner(config, run)

    async def kill() -> None:
        task = asyncio.create_task(first.run_jobs(prepared.jobs))
        await asyncio.to_thread(hold.arrived.wait, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(kill())
    finally:
        hold.release.set()
    assert sorted(RunDir(run).finished_ids()) == ["ep-00000000", "ep-00000001"]
    assert first.executions["load"] == 3 and first.executions["finalize"] == 2

    again = prepare_inputs(run, corpus, load_mapping(None), "magid")
    assert again.jobs == prepared.jobs
    second = EpisodeRunner(config, run)
    report = asyncio.run(second.run_jobs(again.jobs))
    assert report.skipped == ["ep-00000000", "ep-00000001"]
    assert report.finished == ["ep-00000002"]
    assert second.executions["load"] == 0  # resumed after load, from its checkpoint
    assert second.executions["scan"] == 1 and second.executions["finalize"] == 1
    lines = (run / "index.jsonl").read_text().splitlines()
    ids = [json.loads(line)["episode_id"] for line in lines]
    assert sorted(ids) == ["ep-00000000", "ep-00000001", "ep-00000002"]
    episode = Episode.model_validate(RunDir(run).read_episode("ep-00000002"))
    assert episode.sessions[0].turns[0].sharing is not None


def test_a_weak_scanner_naming_impossible_turns_is_rescued_by_code(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A model that keeps picking turns outside its window (the embedded 135M one does)
    gets its validation error back; after the repair turns, code keeps the valid picks."""

    def weak(body: dict[str, Any]) -> Any:
        if "Decide turns" not in json.dumps(body):
            return scripted_answer(body)
        answer = json.loads(scripted_answer(body))
        answer["selections"] += [
            {"turn": 99, "rationale": "made up", "description": "a made up picture"}
        ]
        return answer

    fake_openai.handler = weak
    corpus = _write_jsonl(tmp_path / "in.jsonl", CORPUS[:1])
    run = tmp_path / "run"
    args = ["augment", str(corpus), "--out", str(run), "--no-progress"]
    extra = _overrides(fake_openai, tmp_path, "images.enabled=false")
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    (episode,) = _episodes(run).values()
    picked = {(s.index, t.id) for s in episode.sessions for t in s.turns if t.sharing}
    assert picked == {(1, 3), (2, 2)}
    scans = [r.body for r in fake_openai.chat_requests if "Decide turns" in json.dumps(r.body)]
    assert any("not among the turns to decide" in json.dumps(b) for b in scans)  # fed back


def test_the_shipped_sample_reads_whole() -> None:
    items = list(iter_dialogues(SAMPLE, load_mapping(None)))
    assert all(not isinstance(i, InputError) for i in items) and len(items) == 4
    assert sum(len(i["gold_turns"]) for i in items) == 8  # 3 + 1 + 2 + 2, counted by hand
    assert {len(i["sessions"]) for i in items} == {1, 2, 3}


def test_augment_on_ray_episode_actors_gives_the_local_runs_episodes(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``mcu augment --backend ray``: the Ray episode actors run the augmentation graph
    (not the episode graph) and give the same episodes as the local runner (cache on)."""
    fake_openai.handler = scripted_answer
    corpus = _write_jsonl(tmp_path / "in.jsonl", CORPUS)
    extra = ["images.qa.scorers=[]", "images.qa.clip_threshold=-1"]
    runs = {}
    for backend in ("local", "ray"):
        run = tmp_path / backend
        args = ["augment", str(corpus), "--mode", "dialogcc", "--out", str(run)]
        args += ["--no-progress", "--backend", backend]
        result = CliRunner().invoke(app, [*args, *_overrides(fake_openai, tmp_path, *extra)])
        assert result.exit_code == 0, result.output
        runs[backend] = {
            i: e.model_dump(exclude={"usage", "meta"}) for i, e in _episodes(run).items()
        }
    assert len(runs["ray"]) == len(CORPUS)
    assert all(e["kind"] == "augmented" for e in runs["ray"].values())
    assert runs["ray"] == runs["local"]
    assert RunDir(tmp_path / "ray").read_manifest()["backend"] == "ray"
    # time travel opens an augmented run's threads with the augmentation graph
    episode_id = sorted(runs["local"])[0]
    shown = CliRunner().invoke(app, ["history", str(tmp_path / "local" / episode_id), "--json"])
    assert shown.exit_code == 0, shown.output
    wrote = " ".join(json.dumps(json.loads(line)) for line in shown.output.splitlines())
    assert '"scan' in wrote and '"finalize' in wrote and "persona" not in wrote


def test_estimate_predicts_the_calls_of_the_augment_run(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``mcu augment --estimate`` runs a sample of the input's own dialogues through the real
    graph (here: all of them, so the prediction must be exact), writes nothing to the run
    directory, and prices the tokens with the configured prices."""
    from mcu_sim.runner.estimate_augment import spread

    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread([1, 2], 4) == [1, 2]
    fake_openai.handler = scripted_answer
    corpus = _write_jsonl(tmp_path / "in.jsonl", [*CORPUS, {"id": "bad", "sessions": "x"}])
    run = tmp_path / "run"
    price = "llm.provider.prices={fake-model: {input: 1.0, output: 4.0}}"
    extra = ["images.qa.scorers=[]", "images.qa.clip_threshold=-1", price]
    args = ["augment", str(corpus), "--mode", "dialogcc", "--out", str(run), "--no-progress"]
    predicted = CliRunner().invoke(
        app, [*args, "--estimate", *_overrides(fake_openai, tmp_path, *extra)]
    )
    assert predicted.exit_code == 0, predicted.output
    assert not run.exists() and fake_openai.chat_requests == []  # nothing ran for real
    text = " ".join(predicted.output.split())
    assert "2 episodes:" in text and "1 unreadable record(s) left out" in text
    calls = int(text.split("2 episodes: ")[1].split(" LLM calls")[0].replace(",", ""))
    assert "unknown" not in text.split("cost ")[1][:12]  # priced
    done = CliRunner().invoke(app, [*args, *_overrides(fake_openai, tmp_path, *extra)])
    assert done.exit_code == 0, done.output
    assert calls == len(fake_openai.chat_requests) > 0
