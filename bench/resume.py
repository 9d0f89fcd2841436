"""Crash-resume: kill ``mcu run`` with SIGKILL at random moments, re-run it, count.

    python bench/resume.py                  # 40 episodes, 6 kills
    python bench/resume.py --smoke          # CI: 4 episodes, 2 kills
    python bench/resume.py --set run.keep_checkpoints=last   # a config override

Each round starts the real CLI (``mcu run``, same command every time) in a subprocess, waits
until it is doing work (new checkpoints appear), and SIGKILLs it after a further random
delay; after the last kill the command runs to the end. Each round records whether the
kill landed mid-run (the round wrote checkpoints and episodes were still missing). Then it
prints episodes expected / found / duplicated / corrupt (episode files that do not
validate, cut shard or index lines, a damaged checkpoint database) and the work redone:
LLM requests the endpoint served minus the calls recorded in the finished episodes (the
cache is off so that every redone call reaches the endpoint). Figures only.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_set_option, bench_overrides, scan_run, start_endpoint


def cli_command(run_dir: Path, episodes: int, overrides: list[str]) -> list[str]:
    sets = [f"--set={o}" for o in overrides]
    return [
        sys.executable,
        "-m",
        "mcu_sim.cli",
        "run",
        f"--episodes={episodes}",
        f"--out={run_dir}",
        "--seed=500",
        "--max-in-flight=8",
        "--no-progress",
        *sets,
    ]


def checkpoint_state(path: Path) -> tuple[int, str]:
    """(checkpoint rows, newest checkpoint id) so far; ``(0, "")`` before the database or
    its table exists. The newest id (time-ordered) changes with every step; with
    ``run.keep_checkpoints: last`` the count also drops as finished episodes' threads are
    deleted."""
    if not path.is_file():
        return 0, ""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            rows, newest = conn.execute(
                "SELECT COUNT(*), MAX(checkpoint_id) FROM checkpoints"
            ).fetchone()
            return int(rows), newest or ""
    except sqlite3.Error:  # no table yet, or busy
        return 0, ""


def wait_for_work(
    process: subprocess.Popen, path: Path, before: tuple[int, str], limit: float
) -> bool:
    """Wait until the run writes a new checkpoint; False if it ended or ``limit`` passed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint_state(path) != before:
            return True
        time.sleep(0.05)
    return False


def kill_round(command: list[str], run_dir: Path, delay: float, episodes: int) -> dict[str, Any]:
    """One round: start the run, wait until it works, let it run ``delay`` s, SIGKILL it."""
    database = run_dir / "checkpoints.sqlite"
    before = checkpoint_state(database)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    working = wait_for_work(process, database, before, limit=120)
    time.sleep(delay)
    finished_early = process.poll() is not None
    process.kill()
    process.wait()
    done = len(list((run_dir / "episodes").glob("*.json")))
    after = checkpoint_state(database)
    item: dict[str, Any] = {
        "killed_after_work_s": round(delay, 2),
        "episodes_done": done,
        # rows added; under `last` minus the rows of episodes finished (and deleted) meanwhile
        "checkpoints_written": after[0] - before[0],
        "landed_mid_run": working and not finished_early and after != before and done < episodes,
    }
    if finished_early:
        item["note"] = "the run had already finished"
    return item


def checkpoint_health(path: Path) -> str:
    if not path.is_file():
        return "missing"
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def recorded_calls(run_dir: Path) -> int:
    """LLM calls that ended up in finished episodes (their per-node usage)."""
    total = 0
    for path in (run_dir / "episodes").glob("*.json"):
        usage = json.loads(path.read_text()).get("usage") or {}
        total += int(sum(node.get("calls", 0) for node in usage.values()))
    return total


def run(
    episodes: int,
    kills: int,
    min_delay: float,
    span: float,
    seed: int,
    latency: float,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """``extra``: config overrides (``KEY=VALUE``) for every run of the command."""
    rng = random.Random(seed)
    endpoint = start_endpoint(latency=latency, capacity=16)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [*bench_overrides(endpoint.url, 2, 16), *(extra or [])]
        command = cli_command(run_dir, episodes, overrides)
        try:
            for _ in range(kills):
                delay = min_delay + rng.uniform(0, span)
                rounds.append(kill_round(command, run_dir, delay, episodes))
            final = subprocess.run(command, capture_output=True, text=True, timeout=900)
        finally:
            served = endpoint.stop()
        scan = scan_run(run_dir)
        expected = [f"ep-{500 + i:08d}" for i in range(episodes)]
        recorded = recorded_calls(run_dir)
        result = {
            "episodes_expected": episodes,
            "episodes_found": len(set(scan["found"]) & set(expected)),
            "lost": len(set(expected) - set(scan["found"]) - set(scan["failed"])),
            "failed": len(scan["failed"]),
            "duplicated": scan["shard_duplicates"] + scan["index_duplicates"],
            "corrupt": len(scan["corrupt"])
            + (checkpoint_health(run_dir / "checkpoints.sqlite") != "ok"),
            "corrupt_detail": scan["corrupt"],
            "shards_hold_every_episode": sorted(scan["shard_ids"]) == sorted(scan["found"]),
            "kills": len(rounds),
            "kills_mid_run": sum(r["landed_mid_run"] for r in rounds),
            "set": list(extra or []),
            "rounds": rounds,
            "final_exit_code": final.returncode,
            "endpoint_requests": served.get("requests", 0),
            "calls_in_episodes": recorded,
            "calls_redone": served.get("requests", 0) - recorded,
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument(
        "--min-delay", type=float, default=0.2, help="s after the run starts working"
    )
    parser.add_argument("--span", type=float, default=2.5, help="random extra delay, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.3, help="endpoint s per call")
    add_set_option(parser, "config override for the run, e.g. run.keep_checkpoints=last")
    parser.add_argument("--smoke", action="store_true", help="CI size: 4 episodes, 2 kills")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.episodes, args.kills, args.span = 4, 2, 0.6
    result = run(
        args.episodes, args.kills, args.min_delay, args.span, args.seed, args.latency, args.set
    )
    if args.json:
        print(json.dumps(result))
        return
    for n, item in enumerate(result["rounds"], 1):
        extra = f" ({item['note']})" if "note" in item else ""
        where = "mid-run" if item["landed_mid_run"] else "not mid-run"
        print(f"kill {n}: SIGKILL {item['killed_after_work_s']} s into the work ({where}), "
              f"{item['checkpoints_written']} checkpoints written, {item['episodes_done']} "
              f"episodes on disk{extra}")  # fmt: skip
    print(
        f"episodes expected {result['episodes_expected']}, found {result['episodes_found']}, "
        f"lost {result['lost']}, failed {result['failed']}, duplicated {result['duplicated']}, "
        f"corrupt {result['corrupt']} {result['corrupt_detail'] or ''}\n"
        f"shards hold every episode exactly once: {result['shards_hold_every_episode']}; "
        f"final run exit code {result['final_exit_code']}\n"
        f"work redone: {result['calls_redone']} LLM calls of {result['endpoint_requests']} "
        f"served ({result['calls_in_episodes']} are in the finished episodes)"
    )


if __name__ == "__main__":
    main()
