"""No configured secret reaches anything a run writes or prints (issue 28, defects 3 and 4).

The secrets are planted where users put them: the API key in its variable, a password in
``base_url``'s userinfo, an ``api-key`` in a configured URL's query, a Postgres DSN with a
password. A server on 127.0.0.1 echoes them back, as servers do, in error bodies, in a
reply and in a 404 that quotes the request path; then every byte of the run folder and the
LLM cache (SQLite files and their WAL included) and the captured stdout/stderr of
``mcu run`` is searched, as written and percent-encoded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mcu_sim.config import load_config
from mcu_sim.config_secrets import Scrubber, provider_secret_values, secret_values
from mcu_sim.runner.scrub import checkpoint_serializer
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault, schema_name
from mcu_sim.testing.scripted import scripted_answer

API_KEY = "planted-key-Qw7Rt5Yu3Io1Pa9S"
PASSWORD = "p@ss/w0rd:Zx9!Lk"  # characters a URL must percent-encode
PASSWORD_IN_URL = quote(PASSWORD, safe="")  # p%40ss%2Fw0rd%3AZx9%21Lk
QUERY_KEY = "qkey-Hn4Jm8Bv2Cx6"
DSN_PASSWORD = "dsn-Pw-Tg5Fr3De1"
SHORT = "x7!"  # too short to mask alone: masked in its context


def _forms(*secrets: str) -> list[bytes]:
    """Each secret as written and percent-encoded (what a server would echo)."""
    forms: set[bytes] = set()
    for secret in secrets:
        forms |= {secret.encode(), quote(secret, safe="").encode(), quote(secret).encode()}
    return sorted(forms)


PLANTED = _forms(API_KEY, PASSWORD, QUERY_KEY, DSN_PASSWORD)


def _leaks(root: Path) -> list[str]:
    """Every file under ``root`` (raw bytes: SQLite pages, WAL, JSON) holding a planted form."""
    return sorted(
        f"{path.relative_to(root)}: {form.decode()}"
        for path in root.rglob("*")
        if path.is_file()
        for form in PLANTED
        if form in path.read_bytes()
    )


# ------------------------------------------------------------------ which values, which forms


def test_every_configured_secret_is_collected_in_the_forms_a_server_echoes() -> None:
    environ = {"MY_KEY": API_KEY, "MY_DSN": f"host=db user=mcu password={DSN_PASSWORD}"}
    config = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url=http://bob:{PASSWORD_IN_URL}@127.0.0.1:9/v1",
            "llm.provider.api_key_env=MY_KEY",
            "run.postgres_dsn_env=MY_DSN",
            f"images.web_search.search_url=https://s.test/find?q={{query}}&api-key={QUERY_KEY}",
        ],
    )
    scrub = Scrubber(secret_values(config, environ))
    echoed = (
        f"401 for bob:{PASSWORD_IN_URL}@127.0.0.1 (decoded: {PASSWORD}); key {API_KEY}; "
        f"GET /find?api-key={QUERY_KEY}; dsn password {DSN_PASSWORD}; json {json.dumps(PASSWORD)}"
    )
    masked = scrub.text(echoed)
    for form in PLANTED:
        assert form.decode() not in masked
    assert masked.count("***") == 6 and "127.0.0.1" in masked  # parts masked, not the host
    raw = scrub.raw(echoed.encode())
    assert len(raw) == len(echoed.encode()) and not any(f in raw for f in PLANTED)
    # a short password is masked in its context (user:pw@, name=pw), never on its own
    short = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url=http://bob:{quote(SHORT, safe='')}@h.test/v1?sig={SHORT}",
            "llm.provider.api_key_env=MY_KEY",
        ],
    )
    text = Scrubber(secret_values(short, {})).text(
        f"at bob:{quote(SHORT, safe='')}@h.test?sig={SHORT} and plain {SHORT}"
    )
    assert text == f"at ***h.test?*** and plain {SHORT}"
    # the adapter masks with the same rules (its key and its own URL's credentials)
    adapter_set = provider_secret_values(config.llm.provider, API_KEY)
    assert set(adapter_set) <= set(secret_values(config, environ))
    assert PASSWORD in adapter_set and PASSWORD_IN_URL in adapter_set


def test_checkpoints_mask_a_dsn_password_and_url_credentials(tmp_path: Path) -> None:
    """The checkpoint serializer masks every collected secret in the stored bytes."""
    config = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url=http://bob:{PASSWORD_IN_URL}@127.0.0.1:9/v1",
            "run.postgres_dsn_env=MY_DSN",
        ],
    )
    dsn = f"postgresql://mcu:{DSN_PASSWORD}@127.0.0.1:9/x"
    serde = checkpoint_serializer(Scrubber(secret_values(config, {"MY_DSN": dsn})))
    kind, data = serde.dumps_typed({"note": f"{dsn} {PASSWORD} {PASSWORD_IN_URL}"})
    assert not any(form in data for form in PLANTED)
    assert serde.loads_typed((kind, data))["note"].count("*") > 0


# ------------------------------------------------------------------ a real run, echoed secrets


class _Echoes:
    """Answers validly, but echoes every planted secret: a 500 (retried, so logged) on the
    first call, a 401 on every judge call and on the second events call (that episode
    fails), and the narrative quotes them in its reply (so they are in the state, the
    episode and the LLM cache's answer)."""

    def __init__(self) -> None:
        self.calls = {"first": 0, "events": 0}
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        words = f"{API_KEY} {PASSWORD} {PASSWORD_IN_URL} {QUERY_KEY}"
        role = schema_name(body)
        with self.lock:
            self.calls["first"] += 1
            first = self.calls["first"] == 1
            if role == "EventsOutput":
                self.calls["events"] += 1
            events = self.calls["events"]
        if first:
            return Fault.status(500, retry_after=0.01, message=f"upstream said: {words}")
        if role == "JudgeVerdict" or (role == "EventsOutput" and events == 2):
            return Fault.status(401, message=f"Incorrect credentials: {words}.")
        if role == "NarrativeOutput":
            return json.dumps({"narrative": f"A life in three sentences, {words}."})
        return scripted_answer(body)


def _mcu_run(
    tmp_path: Path, base_url: str, *extra: str, command: str = "run", stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "MCU_TEST_API_KEY": API_KEY, "COLUMNS": "200"}
    args = [
        "--set=images.enabled=false",
        "--set=llm.provider.kind=openai_compatible",
        f"--set=llm.provider.base_url={base_url}",
        "--set=llm.provider.model=fake-model",
        "--set=llm.provider.api_key_env=MCU_TEST_API_KEY",
        "--set=llm.provider.max_attempts=2",
        f"--set=llm.cache.path={tmp_path / 'cache' / 'llm.sqlite'}",
        f"--set=images.web_search.search_url=https://s.test/find?q={{query}}&api-key={QUERY_KEY}",
        "--set=episode.sessions_min=1",
        "--set=episode.sessions_max=1",
        *extra,
    ]
    progress = ["--no-progress"] if command == "run" else []
    argv = [sys.executable, "-m", "mcu_sim.cli", command, *progress, *args]
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=300, check=False)


def test_no_planted_secret_in_the_run_the_cache_or_the_console(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = _Echoes()
    base_url = f"http://bob:{PASSWORD_IN_URL}@127.0.0.1:{fake_openai.port}/v1"
    out = tmp_path / "run"
    done = _mcu_run(
        tmp_path, base_url, "-n", "2", "--seed", "5", "--max-in-flight", "1", "-o", str(out)
    )
    console = done.stdout + done.stderr
    console += console.replace(b"\n", b"")  # a line wrapped inside a secret still counts
    assert done.returncode == 1, console.decode()  # one episode failed on the 401
    assert b"failed ep-00000006" in done.stderr and b"retrying" in done.stderr  # really logged
    # the secrets really came back: masked where they landed
    episode = json.loads((out / "episodes" / "ep-00000005.json").read_text())
    assert episode["narrative"]["narrative"].startswith("A life in three sentences, ***")
    record = json.loads((out / "failures" / "ep-00000006.json").read_text())
    assert "Incorrect credentials: ***" in record["reason"]
    with sqlite3.connect(tmp_path / "cache" / "llm.sqlite") as cache:
        answers = [row[0] for row in cache.execute("SELECT text FROM responses")]
    assert any("three sentences, ***" in text for text in answers)  # stored, masked
    for form in PLANTED:
        assert form not in console, form
    assert _leaks(out) == [] and _leaks(tmp_path / "cache") == []
    assert {p.name for p in out.iterdir()} >= {"checkpoints.sqlite", "shards", "manifest.json"}
    # the masked answer is still served from the cache to a new run of the same seed
    fake_openai.handler = scripted_answer
    again = _mcu_run(tmp_path, base_url, "-n", "1", "--seed", "5", "-o", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr.decode()
    rerun = json.loads((tmp_path / "b" / "episodes" / "ep-00000005.json").read_text())
    assert rerun["narrative"] == episode["narrative"] and b"cached" in again.stderr


def test_a_query_secret_echoed_in_a_404_path_is_masked(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The SDK glues the path after ``base_url``'s query; the server's 404 quotes the whole
    request path back, ``api-key`` value and all (no scripted echo: the server's own words)."""
    base_url = f"http://127.0.0.1:{fake_openai.port}/v1?api-key={QUERY_KEY}"
    out = tmp_path / "run"
    done = _mcu_run(tmp_path, base_url, "-n", "1", "-o", str(out))
    assert done.returncode == 1
    assert any(QUERY_KEY in r.path for r in fake_openai.requests)  # it went out
    record = json.loads(next((out / "failures").glob("*.json")).read_text())
    assert "no route POST" in record["reason"] and "api-key=***" in record["reason"]
    console = done.stdout + done.stderr
    for form in PLANTED:
        assert form not in console + console.replace(b"\n", b"")
    assert _leaks(out) == [] and _leaks(tmp_path / "cache") == []


def test_the_debugger_masks_every_configured_secret_not_only_the_key(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``mcu debug`` builds its own client: the narrative's reply quotes the web-search URL's
    query key (not a provider secret) and the 401 quotes all of them; none reaches the run
    folder (checkpoints included), the LLM cache or the console."""
    fake_openai.handler = _Echoes()
    base_url = f"http://bob:{PASSWORD_IN_URL}@127.0.0.1:{fake_openai.port}/v1"
    out = tmp_path / "run"
    commands = b"continue\n" * 12 + b"quit\n"
    done = _mcu_run(
        tmp_path, base_url, "--seed", "5", "-o", str(out), command="debug", stdin=commands
    )
    console = done.stdout + done.stderr
    console += console.replace(b"\n", b"")
    assert b"narrative" in console, console.decode()  # the debugger really ran the steps
    with sqlite3.connect(tmp_path / "cache" / "llm.sqlite") as cache:
        answers = [row[0] for row in cache.execute("SELECT text FROM responses")]
    assert any("three sentences, ***" in text for text in answers)  # echoed, then masked
    for form in PLANTED:
        assert form not in console, form
    assert _leaks(out) == [] and _leaks(tmp_path / "cache") == []
    assert (out / "checkpoints.sqlite").is_file()
