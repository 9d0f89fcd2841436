"""What a run stores when things go wrong: no configured secret anywhere in the run directory
(a server that echoes the API key in its 401 body), an episode whose file cannot be written
is that episode's failure only, and ``mcu estimate`` never touches the user's Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import load_config
from mcu_sim.runner.estimate import estimate_run
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.runner import STORE_STEP, EpisodeRunner, failed_jobs, plan_jobs
from mcu_sim.runner.scrub import Scrubber, secret_values
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault, schema_name
from mcu_sim.testing.scripted import scripted_answer

API_KEY = "fake-key-Zq81VxKp4Lm2Tt9Rw7Yy"


def _config(server: FakeOpenAIServer, tmp_path: Path, *extra: str) -> Any:
    return load_config(
        None,
        [
            "images.enabled=false",
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={server.url}",
            "llm.provider.model=fake-model",
            "llm.provider.api_key_env=MCU_TEST_API_KEY",
            f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
            *extra,
        ],
    )


class _EchoesTheKey:
    """A server that refuses with the key it was sent in its 401 body, as some do: every
    judge call (the safety node notes it and goes on), and the second events call (that
    episode fails). A narrative even quotes it (an answer can echo anything), so it is in
    the graph state itself."""

    def __init__(self) -> None:
        self.events = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        refusal = Fault.status(401, message=f"Incorrect API key provided: {API_KEY}.")
        role = schema_name(body)
        if role == "JudgeVerdict":
            return refusal
        if role == "NarrativeOutput":
            return json.dumps({"narrative": f"A life in three sentences, key {API_KEY}."})
        if role == "EventsOutput":
            with self.lock:
                self.events += 1
                if self.events == 2:
                    return refusal
        return scripted_answer(body)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_no_secret_reaches_the_run_directory(
    fake_openai: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCU_TEST_API_KEY", API_KEY)
    fake_openai.handler = _EchoesTheKey()
    config = _config(fake_openai, tmp_path)
    out = tmp_path / "run"
    report = asyncio.run(EpisodeRunner(config, out, max_in_flight=1).run_jobs(plan_jobs(2, 5)))
    # the key really went out, and really came back in the refusals
    sent = hashlib.sha256(f"Bearer {API_KEY}".encode()).hexdigest()
    assert {r.auth_sha256 for r in fake_openai.chat_requests} == {sent}
    assert report.finished == ["ep-00000005"] and list(report.failed) == ["ep-00000006"]
    assert API_KEY not in report.failed["ep-00000006"]
    run = RunDir(out)
    record = run.read_failure("ep-00000006")
    assert record["error_type"] == "LLMRequestError" and record["failed_at"] == ["events"]
    traceback = "".join(record["traceback"])
    assert "AuthenticationError" in traceback and "Incorrect API key provided: ***" in traceback
    episode = run.read_episode("ep-00000005")
    assert "not judged" in episode["sessions"][0]["safety"]["reason"]
    assert episode["narrative"]["narrative"].endswith("key ***.")
    files = _files(out)
    assert {"manifest.json", "checkpoints.sqlite", "failures/ep-00000006.json"} <= set(files)
    assert any(name.startswith("episodes/") for name in files)
    assert any(name.startswith("shards/") for name in files)
    leaked = [name for name, data in files.items() if API_KEY.encode() in data]
    assert leaked == []
    # the masked checkpoints still load: the failed episode resumes at its failed node
    fake_openai.handler = scripted_answer
    runner = EpisodeRunner(config, out)
    again = asyncio.run(runner.run_jobs(failed_jobs(run)))
    assert again.finished == ["ep-00000006"] and runner.executions["persona"] == 0


def test_secret_values_and_masking() -> None:
    config = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            "llm.provider.api_key_env=MY_KEY",
            "run.postgres_dsn_env=MY_DSN",
        ],
    )
    environ = {"MY_KEY": API_KEY, "MY_DSN": "postgresql://bob:s3cret-pass@db:5432/x"}
    values = secret_values(config, environ)
    assert values == (
        "postgresql://bob:s3cret-pass@db:5432/x",
        "fake-key-Zq81VxKp4Lm2Tt9Rw7Yy",
        "s3cret-pass",
    )
    scrub = Scrubber(values)
    data = {"a": [f"key {API_KEY}", {"b": "pass s3cret-pass"}], "n": 3}
    assert scrub.data(data) == {"a": ["key ***", {"b": "pass ***"}], "n": 3}
    raw = f"x{API_KEY}y".encode()
    assert scrub.raw(raw) == b"x" + b"*" * len(API_KEY) + b"y"  # same length
    assert secret_values(config, {"MY_KEY": "short"}) == ()  # too short to mask safely
    assert not Scrubber(secret_values(load_config(None, []), {}))


# ---------------------------------------------------------------- a write that fails


def test_an_episode_whose_file_cannot_be_written_fails_alone(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "llm.provider.api_key_env=null")
    out = tmp_path / "run"
    run = RunDir(out)
    run.create()
    blocked = run.episode_path("ep-00000002")
    blocked.mkdir()  # the episode file's place is taken: writing it fails
    report = asyncio.run(EpisodeRunner(config, out, max_in_flight=2).run_jobs(plan_jobs(4, 1)))
    assert sorted(report.finished) == ["ep-00000001", "ep-00000003", "ep-00000004"]
    assert list(report.failed) == ["ep-00000002"]
    assert "IsADirectoryError" in report.failed["ep-00000002"]
    record = run.read_failure("ep-00000002")
    assert record["failed_at"] == [STORE_STEP] and record["attempts"] == 1
    assert run.finished_ids() == ["ep-00000001", "ep-00000003", "ep-00000004"]
    manifest = run.read_manifest()
    assert manifest["episodes_finished"] == 3 and manifest["episodes_failed"] == 1
    # retry-failed writes it once the way is clear, without running a node again
    blocked.rmdir()
    requests = len(fake_openai.chat_requests)
    runner = EpisodeRunner(config, out)
    again = asyncio.run(runner.run_jobs(failed_jobs(run)))
    assert again.finished == ["ep-00000002"] and len(fake_openai.chat_requests) == requests
    assert sum(runner.executions.values()) == 0 and run.failed_ids() == []


# ---------------------------------------------------------------- estimate


def test_estimate_dry_run_never_touches_the_configured_postgres(
    fake_openai: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing listens on port 9: a dry run that used this DSN would fail to connect
    monkeypatch.setenv("MCU_TEST_PG_DSN", "postgresql://mcu@127.0.0.1:9/postgres")
    config = _config(
        fake_openai,
        tmp_path,
        "llm.provider.api_key_env=null",
        "run.postgres_dsn_env=MCU_TEST_PG_DSN",
        "run.backend=ray",
    )
    result = estimate_run(config, 10)
    assert result.calls > 0 and {r.step for r in result.roles} >= {"persona", "dialogue"}
    assert fake_openai.chat_requests == []  # the dry run used its own endpoint
