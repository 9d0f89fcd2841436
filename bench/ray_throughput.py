"""Throughput of ``--backend ray`` (local Ray, 2 CPUs) next to the local runner, same workload.

    python bench/ray_throughput.py --episodes 100     # both backends, L=0.2 s, C=16
    python bench/ray_throughput.py --episode-actors 0 # Ray with one task per episode
    python bench/ray_throughput.py --smoke            # CI: a few episodes

The workload, endpoint and figures are ``bench/throughput.py``'s (its functions are reused):
calls/s and the ratio to C/L (overall and steady), framework CPU per call, memory per in-flight
episode, plus the Ray tasks and actors the run started. The local runner runs first, on the
same endpoint settings, so both lines come from the same machine minutes apart. On Ray the
framework's CPU and memory are the driver's plus every process Ray started (GCS, raylet,
workers), sampled as episodes end, since episodes run outside the driver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Timer, bench_overrides, start_endpoint
from throughput import run as local_run
from throughput import steady_cpu_ms_per_call, steady_rate


class ProcessTree:
    """CPU seconds and RSS of this process and its descendants (Ray's), bar ``exclude``."""

    def __init__(self, exclude: int) -> None:
        import psutil

        self.me, self.exclude = psutil.Process(), exclude
        self.cpu: dict[int, float] = {}
        self.peak_rss_mb = 0.0

    def sample(self) -> float:
        rss = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            if proc.pid == self.exclude:
                continue
            try:
                times, memory = proc.cpu_times(), proc.memory_info()
            except Exception:  # exited between listing and reading
                continue
            self.cpu[proc.pid] = max(self.cpu.get(proc.pid, 0.0), times.user + times.system)
            rss += memory.rss
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        return sum(self.cpu.values())


def ray_run(args: argparse.Namespace, in_flight: int) -> dict[str, Any]:
    import ray

    from mcu_sim.config import load_config
    from mcu_sim.runner.ray_backend import RayEpisodeRunner
    from mcu_sim.runner.runner import plan_jobs

    endpoint = start_endpoint(args.latency, args.capacity)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tree = ProcessTree(exclude=endpoint.process.pid)
    try:
        overrides = bench_overrides(endpoint.url, args.sessions, in_flight)
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(None, overrides)

            def runner_for(out: Path) -> RayEpisodeRunner:
                return RayEpisodeRunner(
                    config, out, max_in_flight=in_flight, episode_actors=args.episode_actors
                )

            warm = runner_for(Path(tmp) / "warmup")  # imports and workers, off the clock
            asyncio.run(warm.run_jobs(plan_jobs(2, 10**6)))
            runner = runner_for(Path(tmp) / "run")
            cpu_before = tree.sample()
            rss_before = tree.peak_rss_mb = 0.0
            cpu_before = tree.sample()
            rss_before = tree.peak_rss_mb
            samples = [(time.perf_counter(), 0, cpu_before)]

            def on_event(kind: str, data: dict[str, Any]) -> None:
                if kind in ("done", "failed"):
                    samples.append((time.perf_counter(), runner.usage.calls, tree.sample()))

            runner.on_event = on_event
            with Timer() as timer:
                report = asyncio.run(runner.run_jobs(plan_jobs(args.episodes, 1000)))
            samples.append((time.perf_counter(), report.usage.calls, tree.sample()))
            started = dict(runner.started)
    finally:
        ray.shutdown()
        endpoint.stop()
    calls = report.usage.calls
    capacity_rate = args.capacity / args.latency
    cpu = samples[-1][2] - cpu_before
    return {
        "backend": "ray",
        "episodes": len(report.finished),
        "failed": len(report.failed),
        "llm_calls": calls,
        "seconds": round(timer.seconds, 2),
        "calls_per_s": round(calls / timer.seconds, 1),
        "ratio": round(calls / timer.seconds / capacity_rate, 3),
        "steady_ratio": round(steady_rate(samples) / capacity_rate, 3),
        "cpu_ms_per_call": round(1000 * cpu / max(calls, 1), 3),
        "steady_cpu_ms_per_call": round(steady_cpu_ms_per_call(samples), 3),
        "peak_rss_mb": round(tree.peak_rss_mb, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_per_in_flight_mb": round(max(tree.peak_rss_mb - rss_before, 0) / in_flight, 3),
        "tasks_started": started["tasks"],
        "actors_started": started["actors"],
        "episode_actors": args.episode_actors,
        "in_flight": in_flight,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--in-flight", type=int, help="episodes at once (default 2C)")
    parser.add_argument("--sessions", type=int, help="sessions per episode (default: config's)")
    parser.add_argument(
        "--episode-actors", type=int, default=None, help="None: one per CPU; 0: a task each"
    )
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CI size: 6 episodes")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.latency, args.capacity = 6, 0.02, 4
        args.sessions = args.sessions or 1
    in_flight = args.in_flight or 2 * args.capacity
    result: dict[str, Any] = {}
    if not args.skip_local:
        local = local_run(args.episodes, args.latency, args.capacity, in_flight, args.sessions)
        result["local"] = {"backend": "local", **local}
    result["ray"] = ray_run(args, in_flight)
    if "local" in result and result["local"]["ratio"]:
        result["ray_to_local_ratio"] = round(result["ray"]["ratio"] / result["local"]["ratio"], 3)
    if args.json:
        print(json.dumps(result))
        return
    keys = ("episodes", "failed", "llm_calls", "seconds", "ratio", "steady_ratio")
    keys += ("cpu_ms_per_call", "steady_cpu_ms_per_call", "peak_rss_mb", "rss_per_in_flight_mb")
    for name in ("local", "ray"):
        if name in result:
            row = result[name]
            print(name.ljust(6), " ".join(f"{k}={row.get(k)}" for k in keys))
    ray_row = result["ray"]
    print(f"ray started {ray_row['tasks_started']} tasks, {ray_row['actors_started']} actors")
    if "ray_to_local_ratio" in result:
        print(f"ray ratio / local ratio = {result['ray_to_local_ratio']}")


if __name__ == "__main__":
    main()
