"""The batch runner over real HTTP (the fake endpoint) with real SQLite (and, where the
machine has it, a real throwaway Postgres) checkpoints: a 20-episode run with shards and a
manifest, an in-process interruption resumed without redoing finished nodes, failures and
retry-failed, the fingerprint refusal, the budget stop, the run lock and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import Config, load_config
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.estimate import estimate_run
from mcu_sim.runner.manifest import run_lock
from mcu_sim.runner.outputs import RunDir, atomic_write_text
from mcu_sim.runner.progress import RunProgress, compact, eta_seconds, format_duration
from mcu_sim.runner.runner import (
    EpisodeRunner,
    FingerprintMismatch,
    RunLocked,
    failed_jobs,
    plan_jobs,
)
from mcu_sim.runner.shards import ShardWriter
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault, schema_name
from mcu_sim.testing.scripted import scripted_answer
from tests.pg_fixture import postgres_dsn  # noqa: F401 - a fixture

PRE_EVENTS = ("demographics", "face", "persona", "commonsense", "narrative")


def _overrides(server: FakeOpenAIServer, tmp_path: Path, sessions: int = 1) -> list[str]:
    return [
        "images.enabled=false",
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={server.url}",
        "llm.provider.model=fake-model",
        "llm.provider.timeout_s=10",
        "llm.provider.max_concurrency=16",
        f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
        f"episode.sessions_min={sessions}",
        f"episode.sessions_max={sessions}",
    ]


def _config(server: FakeOpenAIServer, tmp_path: Path, *extra: str, sessions: int = 1) -> Config:
    return load_config(None, [*_overrides(server, tmp_path, sessions), *extra])


def _run(config: Config, out: Path, jobs: list, **options: Any) -> Any:
    runner = EpisodeRunner(config, out, **options)
    return asyncio.run(runner.run_jobs(jobs)), runner


def _requests(server: FakeOpenAIServer, role: str) -> int:
    return sum(1 for r in server.chat_requests if schema_name(r.body) == role)


def _shard_ids(run: Path) -> list[str]:
    ids = []
    for path in sorted((run / "shards").glob("shard-*.jsonl")):
        ids += [json.loads(line)["episode_id"] for line in path.read_text().splitlines()]
    return ids


# ---------------------------------------------------------------- a whole run


def test_run_of_20_episodes_writes_episodes_shards_index_and_manifest(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    def slow(body: dict[str, Any]) -> str:  # a little latency lets episodes overlap
        time.sleep(0.02)
        return scripted_answer(body)

    fake_openai.handler = slow
    config = _config(fake_openai, tmp_path, "run.shard_size=8")
    out = tmp_path / "run"
    twins = plan_jobs(20, 100) + plan_jobs(3, 100)  # a repeated job runs once
    report, _ = _run(config, out, twins, max_in_flight=8)
    assert report.failed == {} and len(report.finished) == 20
    assert fake_openai.max_in_flight > 1  # episodes really overlapped
    run = RunDir(out)
    assert run.finished_ids() == [f"ep-{100 + i:08d}" for i in range(20)]
    for episode_id in run.finished_ids():
        Episode.model_validate(run.read_episode(episode_id))
    index = [json.loads(line) for line in run.index.read_text().splitlines()]
    assert sorted(r["episode_id"] for r in index) == run.finished_ids()
    shards = sorted(p.name for p in run.shards.glob("shard-*.jsonl"))
    assert shards == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    assert [len(p.read_text().splitlines()) for p in sorted(run.shards.glob("*.jsonl"))] == [
        8,
        8,
        4,
    ]
    assert sorted(_shard_ids(out)) == run.finished_ids()
    manifest = run.read_manifest()
    assert manifest["seed_ranges"] == [[100, 120]]
    assert manifest["episodes_finished"] == 20 and manifest["episodes_failed"] == 0
    assert manifest["state"] == "complete" and manifest["shards"] == 3
    assert manifest["config_fingerprint"] == config.fingerprint()
    assert manifest["versions"]["prompts"]["dialogue"]
    assert manifest["usage_total"]["calls"] == report.usage.calls > 0
    # the same command again: nothing to do, no new request, nothing duplicated
    calls = len(fake_openai.chat_requests)
    again, _ = _run(config, out, plan_jobs(20, 100), max_in_flight=8)
    assert again.finished == [] and len(again.skipped) == 20
    assert len(fake_openai.chat_requests) == calls
    assert sorted(_shard_ids(out)) == run.finished_ids()
    assert len(run.read_manifest()["invocations"]) == 2


# ---------------------------------------------------------------- interruption and resume


class _HoldAtEvents:
    """Endpoint handler that answers everything but holds the first events request until
    released, so the test can interrupt the run while the ``events`` node is in progress."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.held = False

    def __call__(self, body: dict[str, Any]) -> Any:
        if schema_name(body) == "EventsOutput" and not self.held:
            self.held = True
            self.arrived.set()
            self.release.wait(20)
            return Fault.status(503, message="interrupted")
        return scripted_answer(body)


def _interrupt_at_events(runner: EpisodeRunner, hold: _HoldAtEvents, jobs: list) -> None:
    """Run ``jobs`` and cancel the run once the held events request has arrived."""

    async def interrupt() -> None:
        task = asyncio.create_task(runner.run_jobs(jobs))
        await asyncio.to_thread(hold.arrived.wait, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(interrupt())
    finally:
        hold.release.set()


def _store_overrides(store: str, request: pytest.FixtureRequest) -> list[str]:
    """Config overrides for checkpoints in ``store``: a throwaway Postgres server's DSN
    in MCU_TEST_PG_DSN (removed after the test) for "postgres", nothing for SQLite."""
    if store != "postgres":
        return []
    os.environ["MCU_TEST_PG_DSN"] = request.getfixturevalue("postgres_dsn")
    request.addfinalizer(lambda: os.environ.pop("MCU_TEST_PG_DSN", None))
    return ["run.postgres_dsn_env=MCU_TEST_PG_DSN"]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_interrupted_at_a_node_resumes_without_redoing_finished_nodes(
    fake_openai: FakeOpenAIServer, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    extra = _store_overrides(store, request)
    hold = _HoldAtEvents()
    fake_openai.handler = hold
    config = _config(fake_openai, tmp_path, *extra, sessions=2)
    out = tmp_path / "run"
    job = plan_jobs(1, 7)
    first = EpisodeRunner(config, out)
    _interrupt_at_events(first, hold, job)
    assert all(first.executions[node] == 1 for node in PRE_EVENTS)
    assert first.executions["events"] == 1 and first.executions["session"] == 0
    manifest = RunDir(out).read_manifest()
    assert manifest["state"] == "interrupted" and manifest["episodes_finished"] == 0
    assert manifest["checkpointer"] == store

    report, second = _run(config, out, job)
    assert report.finished == ["ep-00000007"]
    assert all(second.executions[node] == 0 for node in PRE_EVENTS)
    assert second.executions["events"] == 1 and second.executions["session"] == 2
    total = first.executions + second.executions
    assert all(total[node] == 1 for node in (*PRE_EVENTS, "device_images", "filter"))
    assert _requests(fake_openai, "PersonaOutput") == 1
    assert _requests(fake_openai, "NarrativeOutput") == 1
    Episode.model_validate(RunDir(out).read_episode("ep-00000007"))


@pytest.mark.parametrize("keep", ["all", "last"])
def test_an_interrupted_episode_resumes_whatever_checkpoints_are_kept(
    fake_openai: FakeOpenAIServer, tmp_path: Path, keep: str
) -> None:
    """An unfinished episode keeps every step's checkpoint under either setting and resumes
    where it was; with ``last`` its thread goes once its file is written."""
    hold = _HoldAtEvents()
    fake_openai.handler = hold
    config = _config(fake_openai, tmp_path, f"run.keep_checkpoints={keep}", sessions=2)
    out = tmp_path / "run"
    job = plan_jobs(1, 7)
    first = EpisodeRunner(config, out)
    _interrupt_at_events(first, hold, job)
    assert _checkpoints_per_thread(out)["ep-00000007"] > len(PRE_EVENTS)
    report, second = _run(config, out, job)
    assert report.finished == ["ep-00000007"]
    assert all(second.executions[node] == 0 for node in PRE_EVENTS)
    assert second.executions["events"] == 1 and second.executions["session"] == 2
    assert _requests(fake_openai, "PersonaOutput") == 1
    assert ("ep-00000007" in _checkpoints_per_thread(out)) == (keep == "all")


# ---------------------------------------------------------------- failures


def test_failures_are_recorded_and_retry_failed_reruns_only_them(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    overrides = _overrides(fake_openai, tmp_path)
    out = tmp_path / "run"
    cli = CliRunner()
    base = ["run", "--out", str(out), "--seed", "30", "--no-progress"]
    result = cli.invoke(app, [*base, "-n", "2", *[f"--set={o}" for o in overrides]])
    assert result.exit_code == 0, result.output

    def broken(body: dict[str, Any]) -> Any:
        if schema_name(body) == "EventsOutput":
            return Fault.status(400, message="this model cannot do events")
        return scripted_answer(body)

    fake_openai.handler = broken
    result = cli.invoke(app, [*base, "-n", "4", *[f"--set={o}" for o in overrides]])
    assert result.exit_code == 1
    assert "skipped (already done) 2" in result.output and "failed 2" in result.output
    run = RunDir(out)
    assert [j.episode_id for j in failed_jobs(run)] == ["ep-00000032", "ep-00000033"]
    record = run.read_failure("ep-00000032")
    assert record["failed_at"] == ["events"] and record["error_type"] == "LLMRequestError"
    assert record["seed"] == 32 and record["attempts"] == 1 and record["traceback"]
    persona_calls = _requests(fake_openai, "PersonaOutput")

    fake_openai.handler = scripted_answer
    result = cli.invoke(app, ["retry-failed", str(out), "--no-progress"])  # run's config.yaml
    assert result.exit_code == 0, result.output
    assert "finished 2, skipped (already done) 0, failed 0" in result.output
    assert _requests(fake_openai, "PersonaOutput") == persona_calls  # resumed, not redone
    assert run.failed_ids() == [] and len(run.finished_ids()) == 4
    assert run.read_manifest()["episodes_failed"] == 0
    result = cli.invoke(app, ["retry-failed", str(out)])
    assert "no failed episodes" in result.output


# ---------------------------------------------------------------- refusals


def test_changed_config_is_refused_unless_forced(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    _run(_config(fake_openai, tmp_path), out, plan_jobs(1, 1))
    before = RunDir(out).read_manifest()
    changed = _config(fake_openai, tmp_path, sessions=2)
    with pytest.raises(FingerprintMismatch, match="--force-config"):
        _run(changed, out, plan_jobs(2, 1))
    assert RunDir(out).read_manifest() == before
    assert not RunDir(out).is_finished("ep-00000002")
    # operational settings (concurrency, prices, out dir) are not part of the fingerprint
    faster = _config(fake_openai, tmp_path, "run.max_in_flight=9", "llm.provider.timeout_s=3")
    _run(faster, out, plan_jobs(1, 1))
    # the CLI says why and exits 3; --force-config goes ahead and remembers the old one
    cli = CliRunner()
    sets = [f"--set={o}" for o in _overrides(fake_openai, tmp_path, sessions=2)]
    result = cli.invoke(app, ["run", "-n", "2", "--seed", "1", "-o", str(out), *sets])
    assert result.exit_code == 3 and "Resuming would mix two datasets" in result.output
    result = cli.invoke(
        app, ["run", "-n", "2", "--seed", "1", "-o", str(out), "--force-config", *sets]
    )
    assert result.exit_code == 0, result.output
    manifest = RunDir(out).read_manifest()
    assert manifest["previous_fingerprints"] == [before["config_fingerprint"]]
    assert manifest["config_fingerprint"] == changed.fingerprint()
    kept = load_config(out / f"config.{before['config_fingerprint']}.yaml")  # the old config
    assert kept.fingerprint() == before["config_fingerprint"]
    assert load_config(out / "config.yaml").fingerprint() == changed.fingerprint()


def test_second_runner_on_the_same_directory_is_refused(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with run_lock(RunDir(out)), pytest.raises(RunLocked, match="in use by pid"):
        _run(_config(fake_openai, tmp_path), out, plan_jobs(1, 1))
    assert fake_openai.chat_requests == []


# ---------------------------------------------------------------- budget


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_budget_stop_keeps_everything_and_a_rerun_continues(
    fake_openai: FakeOpenAIServer, tmp_path: Path, durability: str
) -> None:
    fake_openai.handler = scripted_answer
    # USD per million tokens; the fake endpoint counts words as tokens.
    price = "llm.provider.prices={fake-model: {input: 200, output: 200}}"
    config = _config(fake_openai, tmp_path, price, f"run.durability={durability}", sessions=2)
    out = tmp_path / "run"
    jobs = plan_jobs(3, 50)
    report, first = _run(config, out, jobs, max_in_flight=1, max_cost=1.0)
    assert report.stopped_for_budget and 1 <= len(report.finished) < 3
    # it stops after the step that crossed the budget (one call, or a judge per session)
    assert 1.0 <= report.usage.cost_usd < 1.0 + 0.3
    manifest = RunDir(out).read_manifest()
    assert manifest["state"] == "stopped_for_budget"
    assert manifest["usage_total"]["cost_usd"] == pytest.approx(report.usage.cost_usd)
    assert len(RunDir(out).finished_ids()) == len(report.finished)

    report2, second = _run(config, out, jobs, max_in_flight=1)
    assert not report2.stopped_for_budget
    assert len(report.finished) + len(report2.finished) == 3
    total = first.executions + second.executions
    assert all(total[node] == 3 for node in (*PRE_EVENTS, "events", "filter"))
    assert total["session"] == 6
    assert _requests(fake_openai, "PersonaOutput") == 3  # nothing was asked twice
    spent = RunDir(out).read_manifest()["usage_total"]["cost_usd"]
    assert spent == pytest.approx(report.usage.cost_usd + report2.usage.cost_usd)


# ---------------------------------------------------------------- files


def _checkpoints_per_thread(run: Path) -> dict[str, int]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(run / "checkpoints.sqlite")) as db:
        rows = db.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id")
        return dict(rows.fetchall())


def test_each_durability_reaches_langgraph_and_changes_no_episode(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """run.durability is LangGraph's own: sync and async write a checkpoint per step,
    exit only when the episode's run ends; the episodes are the same."""
    fake_openai.handler = scripted_answer
    jobs = plan_jobs(2, 60)
    episodes = {}
    for durability in ("sync", "async", "exit"):
        config = _config(
            fake_openai, tmp_path, f"run.durability={durability}", "llm.cache.enabled=false"
        )
        out = tmp_path / durability
        report, runner = _run(config, out, jobs, max_in_flight=2)
        assert len(report.finished) == 2
        per_thread = _checkpoints_per_thread(out)
        assert set(per_thread) == {job.episode_id for job in jobs}
        steps = sum(runner.executions.values()) // 2
        if durability == "exit":
            assert all(n <= 2 for n in per_thread.values()), per_thread
        else:
            assert all(n > steps for n in per_thread.values()), (per_thread, steps)
        episodes[durability] = [RunDir(out).read_episode(j.episode_id) for j in jobs]
    # an operational setting: same fingerprint, same episodes
    assert episodes["sync"] == episodes["async"] == episodes["exit"]


def test_a_run_directorys_config_with_a_retired_setting_still_loads(tmp_path: Path) -> None:
    """run.gc_tuning, llm.provider.http_client and cpu_extra_buffers are gone; config.yaml of
    a run made before still loads, same fingerprint."""
    old = tmp_path / "config.yaml"
    old.write_text(
        "run:\n  gc_tuning: true\n  durability: exit\n"
        "llm:\n  provider:\n    http_client: direct\n    cpu_extra_buffers: false\n"
    )
    config = load_config(old)
    assert config.run.durability == "exit" and not hasattr(config.run, "gc_tuning")
    assert not hasattr(config.llm.provider, "http_client")
    assert config.fingerprint() == load_config(None).fingerprint()


def test_an_unknown_durability_is_a_config_error(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    from mcu_sim.config import ConfigError

    with pytest.raises(ConfigError, match="durability"):
        _config(fake_openai, tmp_path, "run.durability=group")


def test_exit_durability_failure_resumes_at_the_failed_node(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    def broken(body: dict[str, Any]) -> Any:
        if schema_name(body) == "EventsOutput":
            return Fault.status(400, message="this model cannot do events")
        return scripted_answer(body)

    fake_openai.handler = broken
    config = _config(fake_openai, tmp_path, "run.durability=exit", "llm.cache.enabled=false")
    out = tmp_path / "run"
    report, _ = _run(config, out, plan_jobs(1, 70))
    assert report.failed and RunDir(out).read_failure("ep-00000070")["failed_at"] == ["events"]
    fake_openai.handler = scripted_answer
    report, runner = _run(config, out, failed_jobs(RunDir(out)))
    assert report.finished == ["ep-00000070"]
    # the checkpoint written when the episode failed kept every step before events
    assert all(runner.executions[node] == 0 for node in PRE_EVENTS)
    assert runner.executions["events"] == 1


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_keep_checkpoints_last_deletes_a_finished_episodes_thread(
    fake_openai: FakeOpenAIServer, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Once its file is written, a finished episode's thread is deleted (adelete_thread):
    `mcu history` says why it has none, and a re-run skips it (the file is the record)."""
    from mcu_sim.debug.history import NoCheckpoints
    from mcu_sim.debug.timetravel import history, parse_episode_ref

    extra = _store_overrides(store, request)
    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "run.keep_checkpoints=last", *extra, sessions=2)
    out = tmp_path / "run"
    jobs = plan_jobs(3, 80)
    report, _ = _run(config, out, jobs, max_in_flight=3)
    assert len(report.finished) == 3
    if store == "sqlite":
        assert _checkpoints_per_thread(out) == {}
    for job in jobs:
        with pytest.raises(NoCheckpoints, match=r"is finished and has no checkpoint history"):
            asyncio.run(history(parse_episode_ref(out / job.episode_id)))
    calls = len(fake_openai.chat_requests)
    report, runner = _run(config, out, jobs)
    assert sorted(report.skipped) == [j.episode_id for j in jobs] and not report.finished
    assert sum(runner.executions.values()) == 0 and len(fake_openai.chat_requests) == calls
    # the setting is operational: the same run directory takes `all` again, unrefused
    keep_all = _config(fake_openai, tmp_path, *extra, sessions=2)
    report, _ = _run(keep_all, out, plan_jobs(4, 80))
    assert report.finished == ["ep-00000083"]
    assert len(asyncio.run(history(parse_episode_ref(out / "ep-00000083")))) > 1


def test_keep_checkpoints_last_keeps_an_unfinished_episodes_checkpoints(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Only a written episode loses its thread: a failed one keeps its checkpoints, and
    retry-failed continues it at the failed node."""

    def broken(body: dict[str, Any]) -> Any:
        if schema_name(body) == "EventsOutput":
            return Fault.status(400, message="this model cannot do events")
        return scripted_answer(body)

    fake_openai.handler = broken
    config = _config(fake_openai, tmp_path, "run.keep_checkpoints=last")
    out = tmp_path / "run"
    report, _ = _run(config, out, plan_jobs(2, 85))
    assert len(report.failed) == 2 and set(_checkpoints_per_thread(out)) == set(report.failed)
    fake_openai.handler = scripted_answer
    report, runner = _run(config, out, failed_jobs(RunDir(out)))
    assert len(report.finished) == 2 and runner.executions["demographics"] == 0
    assert _checkpoints_per_thread(out) == {}


def test_a_lost_episode_file_is_written_again_from_its_checkpoints(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path)
    out = tmp_path / "run"
    report, _ = _run(config, out, plan_jobs(3, 90))
    assert len(report.finished) == 3
    written = RunDir(out).read_episode("ep-00000091")
    RunDir(out).episode_path("ep-00000091").unlink()
    calls = len(fake_openai.chat_requests)
    report, runner = _run(config, out, plan_jobs(3, 90))
    assert report.finished == ["ep-00000091"] and sorted(report.skipped) == [
        "ep-00000090",
        "ep-00000092",
    ]
    assert sum(runner.executions.values()) == 0 and len(fake_openai.chat_requests) == calls
    assert RunDir(out).read_episode("ep-00000091") == written


def test_shards_survive_a_crash_between_shard_and_state(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create()

    def finish(episode_id: str) -> None:
        atomic_write_text(run.episode_path(episode_id), json.dumps({"episode_id": episode_id}))

    writer = ShardWriter(run, 3)
    writer.load()
    for i in range(4):
        finish(f"e{i}")
        writer.add(f"e{i}")
    assert list(writer.shards) == ["shard-00000.jsonl"] and writer.pending == ["e3"]
    # a crash: the tail shard was written but shards.json still describes the old state
    state = (run.shards / "shards.json").read_text()
    writer.flush()
    (run.shards / "shards.json").write_text(state)
    finish("e4")
    again = ShardWriter(run, 3)
    again.load()
    assert again.shards["shard-00001.jsonl"] == ["e3"] and again.pending == ["e4"]
    finish("e5")
    again.add("e5")  # fills the partial tail shard in place
    again.flush()
    assert _shard_ids(run.root) == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert Counter(_shard_ids(run.root)).most_common(1)[0][1] == 1


def test_index_is_repaired_from_episode_files(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    config = _config(fake_openai, tmp_path)
    _run(config, out, plan_jobs(2, 1))
    run = RunDir(out)
    lines = run.index.read_text().splitlines()
    run.index.write_text(lines[0] + "\n" + lines[1][:20])  # a line cut by a crash
    assert run.sync_index() == 2
    assert [json.loads(x)["episode_id"] for x in run.index.read_text().splitlines()] == [
        "ep-00000001",
        "ep-00000002",
    ]


# ---------------------------------------------------------------- CLI and display


def test_cli_plain_rerun_and_resume_use_the_run_directory(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    sets = [f"--set={o}" for o in _overrides(fake_openai, tmp_path)]
    cli = CliRunner()
    command = ["run", "-n", "3", "--seed", "5", "-o", str(out), "--no-progress", *sets]
    first = cli.invoke(app, command)
    assert first.exit_code == 0, first.output
    assert "finished 3" in first.output
    assert "skipped (already done) 3" in cli.invoke(app, command).output
    # --resume DIR needs no config: the run's config.yaml is used, so the fingerprint holds
    resumed = cli.invoke(app, ["run", "--resume", str(out), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "finished 0, skipped (already done) 3" in resumed.output
    missing = cli.invoke(app, ["run", "--resume", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "nothing to resume" in missing.output


def test_progress_line_counts_events() -> None:
    console = Console(record=True, width=200)
    display = RunProgress(console, enabled=False, log_every=0.0)
    display.handle("plan", {"total": 5, "skipped": 1, "todo": 4})
    for kind in ("start", "start", "start"):
        display.handle(kind, {"episode_id": "x"})
    display.handle("done", {"episode_id": "x"})
    display.handle("failed", {"episode_id": "y", "error": "boom"})
    line = display.stats()
    assert "done 1 failed 1 in flight 1" in line
    assert "[3/5]" in console.export_text()
    assert eta_seconds(2, 3, 10.0) == 15.0 and eta_seconds(0, 3, 10.0) is None
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--:--"
    assert compact(12_345) == "12.3k" and compact(4_500_000) == "4.5M" and compact(7) == "7"


# ---------------------------------------------------------------- estimate


def test_estimate_follows_the_graph_and_is_refined_by_a_run(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    price = "llm.provider.prices={fake-model: {input: 1.0, output: 2.0}}"
    config = _config(fake_openai, tmp_path, price, sessions=2)
    predicted = estimate_run(config, 100)
    rows = {r.step: r for r in predicted.roles}
    calls = {step: row.calls_per_episode for step, row in rows.items()}
    assert calls == {
        "persona": 1,
        "commonsense": 5,  # the stark preset: one call per relation
        "narrative": 1,
        "events": 1,
        "device": 1,
        "dialogue": 2,
        "judge": 2,
    }
    assert predicted.calls == 1300
    assert rows["dialogue"].prompt_tokens_per_call > rows["narrative"].prompt_tokens_per_call
    cost = sum(
        r.calls_per_episode * (r.prompt_tokens_per_call + 2 * r.completion_tokens_per_call)
        for r in predicted.roles
    )
    assert predicted.cost_usd == pytest.approx(100 * cost / 1e6)
    assert fake_openai.chat_requests == []  # the dry run used its own in-process endpoint

    out = tmp_path / "run"
    _run(config, out, plan_jobs(2, 40))
    refined = {r.step: r for r in estimate_run(config, 100, from_run=out).roles}
    usage = [
        RunDir(out).read_episode(i)["usage"]["session"] for i in ("ep-00000040", "ep-00000041")
    ]
    measured = sum(u["prompt_tokens"] for u in usage) / sum(u["calls"] for u in usage)
    assert refined["dialogue"].source == "measured (2 episodes)"
    assert refined["dialogue"].prompt_tokens_per_call == pytest.approx(measured)
    assert refined["dialogue"].calls_per_episode == 2
    assert refined["judge"].source == "measured (2 episodes)"
    assert refined["judge"].calls_per_episode == 2  # one safety verdict per session

    # two modules can run, so the planner is asked (with one, code decides without a call)
    with_images = load_config(
        None,
        [
            *_overrides(fake_openai, tmp_path),
            "images.enabled=true",
            "images.web_search.enabled=true",
        ],
    )
    planner = {r.step: r for r in estimate_run(with_images, 1).roles}["planner"]
    assert planner.calls_per_episode >= with_images.episode.device_images
    result = CliRunner().invoke(
        app,
        [
            "estimate",
            "-n",
            "10",
            "--json",
            *[f"--set={o}" for o in _overrides(fake_openai, tmp_path)],
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["episodes"] == 10 and data["calls"] == 110 and data["priced"] is False
    stark, economy = data["presets"]["stark"], data["presets"]["economy"]
    assert stark["calls"] == 110 and economy["calls"] == 70  # five commonsense calls vs one
    assert stark["prompt_tokens"] > economy["prompt_tokens"]


def _seen_in_each_episode(monkeypatch: Any, probe: Any) -> list[Any]:
    """What ``probe()`` returns inside each episode's first node (from the graphs built
    after this call), in order."""
    from mcu_sim.graphs import nodes

    seen: list[Any] = []
    original = nodes.demographics_node

    async def demographics(state: Any, runtime: Any) -> Any:
        seen.append(probe())
        return await original(state, runtime)

    monkeypatch.setattr(nodes, "demographics_node", demographics)
    return seen


@pytest.mark.parametrize(("choice", "loop_module"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_mcu_run_uses_the_configured_event_loop(
    fake_openai, tmp_path, monkeypatch, choice: str, loop_module: str
) -> None:
    pytest.importorskip("uvloop")
    seen = _seen_in_each_episode(
        monkeypatch, lambda: type(asyncio.get_running_loop()).__module__.split(".")[0]
    )
    sets = [*_overrides(fake_openai, tmp_path), f"run.event_loop={choice}"]
    out = tmp_path / "run"
    command = ["run", "-n", "2", "-o", str(out), "--no-progress"]
    result = CliRunner().invoke(app, [*command, *[f"--set={s}" for s in sets]])
    assert result.exit_code == 0, result.output
    assert seen == [loop_module, loop_module]
    assert len(list((out / "episodes").glob("*.json"))) == 2


def test_an_event_loop_that_is_not_installed_is_a_config_error(monkeypatch) -> None:
    import sys

    from mcu_sim.config import ConfigError
    from mcu_sim.runner.event_loop import loop_factory, run_on_loop

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert loop_factory("auto") is None and loop_factory("asyncio") is None
    with pytest.raises(ConfigError, match="uvloop is not installed: pip install uvloop"):
        run_on_loop(asyncio.sleep(0), "uvloop")


def test_an_episode_checkpointed_before_the_filter_node_existed_finishes(
    fake_openai, tmp_path
) -> None:
    """A run checkpointed by a version whose last steps were link_album, safety and
    finalize (now the filter node) resumes there: an episode left waiting for ``safety``
    finishes as it would have."""
    import sqlite3

    from mcu_sim.agents.llm.client import build_client
    from mcu_sim.graphs.context import EpisodeContext
    from mcu_sim.graphs.episode import compile_episode_graph
    from mcu_sim.runner.checkpoints import open_checkpointer
    from mcu_sim.runner.runner import drive_episode

    config = _config(fake_openai, tmp_path, sessions=2)
    out = tmp_path / "run"
    (job,) = plan_jobs(1, 80)
    _run(config, out, [job])
    finished = json.loads((out / "episodes" / f"{job.episode_id}.json").read_text())
    database = out / "checkpoints.sqlite"
    thread = {"configurable": {"thread_id": job.episode_id}}

    async def waiting_for_safety() -> Any:
        """The checkpoint such a version left before ``safety``: this run's state before
        ``filter``, its edge to filter turned into one to safety, nothing after it."""
        saver = await open_checkpointer(database)
        history = [s async for s in compile_episode_graph(saver).aget_state_history(thread)]
        (before,) = [s for s in history if s.next == ("filter",)]
        stored = await saver.aget_tuple(before.config)
        await saver.conn.close()
        checkpoint_id = before.config["configurable"]["checkpoint_id"]
        with contextlib.closing(sqlite3.connect(database)) as db, db:
            for table in ("checkpoints", "writes"):
                db.execute(f"DELETE FROM {table} WHERE checkpoint_id >= ?", (checkpoint_id,))
        versions = dict(stored.checkpoint["channel_versions"])
        versions["branch:to:safety"] = versions.pop("branch:to:filter")
        values = dict(stored.checkpoint["channel_values"])
        values["branch:to:safety"] = values.pop("branch:to:filter", None)
        legacy = {**stored.checkpoint, "channel_versions": versions, "channel_values": values}
        saver = await open_checkpointer(database)
        await saver.aput(before.parent_config, legacy, stored.metadata, versions)
        return saver

    async def resume() -> tuple[Any, dict[str, Any], Counter]:
        saver = await waiting_for_safety()
        graph = compile_episode_graph(saver)
        stuck = await graph.aget_state(thread)
        llm = build_client(config.llm, cache_path=config.llm.cache.path)
        context = EpisodeContext(config=config, llm=llm, run_dir=out)
        try:
            episode = await drive_episode(graph, job, context, job.episode_id)
        finally:
            await llm.aclose()
            await saver.conn.close()
        return stuck, episode, context.executions

    stuck, episode, executions = asyncio.run(resume())
    assert stuck.next == () and "episode" not in stuck.values  # what such a run left
    assert episode == finished
    assert executions["filter"] == 1 and executions["session"] == 0
