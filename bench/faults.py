"""Faults: the endpoint fails a fraction of the calls; does every episode end accounted for?

    python bench/faults.py                     # 40 episodes, 20 % of calls fail
    python bench/faults.py --smoke             # CI: 6 episodes

Failures come in turn: HTTP 429 with Retry-After, HTTP 500, a hang past the client's
timeout, a body that is not JSON, and an answer that is not valid JSON (fixed by a repair
turn). The provider layer retries with its bounded policy; an episode whose call still
fails is recorded with its reason. Prints episodes complete / failed-with-reason / lost,
then runs ``retry-failed``'s job list once more and prints the same counts. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from _common import Timer, bench_overrides, scan_run, start_endpoint


async def _run(config: Any, run_dir: Path, jobs: list, in_flight: int) -> Any:
    from mcu_sim.agents.llm.client import build_client
    from mcu_sim.runner.runner import EpisodeRunner

    # short waits so the benchmark stays quick; the retry *count* is the configured one
    llm = build_client(config.llm, retry_initial_s=0.05, retry_max_wait_s=0.5)
    try:
        runner = EpisodeRunner(config, run_dir, llm=llm, max_in_flight=in_flight, use_cache=False)
        return await runner.run_jobs(jobs)
    finally:
        await llm.aclose()


def _counts(run_dir: Path, expected: list[str]) -> dict[str, Any]:
    from mcu_sim.runner.outputs import RunDir

    scan = scan_run(run_dir)
    run = RunDir(run_dir)
    reasons = Counter()
    for episode_id in scan["failed"]:
        record = run.read_failure(episode_id)
        if record.get("reason") and record.get("traceback"):
            reasons[record.get("error_type", "?")] += 1
    complete = set(scan["found"]) & set(expected)
    failed = set(scan["failed"]) & set(expected)
    return {
        "complete": len(complete),
        "failed_with_reason": sum(reasons.values()),
        "failed_without_reason": len(failed) - sum(reasons.values()),
        "reasons": dict(reasons),
        "lost": len(set(expected) - complete - failed),
        "corrupt": len(scan["corrupt"]),
    }


def run(episodes: int, fault_rate: float, in_flight: int, seed: int) -> dict[str, Any]:
    from mcu_sim.config import load_config
    from mcu_sim.runner.outputs import RunDir
    from mcu_sim.runner.runner import failed_jobs, plan_jobs

    endpoint = start_endpoint(
        latency=0.02, capacity=16, fault_rate=fault_rate, seed=seed, hang_s=2.0
    )
    try:
        overrides = bench_overrides(endpoint.url, 2, 16, timeout_s=1.0)
        config = load_config(None, overrides)
        jobs = plan_jobs(episodes, 900)
        expected = [job.episode_id for job in jobs]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            with Timer() as first_timer:
                report = asyncio.run(_run(config, run_dir, jobs, in_flight))
            first = _counts(run_dir, expected)
            retry = failed_jobs(RunDir(run_dir))
            with Timer() as retry_timer:
                if retry:
                    asyncio.run(_run(config, run_dir, retry, in_flight))
            second = _counts(run_dir, expected)
    finally:
        served = endpoint.stop()
    return {
        "episodes": episodes,
        "fault_rate": fault_rate,
        "first_run": {
            **first,
            "seconds": round(first_timer.seconds, 1),
            "llm_calls": report.usage.calls,
        },
        "after_retry_failed": {
            **second,
            "retried": len(retry),
            "seconds": round(retry_timer.seconds, 1),
        },
        "endpoint_requests": served.get("requests", 0),
        "faults_injected": served.get("faults", {}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="CI size: 6 episodes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("mcu_sim.llm").setLevel(logging.ERROR)  # retries are expected here
    if args.smoke:
        args.episodes = 6
    result = run(args.episodes, args.fault_rate, args.in_flight, args.seed)
    if args.json:
        print(json.dumps(result))
        return
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result["faults_injected"].items()))
    print(f"{result['endpoint_requests']} requests served, faults injected: {faults or 'none'}")
    for label, key in (("first run", "first_run"), ("after retry-failed", "after_retry_failed")):
        c = result[key]
        print(
            f"{label}: complete {c['complete']}/{result['episodes']}, failed with reason "
            f"{c['failed_with_reason']} {c['reasons'] or ''}, failed without reason "
            f"{c['failed_without_reason']}, lost {c['lost']}, corrupt {c['corrupt']} "
            f"({c['seconds']} s)"
        )


if __name__ == "__main__":
    main()
