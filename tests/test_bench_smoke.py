"""Every runner benchmark runs at its smoke size, so none of them can rot. They print
figures; the tests check the figures are there and that no episode was lost, duplicated
or corrupted (counts, never times)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = pytest.mark.slow


def _bench(script: str, *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _json(script: str, *args: str, timeout: float = 180) -> dict[str, Any]:
    lines = _bench(script, "--json", *args, timeout=timeout).strip().splitlines()
    return json.loads(lines[-1])


def test_endpoint_smoke() -> None:
    lines = [json.loads(line) for line in _bench("endpoint.py", "--port=0").splitlines()]
    assert lines[0]["url"].startswith("http://127.0.0.1:")
    assert lines[1]["smoke_answer"]["label"] == "safe"
    assert lines[2]["requests"] == 1


def test_throughput_smoke() -> None:
    result = _json("throughput.py")
    assert result["episodes"] == 6 and result["failed"] == 0
    assert result["llm_calls"] > 6 * 5
    assert result["calls_per_s"] > 0 and result["peak_rss_mb"] > 0
    assert 0 < result["ratio"] <= 1.1  # the endpoint's capacity C/L bounds it
    # six episodes end in a few bursts: the steady window (10-90 % of the calls) may not
    # exist at this size, so its figures are only present and finite here
    for steady in ("steady_ratio", "steady_cpu_ms_per_call"):
        assert math.isfinite(result[steady]) and result[steady] >= 0
    assert result["cpu_ms_per_call"] > 0 and result["rss_per_in_flight_mb"] >= 0
    assert result["framework_to_endpoint_cpu"] > 0
    assert result["calls_per_s"] == pytest.approx(result["llm_calls"] / result["seconds"], 0.05)
    assert result["event_loop"] == "uvloop"  # run.event_loop=auto, uvloop installed
    assert result["cache"] is False
    assert result["sessions_per_episode"] == 1.0  # --smoke: one session each
    assert result["calls_per_episode"] == pytest.approx(result["llm_calls"] / 6)
    if Path("/proc/self/io").exists():  # the checkpoints and episode files were written
        assert result["wchar_per_call"] > 1000 and result["syscw_per_call"] > 1
    plain = _bench("throughput.py", "--event-loop=asyncio", "--cache", "--sessions=2")
    assert "calls/s" in plain and "event loop asyncio, response cache on" in plain
    assert "; 2.0 sessions and" in plain  # human-readable too, with --sessions kept
    assert not Path("/proc/self/io").exists() or "KiB per LLM call" in plain


@pytest.mark.parametrize("keep", ["all", "last"])
def test_resume_smoke(keep: str) -> None:
    # `last` deletes each finished episode's thread: a kill mid-delete too
    result = _json("resume.py", f"--set=run.keep_checkpoints={keep}")
    assert result["set"] == [f"run.keep_checkpoints={keep}"]
    assert result["kills"] == 2 and result["final_exit_code"] == 0
    # at least one kill hit a run at work with episodes still missing (not before it
    # started or after it ended), and still nothing was lost, duplicated or corrupt
    assert result["kills_mid_run"] >= 1
    mid_run = [r for r in result["rounds"] if r["landed_mid_run"]]
    assert any(r["episodes_done"] < 4 for r in mid_run)
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


def test_qa_scorers_smoke(tmp_path: Path) -> None:
    """Per-scorer, per-image QA times on the tiny models (and the bundled open_nsfw)."""
    pytest.importorskip("torch")
    rows_file = tmp_path / "rows.json"
    out = _bench("qa_scorers.py", f"--json={rows_file}")
    rows = {row["scorer"]: row for row in json.loads(rows_file.read_text())}
    for name in ("clip", "aesthetic", "nsfw.open_nsfw", "nsfw.classifier"):
        assert rows[name]["images"] == 4 and rows[name]["ms_per_image"] > 0, rows[name]
        assert rows[name]["load_s"] >= 0 and rows[name]["version"]
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert float(line.split()[-1]) == rows[name]["ms_per_image"]  # printed per image
    assert rows["text_safety.classifier"]["ms_per_dialogue"] > 0
    total = rows["qa pass (clip+aesthetic+open_nsfw)"]["ms_per_image"]
    assert total == pytest.approx(
        sum(rows[n]["ms_per_image"] for n in ("clip", "aesthetic", "nsfw.open_nsfw"))
    )
    assert "ms/image" in out.splitlines()[0]


def test_retrieval_smoke() -> None:
    """The retrieval bench at its smoke size: the shipped build path and both recalls."""
    pytest.importorskip("autofaiss")
    result = _json("retrieval.py", timeout=300)
    assert result["vectors"] == 30_000 and result["queries"] == 100
    assert result["index_key"] != "Flat"  # above 20,000 vectors AutoFaiss chooses the index
    assert result["build_peak_rss_mb"] > 0 and result["index_on_disk_mb"] > 0
    for recall in ("index_recall_at_10", "shipped_recall_at_10"):
        assert 0 < result[recall] <= 1
    # the shipped search rescores the index's pool exactly: never worse than the index alone
    assert result["shipped_recall_at_10"] >= result["index_recall_at_10"]
    assert result["exact_qps_batched"] > 0 and result["shipped_qps_single"] > 0
    # nprobe was tuned at build time for recall 0.95, and that is what the search uses
    tuning = result["index_tuning"]
    assert tuning["target_recall"] == 0.95 and tuning["recall_low"] >= 0.95
    assert result["index_param"] == f"nprobe={tuning['nprobe']}" and tuning["nprobe"] < 512
    sweep = {row["nprobe"]: row for row in result["sweep"]}
    autofaiss = int(tuning["autofaiss_index_param"].removeprefix("nprobe="))
    assert tuning["nprobe"] in sweep and autofaiss in sweep
    assert sweep[tuning["nprobe"]]["recall_at_10"] == result["index_recall_at_10"]
    recalls = [row["recall_at_10"] for row in result["sweep"]]
    assert recalls == sorted(recalls)  # more lists probed, exact distances: never worse


def test_ray_throughput_smoke() -> None:
    """Both backends on the same endpoint at the smoke size; Ray's tasks and actors counted."""
    pytest.importorskip("ray")
    result = _json("ray_throughput.py", timeout=600)
    for backend in ("local", "ray"):
        row = result[backend]
        assert row["episodes"] == 6 and row["failed"] == 0 and row["llm_calls"] > 6 * 5
        assert 0 < row["ratio"] <= 1.1 and row["cpu_ms_per_call"] > 0
    assert result["ray"]["llm_calls"] == result["local"]["llm_calls"]  # the same workload
    assert result["ray"]["tasks_started"] == 6 and result["ray"]["actors_started"] == 2
    assert result["ray_to_local_ratio"] > 0


@pytest.mark.parametrize("images", ["off", "shipped"])
def test_augment_smoke(images: str) -> None:
    """``mcu augment``'s path at the smoke size: six two-session dialogues from the sample
    corpus, every one finished, the scanner called once per session (windows of 16 turns
    hold each sample session whole), and with the shipped database every pick aligned."""
    if images == "shipped":
        pytest.importorskip("faiss")
    result = _json("augment.py", f"--images={images}")
    assert result["dialogues"] == 6 and result["failed"] == 0 and result["input_errors"] == 0
    assert result["llm_calls"] >= 6 * 2 and result["calls_per_dialogue"] >= 2
    assert result["image_requests"] > 0  # the sample's cued turns are picked
    if images == "shipped":
        assert result["aligned"] == result["image_requests"]
    else:
        assert result["aligned"] == 0
    assert result["dialogues_per_s"] == pytest.approx(result["dialogues"] / result["seconds"], 0.05)
    assert 0 < result["ratio"] <= 1.1  # the endpoint's capacity C/L bounds it
    assert math.isfinite(result["steady_ratio"]) and result["steady_ratio"] >= 0
    assert result["cpu_ms_per_call"] > 0 and result["rss_per_in_flight_mb"] >= 0
