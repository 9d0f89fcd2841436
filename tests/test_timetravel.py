"""Time travel with LangGraph's checkpoint API on a real episode: history, show, fork with a
changed persona attribute, replay (counting which nodes ran), and the CLI commands."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.debug.timetravel import (
    TimeTravelError,
    fork,
    history,
    load_history,
    open_graph,
    parse_episode_ref,
    replay,
    show,
    write_if_finished,
)
from mcu_sim.graphs.episode import NODE_ORDER
from mcu_sim.runner.manifest import RunLocked, run_lock
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer
from tests import pg_fixture

postgres_dsn = pg_fixture.postgres_dsn  # fixtures used here
postgres_env = pg_fixture.postgres_env
SEED = 11
EPISODE = "ep-00000011"
NEW_SENTENCE = "I brew green tea for my neighbours every Sunday."
LATER_NODES = ("commonsense", "narrative", "events", "device_images", "session", "filter")


def _config(tmp_path: Path) -> Any:
    return load_config(
        None,
        [
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            "images.enabled=false",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
        ],
    )


@pytest.fixture
def finished_run(fake_openai, tmp_path: Path) -> Path:
    """One finished episode (seed 11, two sessions) in tmp_path/run."""
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    client = client_for(fake_openai, tmp_path / "llm-cache.sqlite")
    report = asyncio.run(
        EpisodeRunner(_config(tmp_path), out, llm=client).run_jobs(plan_jobs(1, SEED))
    )
    assert report.finished == [EPISODE]
    return out


def _history(ref) -> list:
    async def rows() -> list:
        async with open_graph(ref.run) as opened:
            return (await load_history(opened.graph, opened.thread_id(ref.episode_id))).rows

    return asyncio.run(rows())


def test_history_shows_each_node_with_tokens(finished_run: Path) -> None:
    ref = parse_episode_ref(finished_run / EPISODE)
    rows = _history(ref)
    wrote = [row.wrote.split(" ×")[0] for row in rows]
    assert wrote[:2] == ["input", "start"]
    skipped = {"align_album", "align_sharing"}  # images are off: no aligner branch runs
    for node in NODE_ORDER:
        if node not in skipped:
            assert node in wrote, f"{node} missing from the history"
    assert not skipped & set(wrote)
    assert rows[-1].next == () and rows[0].next == ("__start__",)
    assert [row.step for row in rows] == list(range(-1, len(rows) - 1))
    tokens = [row.tokens for row in rows]
    assert tokens == sorted(tokens) and tokens[-1] > 0
    persona_row = rows[wrote.index("persona")]
    assert persona_row.next == ("commonsense",)
    assert tokens[wrote.index("persona")] > tokens[wrote.index("persona") - 1]
    # `history` and `load_history` agree, and the CLI prints the same rows as JSON
    assert [r.checkpoint_id for r in asyncio.run(history(ref))] == [r.checkpoint_id for r in rows]
    result = CliRunner().invoke(app, ["history", str(finished_run / EPISODE), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["checkpoint_id"] for line in lines] == [r.checkpoint_id for r in rows]
    assert lines[persona_row.index]["wrote"] == "persona"


def test_fork_at_persona_reruns_only_the_later_nodes(fake_openai, finished_run: Path) -> None:
    ref = parse_episode_ref(finished_run / EPISODE)
    rows = _history(ref)
    at = next(row for row in rows if row.wrote == "persona")
    state = asyncio.run(show(ref, at=at.checkpoint_id))
    focus = state["persona_focus"]
    original_file = (finished_run / "episodes" / f"{EPISODE}.json").read_bytes()

    path = f"persona.{focus}.sentence"
    forked = asyncio.run(fork(ref, at.checkpoint_id, {path: NEW_SENTENCE}, "ep-tea"))
    assert forked.episode_id == "ep-tea" and forked.next == ("commonsense",)
    forked_ref = parse_episode_ref(finished_run / "ep-tea")
    assert asyncio.run(show(forked_ref, field=path)) == NEW_SENTENCE
    assert asyncio.run(show(forked_ref, field="episode_id")) == "ep-tea"
    assert asyncio.run(show(forked_ref, field="demographics")) == state["demographics"]
    note = _history(forked_ref)[0].note
    assert note.startswith(f"fork of {EPISODE}@{at.checkpoint_id}") and path in note

    fake_openai.reset()
    executions: Counter = Counter()
    client = client_for(fake_openai, finished_run.parent / "llm-cache.sqlite")
    result = asyncio.run(replay(forked_ref, llm=client, executions=executions))
    # earlier nodes did not run again; every later one did
    for node in ("demographics", "face", "persona"):
        assert executions[node] == 0, executions
    for node in LATER_NODES:
        assert executions[node] >= 1, executions
    assert executions["session"] == 2
    assert result.path == finished_run / "episodes" / "ep-tea.json"
    episode = json.loads(result.path.read_text())
    assert episode["episode_id"] == "ep-tea"
    assert episode["persona"][focus]["sentence"] == NEW_SENTENCE
    # the commonsense step saw the changed attribute (it reads persona[persona_focus])
    # (the default stark preset asks each of the five relations on its own)
    commonsense_schemas = {"CommonsenseOutput", "CommonsenseAnswer"}
    asked = [
        r.body for r in fake_openai.chat_requests if schema_name(r.body) in commonsense_schemas
    ]
    assert len(asked) == 5
    assert all(NEW_SENTENCE in json.dumps(body["messages"]) for body in asked)
    assert not [r for r in fake_openai.chat_requests if schema_name(r.body) == "PersonaOutput"]
    # the original episode is untouched
    assert (finished_run / "episodes" / f"{EPISODE}.json").read_bytes() == original_file


def test_fork_refuses_a_value_the_schema_rejects(finished_run: Path) -> None:
    ref = parse_episode_ref(finished_run / EPISODE)
    at = next(row for row in _history(ref) if row.wrote == "persona")
    with pytest.raises(TimeTravelError, match=r"refused: demographics.age: .*120"):
        asyncio.run(fork(ref, at.checkpoint_id, {"demographics.age": 500}, "ep-bad"))
    with pytest.raises(TimeTravelError, match="no checkpoints"):
        _history(parse_episode_ref(finished_run / "ep-bad"))
    with pytest.raises(TimeTravelError, match="already exists"):
        asyncio.run(fork(ref, at.checkpoint_id, {}, EPISODE))
    # like replay and the debugger, a fork waits for no batch run: it refuses to share
    with run_lock(ref.run), pytest.raises(RunLocked, match="in use by"):
        asyncio.run(fork(ref, at.checkpoint_id, {}, "ep-locked"))
    assert not RunDir(finished_run).read_manifest().get("forks")


def test_replay_from_an_earlier_checkpoint_branches_the_same_episode(
    fake_openai, finished_run: Path
) -> None:
    ref = parse_episode_ref(finished_run / EPISODE)
    rows = _history(ref)
    before_events = next(row for row in rows if row.next == ("events",))
    executions: Counter = Counter()
    client = client_for(fake_openai, finished_run.parent / "llm-cache.sqlite")
    result = asyncio.run(
        replay(ref, before_events.checkpoint_id, llm=client, executions=executions)
    )
    assert executions["narrative"] == 0 and executions["persona"] == 0
    assert executions["events"] == 1 and executions["filter"] == 1
    assert result.nodes[0] == "events" and result.path is not None
    after = _history(ref)
    assert len(after) > len(rows)  # the old branch is still there
    assert {r.checkpoint_id for r in rows} <= {r.checkpoint_id for r in after}
    copy = after[len(rows)]
    assert copy.parent_id == before_events.checkpoint_id and copy.source == "fork"


def test_cli_show_fork_and_replay(fake_openai, finished_run: Path) -> None:
    runner = CliRunner()
    episode = str(finished_run / EPISODE)
    rows = _history(parse_episode_ref(episode))
    at = next(row for row in rows if row.wrote == "persona")
    shown = runner.invoke(app, ["show", episode, "--at", str(at.index), "--field", "demographics"])
    assert shown.exit_code == 0, shown.output
    demographics = json.loads(shown.output)
    assert set(demographics) >= {"age", "name", "birthplace"}
    missing = runner.invoke(app, ["show", episode, "--field", "persona.99"])
    assert missing.exit_code == 2 and "out of range" in missing.output

    low = int(demographics["age_group"].split("-")[0])
    age = low if demographics["age"] != low else low + 1
    forked = runner.invoke(
        app,
        [
            "fork",
            episode,
            "--at",
            at.checkpoint_id,
            "--set",
            f"demographics.age={age}",
            "--as",
            "ep-b",
        ],
    )
    assert forked.exit_code == 0, forked.output
    assert json.loads(forked.stdout)["episode_id"] == "ep-b"
    bad = runner.invoke(app, ["fork", episode, "--at", str(at.index), "--set", "seed=abc"])
    assert bad.exit_code == 2 and "seed" in bad.output

    provider = [
        "--config-set",
        "llm.provider.kind=openai_compatible",
        "--config-set",
        f"llm.provider.base_url={fake_openai.url}",
    ]
    replayed = runner.invoke(app, ["replay", str(finished_run / "ep-b"), *provider])
    assert replayed.exit_code == 0, replayed.output
    assert "ran commonsense" in replayed.output
    written = json.loads(replayed.stdout.splitlines()[-1])
    episode_data = json.loads(Path(written["file"]).read_text())
    assert episode_data["episode_id"] == "ep-b" and episode_data["demographics"]["age"] == age


def test_cli_debug_reopens_an_existing_episode(fake_openai, finished_run: Path) -> None:
    """`mcu debug --episode RUN/ID` on a finished episode: look around, go back, fork, leave."""
    episode = str(finished_run / EPISODE)
    rows = _history(parse_episode_ref(episode))
    before_events = next(row for row in rows if row.next == ("events",))
    keys = ["--set", "llm.provider.kind=openai_compatible"]
    keys += ["--set", f"llm.provider.base_url={fake_openai.url}"]
    typed = f"history\ngoto {before_events.index}\nshow narrative\nfork ep-look\nq\n"
    args = ["debug", "--episode", episode, *keys]
    refused = CliRunner().invoke(app, args, input=typed)
    assert refused.exit_code == 3 and "--force-config" in refused.output  # other provider
    result = CliRunner().invoke(app, [*args, "--force-config"], input=typed)
    assert result.exit_code == 0, result.output
    assert "episode finished" in result.output  # it opens at the latest checkpoint
    assert f"stop before events at #{before_events.index}" in result.output
    assert "events reads: seed, demographics, narrative" in result.output
    assert "now debugging ep-look" in result.output and "left ep-look" in result.output
    forked = asyncio.run(show(parse_episode_ref(finished_run / "ep-look")))
    assert forked["narrative"] and "events" not in forked  # the fork stands before events


def test_finished_episode_file_is_written_once_and_rewritten_when_changed(
    finished_run: Path,
) -> None:
    run = RunDir(finished_run)
    episode = run.read_episode(EPISODE)
    shards_before = sorted(p.name for p in run.shards.glob("shard-*.jsonl"))
    same = SimpleNamespace(values={"episode": episode}, next=())
    index_before = run.index.read_text()
    assert write_if_finished(run, same) == run.episode_path(EPISODE)
    assert run.index.read_text() == index_before  # no duplicate index line
    assert write_if_finished(run, SimpleNamespace(values={"episode": episode}, next=("x",))) is None
    changed = {**episode, "persona": [{**episode["persona"][0], "sentence": NEW_SENTENCE}]}
    write_if_finished(run, SimpleNamespace(values={"episode": changed}, next=()), shard_size=10)
    assert run.read_episode(EPISODE)["persona"][0]["sentence"] == NEW_SENTENCE
    assert len(run.index.read_text().splitlines()) == 1
    shard_text = "".join(p.read_text() for p in run.shards.glob("shard-*.jsonl"))
    assert shards_before and NEW_SENTENCE in shard_text  # the shard holds the new version


def test_a_fork_is_in_the_manifest_and_run_resume_finishes_it(
    fake_openai, finished_run: Path
) -> None:
    ref = parse_episode_ref(finished_run / EPISODE)
    at = next(row for row in _history(ref) if row.wrote == "persona")
    asyncio.run(fork(ref, at.checkpoint_id, {}, "ep-later"))
    manifest = RunDir(finished_run).read_manifest()
    assert manifest["forks"] == [
        {"episode_id": "ep-later", "seed": SEED, "from": f"{EPISODE}@{at.checkpoint_id}"}
    ]
    # `mcu run --resume` (what the debugger's quit message recommends) continues the fork
    fake_openai.reset()
    fake_openai.handler = scripted_answer
    old = manifest["config_fingerprint"]
    old_config = (finished_run / "config.yaml").read_text()
    sets = ["llm.provider.kind=openai_compatible", f"llm.provider.base_url={fake_openai.url}"]
    result = CliRunner().invoke(
        app,
        ["run", "--resume", str(finished_run), "--no-progress", "--force-config"]
        + [f"--set={item}" for item in sets],
    )
    assert result.exit_code == 0, result.output
    assert "finished 1, skipped (already done) 1" in result.output
    assert RunDir(finished_run).is_finished("ep-later")
    assert not [r for r in fake_openai.chat_requests if schema_name(r.body) == "PersonaOutput"]
    manifest = RunDir(finished_run).read_manifest()
    # the plan counts only its own episodes; the fork is counted apart
    assert manifest["episodes_planned"] == 1 and manifest["seed_ranges"] == [[SEED, SEED + 1]]
    assert manifest["episodes_finished"] == 1 and manifest["forks_finished"] == 1
    assert manifest["state"] == "complete"
    # --force-config replaced config.yaml and kept the old one under its fingerprint
    assert manifest["previous_fingerprints"] == [old]
    assert (finished_run / f"config.{old}.yaml").read_text() == old_config
    assert (finished_run / "config.yaml").read_text() != old_config


def test_time_travel_on_postgres_checkpoints(
    fake_openai, tmp_path: Path, postgres_env: str
) -> None:
    """history, show, fork and replay on a run whose checkpoints are in Postgres, where
    thread ids are ``<run id>/<episode id>``."""
    import psycopg

    fake_openai.handler = scripted_answer
    config = load_config(
        None,
        [
            "episode.sessions_min=1",
            "episode.sessions_max=1",
            "images.enabled=false",
            postgres_env,
        ],
    )
    out = tmp_path / "pg-run"
    client = client_for(fake_openai, tmp_path / "llm-cache.sqlite")
    report = asyncio.run(EpisodeRunner(config, out, llm=client).run_jobs(plan_jobs(1, SEED)))
    assert report.finished == [EPISODE] and not (out / "checkpoints.sqlite").exists()
    ref = parse_episode_ref(out / EPISODE)  # the run's config.yaml names the Postgres
    rows = asyncio.run(history(ref))
    wrote = [row.wrote for row in rows]
    assert "persona" in wrote and rows[-1].next == ()
    at = rows[wrote.index("persona")]
    state = asyncio.run(show(ref, at=at.checkpoint_id))
    path = f"persona.{state['persona_focus']}.sentence"
    assert asyncio.run(fork(ref, at.checkpoint_id, {path: NEW_SENTENCE}, "ep-pg")).next == (
        "commonsense",
    )
    executions: Counter = Counter()
    result = asyncio.run(
        replay(parse_episode_ref(out / "ep-pg"), llm=client, executions=executions)
    )
    assert executions["persona"] == 0 and executions["commonsense"] == 1
    assert json.loads(result.path.read_text())["persona"][state["persona_focus"]]["sentence"] == (
        NEW_SENTENCE
    )
    with pytest.raises(TimeTravelError, match=r"ep-nope has no checkpoints.*ep-00000011"):
        asyncio.run(history(parse_episode_ref(out / "ep-nope")))
    run_id = RunDir(out).read_manifest()["run_id"]
    with psycopg.connect(os.environ["MCU_TEST_PG_DSN"]) as conn:
        threads = {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert threads == {f"{run_id}/{EPISODE}", f"{run_id}/ep-pg"}
