"""Run-directory outputs after the fact: the atomic shard rebuild (a crash injected at every
file operation), ``mcu filter`` (run lock, shards, the run's own config) and the run-level
over-matched filter that ``mcu run`` applies when it ends."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.manifest import run_lock
from mcu_sim.runner.outputs import RunDir, atomic_write_json, json_document
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.runner.shards import ShardWriter, rebuild_shards
from mcu_sim.testing.fake_openai import FakeOpenAIServer, client_for
from mcu_sim.testing.scripted import scripted_answer


def _shard_ids(run: RunDir) -> list[str]:
    """What a reader sees: the shard set ``shards.json`` names, line by line."""
    return [
        json.loads(line)["episode_id"]
        for path in run.shard_paths()
        for line in path.read_text().splitlines()
    ]


def _shard_texts(run: RunDir) -> list[str]:
    return [line for path in run.shard_paths() for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- atomic shard rebuild


class _Crash(BaseException):
    """The process dying (not an exception any code may catch and go on after)."""


class _CrashAt:
    """Counts file renames and deletions in the shards folder; the ``at``-th one (0-based)
    does not happen: the process "dies" just before it."""

    def __init__(self, shards: Path, at: int | None) -> None:
        self.shards, self.at, self.count, self.fired = shards, at, 0, False
        self.replace, self.unlink = os.replace, os.unlink

    def _step(self, path: Any) -> None:
        if self.fired or Path(path).parent != self.shards:
            return
        if self.count == self.at:
            self.fired = True
            raise _Crash
        self.count += 1

    def fake_replace(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        self._step(dst)
        self.replace(src, dst, *args, **kwargs)

    def fake_unlink(self, path: Any, *args: Any, **kwargs: Any) -> None:
        if not str(Path(path).name).startswith("."):  # temp files are not steps
            self._step(path)
        self.unlink(path, *args, **kwargs)


def _episode_run(root: Path, n: int) -> RunDir:
    run = RunDir(root)
    run.create()
    for i in range(n):
        atomic_write_json(run.episode_path(f"e{i}"), {"episode_id": f"e{i}", "v": "old"})
    writer = ShardWriter(run, 2)
    writer.load()
    writer.flush()
    return run


def _rewrite_all(run: RunDir) -> None:
    for episode_id in run.finished_ids():
        atomic_write_json(run.episode_path(episode_id), {"episode_id": episode_id, "v": "new"})


def test_rebuilding_shards_survives_a_crash_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"e{i}" for i in range(5)]
    # how many renames and deletions a whole rebuild makes
    probe = _episode_run(tmp_path / "probe", 5)
    _rewrite_all(probe)
    counter = _CrashAt(probe.shards, None)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", counter.fake_replace)
        patch.setattr(os, "unlink", counter.fake_unlink)
        assert rebuild_shards(probe, 3) == 2
    steps = counter.count
    assert steps >= 2 + 1 + 3  # two new files, the swap, three old files removed
    assert [p.name for p in probe.shard_paths()] == [
        "shard-g0001-00000.jsonl",
        "shard-g0001-00001.jsonl",
    ]

    for at in range(steps):
        run = _episode_run(tmp_path / f"run{at}", 5)
        old = _shard_texts(run)
        _rewrite_all(run)
        crash = _CrashAt(run.shards, at)
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", crash.fake_replace)
            patch.setattr(os, "unlink", crash.fake_unlink)
            with pytest.raises(_Crash):
                rebuild_shards(run, 3)
        seen = _shard_texts(run)
        assert seen == old or all('"v":"new"' in line for line in seen), at
        assert sorted(_shard_ids(run)) == ids, at  # a complete set, old or new
        # the next run (or rebuild) starts from a consistent set and clears the leftovers
        writer = ShardWriter(run, 3)
        writer.load()
        assert writer.pending == [] and sorted(_shard_ids(run)) == ids, at
        listed = {p.name for p in run.shard_paths()}
        assert {p.name for p in run.shards.glob("shard-*.jsonl")} == listed, at
        rebuild_shards(run, 3)
        assert all('"v":"new"' in line for line in _shard_texts(run)), at
        assert sorted(_shard_ids(run)) == ids and len(run.shard_paths()) == 2, at


def test_a_shard_is_written_line_by_line_and_a_failure_midway_leaves_the_old_one(
    tmp_path: Path,
) -> None:
    run = _episode_run(tmp_path / "run", 3)  # shards of 2: e0 e1 | e2
    old = _shard_texts(run)
    _rewrite_all(run)
    run.episode_path("e1").write_text("{cut", encoding="utf-8")  # a file that fails to parse
    with pytest.raises(json.JSONDecodeError):
        rebuild_shards(run, 2)
    assert _shard_texts(run) == old  # the readers' set is untouched
    assert not [p for p in run.shards.iterdir() if p.name.startswith(".")]  # no temp file left
    atomic_write_json(run.episode_path("e1"), {"episode_id": "e1", "v": "new"})
    rebuild_shards(run, 2)
    lines = _shard_texts(run)
    assert [json.loads(line)["episode_id"] for line in lines] == ["e0", "e1", "e2"]
    assert all('"v":"new"' in line for line in lines)


def test_shard_writer_extends_a_rebuilt_set(tmp_path: Path) -> None:
    run = _episode_run(tmp_path / "run", 3)
    rebuild_shards(run, 2)
    atomic_write_json(run.episode_path("e3"), {"episode_id": "e3"})
    atomic_write_json(run.episode_path("e4"), {"episode_id": "e4"})
    writer = ShardWriter(run, 2)
    writer.load()
    assert writer.pending == ["e3", "e4"]
    writer.add("e3")  # fills the partial shard of generation 1
    writer.flush()
    names = [p.name for p in run.shard_paths()]
    assert names == [
        "shard-g0001-00000.jsonl",
        "shard-g0001-00001.jsonl",
        "shard-g0001-00002.jsonl",
    ]
    assert _shard_ids(run) == ["e0", "e1", "e2", "e3", "e4"]


# ---------------------------------------------------------------- mcu filter


def _overrides(server: FakeOpenAIServer, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={server.url}",
        "llm.provider.model=fake-model",
        f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
        *extra,
    ]


def test_mcu_filter_uses_the_run_config_rebuilds_shards_and_takes_the_lock(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    # a two-session run: with the default config (3-5 sessions) every episode would be
    # marked for its session count
    sets = _overrides(fake_openai, tmp_path, "images.enabled=false", "run.shard_size=2")
    sets += ["episode.sessions_min=2", "episode.sessions_max=2"]
    cli = CliRunner()
    run_cmd = ["run", "-n", "3", "--seed", "20", "-o", str(out), "--no-progress"]
    result = cli.invoke(app, [*run_cmd, *[f"--set={s}" for s in sets]])
    assert result.exit_code == 0, result.output
    run = RunDir(out)
    before = _shard_texts(run)

    with run_lock(run):
        locked = cli.invoke(app, ["filter", str(out)])
    assert locked.exit_code == 4 and "in use by" in locked.output

    result = cli.invoke(app, ["filter", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "session_count" not in report["removals_by_rule"]
    assert report["episodes_filtered"] == 0 and report["shards"] == 2

    # a stricter threshold marks every episode; the shards carry the new marks
    result = cli.invoke(app, ["filter", str(out), "--set", "filters.min_sessions=3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["episodes_filtered"] == 3
    shards = [json.loads(line) for line in _shard_texts(run)]
    assert len(shards) == 3 and all(e["status"] == "filtered" for e in shards)
    assert _shard_texts(run) != before
    assert {e["episode_id"]: e for e in shards} == {
        i: run.read_episode(i) for i in run.finished_ids()
    }
    index = [json.loads(line) for line in run.index.read_text().splitlines()]
    assert {r["status"] for r in index} == {"filtered"}
    assert cli.invoke(app, ["filter", str(tmp_path / "nothing")]).exit_code == 2


# ---------------------------------------------------------------- run-level filter in mcu run


def _database_image_run(fake_openai: FakeOpenAIServer, tmp_path: Path) -> tuple[Any, Path, Any]:
    """Two one-session episodes whose album photos come from the small shipped database
    (so they repeat), with K=2: (config, run directory, run report)."""
    fake_openai.handler = scripted_answer
    images = [
        "images.face.enabled=false",
        "images.photomaker.enabled=false",
        "images.web_search.enabled=false",
        "images.qa.enabled=false",
        "filters.max_matches_per_db_image=2",
        "episode.sessions_min=1",
        "episode.sessions_max=1",
        "run.shard_size=2",
    ]
    config = load_config(None, _overrides(fake_openai, tmp_path, *images))
    out = tmp_path / "run"
    client = client_for(fake_openai, tmp_path / "llm-cache.sqlite")
    runner = EpisodeRunner(config, out, llm=client)
    report = asyncio.run(runner.run_jobs(plan_jobs(2, 30)))
    assert report.failed == {} and len(report.finished) == 2
    return config, out, report


def test_mcu_run_applies_the_over_matched_rule_across_the_run(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Album photos retrieved from the small shipped database repeat across episodes; with
    K=2 the later uses are marked once the run ends, and the shards hold the marks."""
    _, out, report = _database_image_run(fake_openai, tmp_path)
    run = RunDir(out)
    episodes = [Episode.model_validate(run.read_episode(i)) for i in run.finished_ids()]
    uses: dict[str, int] = {}
    for episode in episodes:
        for request in episode.image_requests:
            if request.image and request.image.db_id:
                uses[request.image.db_id] = uses.get(request.image.db_id, 0) + 1
    assert max(uses.values()) > 2, uses  # the test needs a repeated image
    marks = [r for e in episodes for r in e.removals if r.rule == "over_matched_image"]
    assert marks and report.run_removals == {"over_matched_image": len(marks)}
    assert all("matched more than 2 times" in r.reason for r in marks)
    # the shards, the index and the manifest agree with the episode files
    assert {e["episode_id"]: e for e in map(json.loads, _shard_texts(run))} == {
        e.episode_id: run.read_episode(e.episode_id) for e in episodes
    }
    index = {r["episode_id"]: r for r in map(json.loads, run.index.read_text().splitlines())}
    assert sum(r["removals"].get("over_matched_image", 0) for r in index.values()) == len(marks)
    invocation = run.read_manifest()["invocations"][-1]
    assert invocation["run_removals"] == {"over_matched_image": len(marks)}
    # `mcu filter` computes the same marks (it applies the same rule to the same data)
    refiltered = CliRunner().invoke(app, ["filter", str(out)])
    assert refiltered.exit_code == 0, refiltered.output
    counts = json.loads(refiltered.output)["removals_by_rule"]
    assert counts["over_matched_image"] == len(marks)


def test_the_run_level_rule_and_mcu_filter_hold_one_episode_at_a_time(
    fake_openai: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At STARK's size (93K episodes) a list of every episode does not fit in memory: both
    passes read, mark and write one episode at a time, with the same marks."""
    import gc

    from mcu_sim.dataset.filter_run import apply_run_rules, refilter
    from mcu_sim.graphs.quality import filter_settings

    config, out, _ = _database_image_run(fake_openai, tmp_path)
    run = RunDir(out)
    for n, source in enumerate(run.finished_ids() * 3):  # 8 episodes sharing images
        clone = {**run.read_episode(source), "episode_id": f"ep-clone-{n}"}
        atomic_write_json(run.episode_path(clone["episode_id"]), clone)
    run.rebuild_index()
    alive: list[int] = []
    read = RunDir.read_episode

    def live_episodes() -> int:  # type(), not isinstance: no lazy module attribute is touched
        return sum(type(o) is Episode for o in gc.get_objects())

    gc.collect()
    before = live_episodes()  # what other tests left behind

    def counting_read(self: RunDir, episode_id: str) -> dict[str, Any]:
        alive.append(live_episodes() - before)
        return read(self, episode_id)

    monkeypatch.setattr(RunDir, "read_episode", counting_read)
    report = refilter(out, config)
    assert report["episodes"] == 8 and len(alive) >= 8
    assert max(alive) <= 3, alive  # a list of all would hold 8
    marks = report["removals_by_rule"]["over_matched_image"]
    alive.clear()
    assert apply_run_rules(run, filter_settings(config), 2) == {"over_matched_image": marks}
    assert alive and max(alive) <= 3, alive
    episodes = [Episode.model_validate(read(run, i)) for i in run.finished_ids()]
    assert sum(r.rule == "over_matched_image" for e in episodes for r in e.removals) == marks


def test_json_document_matches_the_standard_library_and_falls_back_for_what_orjson_refuses() -> (
    None
):
    data = {
        "b": [1, 2.5, -0.0, 0.1, {"z": None, "a": 'é ünïcode \u2028 "quoted"'}],
        "a": True,
        "nested": {"k": [[], {}, ""], "big": 2**63 - 1},
    }
    expected = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    assert json_document(data).decode("utf-8") == expected
    tiny = {"score": 1e-07}  # the one difference: exponents without padding ("1e-7")
    assert json.loads(json_document(tiny)) == tiny
    beyond_64_bits = {"seed": 2**70, "x": [1]}
    text = json_document(beyond_64_bits).decode("utf-8")
    assert json.loads(text) == beyond_64_bits and text.endswith("\n")


def test_the_shard_writer_continues_at_the_highest_numbered_shard_after_a_reload(
    tmp_path: Path,
) -> None:
    """Eleven full shards and a partial twelfth: names sort differently as text and as
    numbers past shard 9 in some tools, so the writer's last shard must follow numbers."""
    from mcu_sim.runner.outputs import atomic_write_text

    run = RunDir(tmp_path / "run")
    run.create()
    writer = ShardWriter(run, 2)
    writer.load()
    for i in range(23):
        atomic_write_text(run.episode_path(f"e{i:02d}"), json.dumps({"episode_id": f"e{i:02d}"}))
        writer.add(f"e{i:02d}")
    writer.flush()
    again = ShardWriter(run, 2)
    again.load()
    assert (
        again._last_shard()
        == max(again.shards, key=lambda n: int(n[6:11]))
        == ("shard-00011.jsonl")
    )
    assert again.shards["shard-00011.jsonl"] == ["e22"]
    atomic_write_text(run.episode_path("e23"), json.dumps({"episode_id": "e23"}))
    assert again.fills_a_shard()
    (written,) = again.add("e23")
    assert written.name == "shard-00011.jsonl" and again.shards[written.name] == ["e22", "e23"]
    atomic_write_text(run.episode_path("e24"), json.dumps({"episode_id": "e24"}))
    again.add("e24")
    again.flush()
    assert again._last_shard() == "shard-00012.jsonl"


def test_a_shard_line_holds_the_episode_file_exactly_in_one_compact_line() -> None:
    from mcu_sim.runner.shards import shard_line

    data = {
        "episode_id": "ep-1",
        "text": "Zoë said “hi” 👋\nthen left",
        "usage": {"cost_usd": 1.5e-07, "tokens": 123},
        "big": 123456789012345678901234567890,  # beyond 64 bits: must keep every digit
        "nested": [{"b": 2, "a": [1, None, True]}],
    }
    for document in (json_document(data), json_document({**data, "big": 7})):
        line = shard_line(document)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == json.loads(document)
        assert "Zoë".encode() in line and b"\\u" not in line  # UTF-8 as is, not escaped
        keys = list(json.loads(line))
        assert keys == list(json.loads(document)) == sorted(keys)
    assert json.loads(shard_line(json_document(data)))["big"] == 123456789012345678901234567890
    with pytest.raises(ValueError):
        shard_line(b'{"episode_id": "cut')


def test_a_long_number_is_any_run_of_19_digits() -> None:
    import random
    import re

    from mcu_sim.runner.shards import has_long_number

    nineteen = re.compile(rb"[0-9]{19}")  # the definition
    draw = random.Random(7)
    for _ in range(5000):
        length = draw.randint(0, 60)
        document = bytes(draw.choice(b"0123456789 .,-e") for _ in range(length))
        assert has_long_number(document) == bool(nineteen.search(document)), document
    assert has_long_number(b'{"big": 1234567890123456789}')
    assert not has_long_number(b'{"cost": 0.123456789012345678, "n": 123456789}')  # 18 and 9
