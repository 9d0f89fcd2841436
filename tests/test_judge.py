"""``mcu judge``: the evaluator role against the real fake OpenAI endpoint, on runs made by
the real episode graph (real episode files and PNG images), through the real CLI where a
user would go. Scripted judge answers are derived from the request's own schema, so every
expected number below is counted from what the test scripted, not from the code under
test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.dataset.judge.run import JudgeOptions, judge_run
from mcu_sim.dataset.judge.stats import bootstrap_interval, unswap
from mcu_sim.dataset.judge.versus import versus_run
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault, client_for
from mcu_sim.testing.scripted import schema_of, scripted_answer
from mcu_sim.viewer.sample import attach_images, generate_run

RATING_CRITERIA = [
    "coherence",
    "consistency",
    "image_sharing_turn_relevance",
    "image_dialogue_relevance",
    "image_persona_relevance",
    "time_interval",
    "experience",
]
STARK_HUMAN = [3.4, 3.52, 3.07, 2.49, 3.35, 3.75, 3.73]  # §4.3, in the order above


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four generated episodes of two sessions; the first has real aligned images."""
    root = tmp_path_factory.mktemp("judge") / "run"
    with FakeOpenAIServer(scripted_answer) as server:
        assert generate_run(root, server, [11, 12, 13, 14], sessions=2) == {}
    attach_images(root, "ep-00000011")
    return root


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the base run (no judge/ folder yet)."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def clone_run(source: Path, target: Path, count: int, prefix: int) -> Path:
    """``count`` episodes copied from ``source`` under new ids (a bigger run, quickly)."""
    src, dst = RunDir(source), RunDir(target)
    dst.create()
    ids = src.finished_ids()
    for k in range(count):
        episode = src.read_episode(ids[k % len(ids)])
        episode["episode_id"] = f"ep-{prefix + k:08d}"
        for session in episode["sessions"]:  # every line says where it comes from
            for turn in session["turns"]:
                if turn["utterance"]:
                    turn["utterance"] = f"<{episode['episode_id']}> {turn['utterance']}"
        dst.write_episode(episode)
    return target


def ratings_handler(score_of: dict[str, int], default: int = 3):
    """Answers rating requests with ``score_of[criterion]`` (else ``default``)."""

    def handler(body: dict[str, Any]) -> Any:
        name, schema = schema_of(body)
        assert name == "EpisodeRatings", name
        return {
            c: {"justification": f"scripted {c}", "score": score_of.get(c, default)}
            for c in schema["properties"]
        }

    return handler


def always_first_shown(body: dict[str, Any]) -> Any:
    """A judge with pure position bias: it prefers dialogue A on every criterion."""
    _, schema = schema_of(body)
    return {c: {"justification": "A reads better", "choice": "A"} for c in schema["properties"]}


def user_text(body: dict[str, Any]) -> str:
    content = body["messages"][1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def first_line(episode: dict[str, Any]) -> str:
    turn = next(t for t in episode["sessions"][0]["turns"] if t["utterance"])
    return f"{turn['speaker']}: {turn['utterance']}"


def request_for(episode: dict[str, Any], server: FakeOpenAIServer) -> dict[str, Any] | None:
    """The rating request that showed ``episode`` (found by its first line)."""
    line = first_line(episode)
    found = [r.body for r in server.chat_requests if line in user_text(r.body)]
    return found[0] if found else None


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


def judge(run_dir: Path, server: FakeOpenAIServer, cache: Path, **options: Any) -> Any:
    config = load_config(None, options.pop("overrides", []))
    llm = client_for(server, cache, **options.pop("provider", {}))
    return asyncio.run(judge_run(run_dir, config, llm, JudgeOptions(**options)))


# ------------------------------------------------------------------ ratings


def test_ratings_are_parsed_written_and_summarized_next_to_stark(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    scripted = {"coherence": 4, "consistency": 2, "time_interval": 1}
    fake_openai.handler = ratings_handler(scripted)
    report = judge(run, fake_openai, tmp_path / "c.sqlite", sample=3, seed=5)
    assert len(report.judged) == 3 and report.failed == {}
    records = lines(run / "judge" / "scores.jsonl")
    assert sorted(r["episode_id"] for r in records) == sorted(report.judged)
    for record in records:
        assert record["criteria"]["coherence"] == {
            "justification": "scripted coherence",
            "score": 4,
        }
        assert record["criteria"]["time_interval"]["score"] == 1
    summary = json.loads((run / "judge" / "summary.json").read_text())
    criteria = summary["criteria"]
    assert summary["criteria_order"] == RATING_CRITERIA and set(criteria) == set(RATING_CRITERIA)
    assert [criteria[c]["stark_human"] for c in RATING_CRITERIA] == STARK_HUMAN
    assert criteria["coherence"]["mean"] == 4 and criteria["consistency"]["mean"] == 2
    assert criteria["coherence"]["ci95"] == [4.0, 4.0]
    # the system prompt shows the 4-point scale, the user prompt the episode's own lines
    body = fake_openai.chat_requests[0].body
    assert "1 = not at all; 2 = a little; 3 = somewhat; 4 = a lot" in body["messages"][0]["content"]
    for record in records:
        episode = RunDir(run).read_episode(record["episode_id"])
        assert request_for(episode, fake_openai) is not None


def test_criteria_that_do_not_apply_are_not_asked_and_not_averaged(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """An augmented-style dialogue (no persona, no events, one session, no images) is asked
    about coherence only; the images-without-pictures episodes skip the picture criteria."""

    def strip(data: dict[str, Any]) -> None:
        data["persona"] = []
        session = data["sessions"][0]
        for key in ("time_interval", "experience", "experience_op"):
            session[key] = None
        for turn in session["turns"]:
            turn["sharing"] = None
        data["sessions"] = [session]

    runs = RunDir(run)
    plain = runs.read_episode("ep-00000012")
    strip(plain)
    runs.write_episode(plain)  # raw JSON, as an imported or augmented record may be
    fake_openai.handler = ratings_handler({}, default=2)
    judge(run, fake_openai, tmp_path / "c.sqlite")
    asked = [set(schema_of(r.body)[1]["properties"]) for r in fake_openai.chat_requests]
    assert sorted(len(a) for a in asked) == [1, 5, 5, 7]
    assert set(schema_of(request_for(plain, fake_openai))[1]["properties"]) == {"coherence"}
    records = {r["episode_id"]: r["criteria"] for r in lines(run / "judge" / "scores.jsonl")}
    stripped = records["ep-00000012"]
    assert stripped["coherence"]["score"] == 2
    assert all(stripped[c]["score"] is None and stripped[c]["na"] for c in RATING_CRITERIA[1:])
    # ep-00000011 has aligned pictures: every criterion applies; 13 and 14 have none
    assert all(records["ep-00000011"][c]["score"] == 2 for c in RATING_CRITERIA)
    assert records["ep-00000013"]["image_dialogue_relevance"]["score"] is None
    criteria = json.loads((run / "judge" / "summary.json").read_text())["criteria"]
    assert criteria["coherence"]["n"] == 4
    assert criteria["consistency"] == {**criteria["consistency"], "n": 3, "not_applicable": 1}
    assert criteria["image_dialogue_relevance"]["n"] == 1
    assert criteria["image_dialogue_relevance"]["not_applicable"] == 3


def test_a_malformed_answer_is_repaired_or_recorded(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    good = ratings_handler({}, default=3)

    def out_of_scale(body: dict[str, Any]) -> Any:
        answer = good(body)
        answer["coherence"]["score"] = 7
        return answer

    # the first episode judged: out of scale, then valid (one repair); the second: never
    # valid in the three tries (two repair turns)
    outcomes = (out_of_scale, good, "no json here", "still not json", "{}")
    fake_openai.script(*outcomes, default=good)
    fake_openai.handler = _calling(fake_openai.handler)
    report = judge(run, fake_openai, tmp_path / "c.sqlite", sample=2, max_in_flight=1)
    assert len(report.judged) == 1 and len(report.failed) == 1
    [record] = lines(run / "judge" / "scores.jsonl")
    assert record["repairs"] == 1 and record["criteria"]["coherence"]["score"] == 3
    repair = fake_openai.chat_requests[1].body["messages"]
    assert "coherence" in repair[-1]["content"]  # the validation error was fed back
    [failure] = lines(run / "judge" / "failures.jsonl")
    assert failure["episode_id"] in report.failed and failure["raw_text"] == "{}"
    summary = json.loads((run / "judge" / "summary.json").read_text())
    assert summary["episodes_judged"] == 1 and summary["episodes_failed"] == 1
    # a re-run tries the failed episode again (answers are valid now) and skips the other
    again = judge(run, fake_openai, tmp_path / "c.sqlite", sample=2, max_in_flight=1)
    assert again.judged == list(report.failed) and again.skipped == [record["episode_id"]]


def _calling(scripted: Any):
    """Scripted outcomes may be handlers themselves: call them with the body."""

    def handler(body: dict[str, Any]) -> Any:
        outcome = scripted(body)
        return outcome(body) if callable(outcome) else outcome

    return handler


def test_answers_are_cached_and_judged_episodes_skipped(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    cache = tmp_path / "c.sqlite"
    first = judge(run, fake_openai, cache, sample=3)
    assert len(fake_openai.chat_requests) == 3
    scores = (run / "judge" / "scores.jsonl").read_text()
    fake_openai.reset()
    # the same command again: nothing left to judge, nothing sent
    again = judge(run, fake_openai, cache, sample=3)
    assert again.judged == [] and sorted(again.skipped) == sorted(first.judged)
    assert fake_openai.chat_requests == []
    # judged afresh (judge/ removed): every answer comes from the cache
    shutil.rmtree(run / "judge")
    fresh = judge(run, fake_openai, cache, sample=3)
    assert fake_openai.chat_requests == [] and fresh.usage.cached_calls == 3
    renewed = {r["episode_id"]: r["criteria"] for r in lines(run / "judge" / "scores.jsonl")}
    assert renewed == {
        json.loads(x)["episode_id"]: json.loads(x)["criteria"] for x in scores.splitlines()
    }


def test_budget_stop_keeps_judged_episodes_and_a_rerun_finishes(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    prices = {"prices": {"fake-model": {"input": 1000.0, "output": 0.0}}}
    cache = tmp_path / "c.sqlite"
    first = judge(run, fake_openai, cache, provider=prices, max_cost=1e-9, max_in_flight=1)
    assert first.stopped_for_budget and len(first.judged) == 1
    assert len(lines(run / "judge" / "scores.jsonl")) == 1
    rest = judge(run, fake_openai, cache, provider=prices, max_in_flight=1)
    assert not rest.stopped_for_budget and len(rest.judged) == 3
    ids = [r["episode_id"] for r in lines(run / "judge" / "scores.jsonl")]
    assert sorted(ids) == RunDir(run).finished_ids()  # each judged exactly once


def test_killed_mid_way_a_rerun_judges_each_episode_once(run: Path, tmp_path: Path) -> None:
    """The real CLI in its own process, killed (SIGKILL) while it judges; then re-run."""
    with FakeOpenAIServer(scripted_answer, latency=0.4) as server:
        config = tmp_path / "judge.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "llm": {
                        "provider": {"kind": "openai_compatible", "base_url": server.url},
                        "cache": {"path": str(tmp_path / "cli-cache.sqlite")},
                    }
                }
            )
        )
        command = [sys.executable, "-m", "mcu_sim.cli", "judge", str(run), "-c", str(config)]
        command += ["--max-in-flight", "1"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        scores = run / "judge" / "scores.jsonl"
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not (scores.is_file() and len(scores.read_text().splitlines()) >= 1):
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(10)
        killed_at = len(lines(scores))
        assert 1 <= killed_at < 4
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        assert f"skipped (already judged) {killed_at}" in finished.stderr
    ids = [r["episode_id"] for r in lines(scores)]
    assert sorted(ids) == RunDir(run).finished_ids()


def test_vision_sends_the_pictures_and_text_mode_their_descriptions(
    run: Path, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    episode = RunDir(run).read_episode("ep-00000011")
    requests = {r["id"]: r for r in episode["image_requests"]}
    shared = [t for s in episode["sessions"] for t in s["turns"] if t["sharing"]]
    aligned = [t for t in shared if requests[t["request_id"]]["status"] == "aligned"]
    assert 0 < len(aligned) < len(shared)
    fake_openai.handler = scripted_answer
    judge(run, fake_openai, tmp_path / "v.sqlite", overrides=["evaluation.vision=true"], sample=4)
    parts = request_for(episode, fake_openai)["messages"][1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == len(aligned)
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
    assert all(t["sharing"]["image_description"] in parts[0]["text"] for t in shared)
    fake_openai.reset()
    shutil.rmtree(run / "judge")
    judge(run, fake_openai, tmp_path / "t.sqlite", sample=4)
    assert all(isinstance(r.body["messages"][1]["content"], str) for r in fake_openai.chat_requests)


# ------------------------------------------------------------------ head to head


def test_position_swaps_are_recorded_and_undone_in_the_tally(
    base_run: Path, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    first = clone_run(base_run, tmp_path / "first", 12, 100)
    second = clone_run(base_run, tmp_path / "second", 12, 200)
    fake_openai.handler = always_first_shown
    config = load_config(None, [])
    llm = client_for(fake_openai, tmp_path / "c.sqlite")
    report = asyncio.run(versus_run(first, second, config, llm, JudgeOptions(seed=3)))
    assert len(report.judged) == 12
    pairs = lines(first / "judge" / "versus" / "second" / "pairs.jsonl")
    assert sum(p["swapped"] for p in pairs) == 6
    assert len(fake_openai.chat_requests) == 12
    for pair in pairs:
        tags = [f"<{pair[side]['episode_id']}>" for side in ("first", "second")]
        [text] = [
            user_text(r.body)
            for r in fake_openai.chat_requests
            if all(tag in user_text(r.body) for tag in tags)
        ]
        shown_as_a = text.split("=== Dialogue B ===")[0]
        assert (tags[1] in shown_as_a) == pair["swapped"]
        assert (tags[0] in shown_as_a) != pair["swapped"]
        expected = "lose" if pair["swapped"] else "win"
        assert {c["outcome"] for c in pair["criteria"].values() if c["choice"]} == {expected}
    summary = json.loads((first / "judge" / "versus" / "second" / "summary.json").read_text())
    assert summary["pairs_swapped"] == 6
    for row in summary["criteria"].values():
        assert row["win"] == row["lose"] == 6 and row["tie"] == 0
        assert row["win_pct"] == 50.0 and row["first_shown_chosen_pct"] == 100.0


def test_unswap() -> None:
    assert [unswap(c, False) for c in ("A", "tie", "B")] == ["win", "tie", "lose"]
    assert [unswap(c, True) for c in ("A", "tie", "B")] == ["lose", "tie", "win"]


# ------------------------------------------------------------------ statistics


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for size in (10, 100, 1000):
        values = rng.integers(1, 5, size=size)
        low, high = bootstrap_interval(values.tolist(), 2000, seed=7)
        assert low <= values.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    again = bootstrap_interval(list(range(1, 5)) * 5, 2000, seed=7)
    assert again == bootstrap_interval(list(range(1, 5)) * 5, 2000, seed=7)


# ------------------------------------------------------------------ CLI and estimate


def test_cli_estimate_then_judge(run: Path, tmp_path: Path, fake_openai: FakeOpenAIServer) -> None:
    fake_openai.handler = scripted_answer
    config = tmp_path / "judge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "llm": {
                    "provider": {
                        "kind": "openai_compatible",
                        "base_url": fake_openai.url,
                        "model": "fake-model",
                        "prices": {"fake-model": {"input": 2.0, "output": 8.0}},
                    },
                    "cache": {"path": str(tmp_path / "c.sqlite")},
                }
            }
        )
    )
    base = ["judge", str(run), "-c", str(config), "--sample", "3"]
    estimate = CliRunner().invoke(app, [*base, "--estimate"])
    assert estimate.exit_code == 0, estimate.output
    assert "3 episodes: 3 LLM calls" in estimate.output and fake_openai.chat_requests == []
    assert "evaluator" in estimate.output and "unknown" not in estimate.output
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert len(fake_openai.chat_requests) == 3
    assert json.loads((run / "judge" / "summary.json").read_text())["episodes_judged"] == 3
    after = CliRunner().invoke(app, [*base, "--estimate"])
    assert "0 episodes to judge" in after.output


def test_cli_reports_a_transport_failure_with_a_clear_exit(
    run: Path, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.handler = lambda body: Fault.status(401, message="bad key")
    config = tmp_path / "judge.yaml"
    provider = {"kind": "openai_compatible", "base_url": fake_openai.url}
    config.write_text(yaml.safe_dump({"llm": {"provider": provider, "cache": {"enabled": False}}}))
    result = CliRunner().invoke(app, ["judge", str(run), "-c", str(config), "--sample", "1"])
    assert result.exit_code == 1
    [failure] = lines(run / "judge" / "failures.jsonl")
    assert "401" in failure["error"]


# ------------------------------------------------------------------ the report


def test_the_report_shows_the_judge_next_to_stark(
    run: Path, base_run: Path, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> None:
    pytest.importorskip("matplotlib", reason="the [report] extra")
    pytest.importorskip("datasketch", reason="the [report] extra")
    pytest.importorskip("imagehash", reason="the [report] extra")
    fake_openai.handler = ratings_handler({"coherence": 4, "consistency": 1}, default=3)
    judge(run, fake_openai, tmp_path / "c.sqlite")
    fake_openai.handler = always_first_shown
    other = clone_run(base_run, tmp_path / "other", 4, 300)
    llm = client_for(fake_openai, tmp_path / "c.sqlite")
    asyncio.run(versus_run(run, other, load_config(None, []), llm, JudgeOptions()))
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    data = json.loads((run / "report" / "report.json").read_text())
    ratings = data["run"]["judge"]["ratings"]
    assert ratings == json.loads((run / "judge" / "summary.json").read_text())
    html = (run / "report" / "report.html").read_text()
    section = html[html.index('<section id="judge">') :]
    assert '<td>coherence</td><td>4.00 [4.00, 4.00] (n=4)</td><td class="stark">3.4</td>' in section
    assert "<td>consistency</td><td>1.00 [1.00, 1.00] (n=4)</td>" in section
    assert (
        "Head to head against <code>other</code> (4 session pairs, 2 shown in swapped order)"
        in section
    )
    assert (
        "<td>natural flow</td><td>50.0</td><td>0.0</td><td>50.0</td><td>4</td><td>100</td>"
        in section
    )
