"""Every runner benchmark runs at its smoke size, so none of them can rot. They print
figures; the tests check the figures are there and that no episode was lost, duplicated
or corrupted (counts, never times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = pytest.mark.slow


def _bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _json(script: str) -> dict[str, Any]:
    return json.loads(_bench(script, "--json").strip().splitlines()[-1])


def test_endpoint_smoke() -> None:
    lines = [json.loads(line) for line in _bench("endpoint.py", "--port=0").splitlines()]
    assert lines[0]["url"].startswith("http://127.0.0.1:")
    assert lines[1]["smoke_answer"]["label"] == "safe"
    assert lines[2]["requests"] == 1


def test_throughput_smoke() -> None:
    result = _json("throughput.py")
    assert result["episodes"] == 6 and result["failed"] == 0
    assert result["llm_calls"] > 6 * 5
    for key in ("calls_per_s", "ratio", "cpu_ms_per_call", "peak_rss_mb", "rss_per_in_flight_mb"):
        assert result[key] >= 0
    assert "calls/s" in _bench("throughput.py")  # the human-readable form too


def test_resume_smoke() -> None:
    result = _json("resume.py")
    assert result["kills"] == 2 and result["final_exit_code"] == 0
    assert result["episodes_found"] == result["episodes_expected"] == 4
    assert result["lost"] == result["duplicated"] == result["corrupt"] == 0
    assert result["shards_hold_every_episode"]
    assert result["calls_redone"] >= 0


def test_faults_smoke() -> None:
    result = _json("faults.py")
    assert sum(result["faults_injected"].values()) > 0
    first = result["first_run"]
    assert first["lost"] == 0 and first["corrupt"] == 0 and first["failed_without_reason"] == 0
    assert first["complete"] + first["failed_with_reason"] == 6
    assert result["after_retry_failed"]["lost"] == 0
