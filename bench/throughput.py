"""Throughput of the local runner against the bench endpoint (latency L, capacity C).

    python bench/throughput.py                       # 200 episodes, L=0.2 s, C=16
    python bench/throughput.py --sessions 2          # shorter episodes than the default's
    python bench/throughput.py --latency 1 --capacity 64 --episodes 400
    python bench/throughput.py --smoke               # CI: a few episodes

Prints achieved LLM calls/s and its ratio to the endpoint's capacity C/L (overall, and in
the steady part between 10 % and 90 % of the calls), framework CPU per LLM call (this
process only: the endpoint runs in a subprocess; overall, and in that steady window, which
leaves out the run's fixed start and end work), the bytes its system calls wrote and read
per call (files, SQLite's WAL, sockets; from /proc/self/io), peak RSS and RSS per in-flight
episode.
``--in-flight`` defaults to 2C episodes (and the client may have that many requests out),
enough to keep C requests busy while episodes are between calls; when calls are fast
(tens of milliseconds) episodes spend a larger share of their time between calls, so
saturating the endpoint takes more (4C at L=0.05 s). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    Timer,
    add_event_loop_option,
    add_set_option,
    bench_overrides,
    cpu_seconds,
    io_counters,
    peak_rss_mb,
    rss_mb,
    start_endpoint,
    system_cpu_seconds,
)

Sample = tuple[float, int, float]  # (wall clock, LLM calls so far, process CPU seconds)


def _call_sampler(runner: Any, samples: list[Sample]) -> Any:
    """An event handler that samples ``(time, calls, CPU)`` as each episode ends.

    A timer would wake the loop when it is idle, and on this VM such a wake-up costs an
    event loop 0.1-0.2 ms of CPU: sampling 20 times a second was a quarter of a wake-up
    per LLM call, counted as the framework's. Episodes end often enough to place the
    10 % and 90 % marks of the steady window."""

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind in ("done", "failed"):
            samples.append((time.perf_counter(), runner.usage.calls, cpu_seconds()))

    return on_event


def _steady_window(samples: list[Sample]) -> tuple[Sample, Sample] | None:
    """The first samples at which 10 % and 90 % of all calls were done."""
    total = samples[-1][1] if samples else 0
    if total < 10:
        return None
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    return (low, high) if high[1] > low[1] and high[0] > low[0] else None


def steady_rate(samples: list[Sample]) -> float:
    """Calls/s between the moments 10 % and 90 % of all calls were done."""
    window = _steady_window(samples)
    if window is None:
        return 0.0
    low, high = window
    return (high[1] - low[1]) / (high[0] - low[0])


def steady_cpu_ms_per_call(samples: list[Sample]) -> float:
    """Framework CPU per call in the same window: what each call costs once the run's
    fixed start and end work (graph compile, manifest, shards, run-level filters) is left
    out, i.e. what a long run pays per call."""
    window = _steady_window(samples)
    if window is None:
        return 0.0
    low, high = window
    return 1000 * (high[2] - low[2]) / (high[1] - low[1])


async def measured_run(
    config: Any,
    out: Path,
    episodes: int,
    in_flight: int,
    endpoint: Any = None,
    first_seed: int = 1000,
) -> dict[str, Any]:
    from mcu_sim.runner.runner import EpisodeRunner, plan_jobs

    use_cache = config.llm.cache.enabled
    runner = EpisodeRunner(config, out, max_in_flight=in_flight, use_cache=use_cache)
    samples: list[Sample] = [(time.perf_counter(), 0, cpu_seconds())]
    runner.on_event = _call_sampler(runner, samples)
    rss_before, cpu_before, system_before = rss_mb(), cpu_seconds(), system_cpu_seconds()
    io_before = io_counters()
    served_before = endpoint.cpu_seconds() if endpoint is not None else None
    with Timer() as timer:
        report = await runner.run_jobs(plan_jobs(episodes, first_seed))
    cpu = cpu_seconds() - cpu_before
    system_cpu = system_cpu_seconds() - system_before
    io_after = io_counters()
    io = {name: io_after[name] - io_before[name] for name in io_before.keys() & io_after.keys()}
    served_after = endpoint.cpu_seconds() if endpoint is not None else None
    served_cpu = None
    if served_before is not None and served_after is not None:
        served_cpu = served_after - served_before
    samples.append((time.perf_counter(), report.usage.calls, cpu_seconds()))
    sessions = [len(runner.run.read_episode(i)["sessions"]) for i in report.finished]
    return {
        "report": report,
        "sessions_per_episode": sum(sessions) / len(sessions) if sessions else 0.0,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "seconds": timer.seconds,
        "cpu_s": cpu,
        "system_cpu_s": system_cpu,
        "io": io,
        "rss_before_mb": rss_before,
        "endpoint_cpu_s": served_cpu,
        "steady_calls_per_s": steady_rate(samples),
        "steady_cpu_ms_per_call": steady_cpu_ms_per_call(samples),
    }


def run(
    episodes: int,
    latency: float,
    capacity: int,
    in_flight: int,
    sessions: int | None,
    durability: str = "sync",
    event_loop: str = "auto",
    cache: bool = False,
    keep_checkpoints: str = "all",
    extra: list[str] | None = None,
) -> dict:
    """One measured run; ``extra``: config overrides (``KEY=VALUE``) applied last."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.event_loop import run_on_loop

    endpoint = start_endpoint(latency, capacity)
    try:
        # the client may send more than C at once, so a request is always queued at the
        # endpoint when a slot frees: the endpoint, not the client, is then the limit
        overrides = bench_overrides(endpoint.url, sessions, in_flight)
        options = [
            f"run.durability={durability}",
            f"run.event_loop={event_loop}",
            f"run.keep_checkpoints={keep_checkpoints}",
        ]
        with tempfile.TemporaryDirectory() as tmp:
            if cache:  # as a default config has it: every answer stored (all misses here)
                options += ["llm.cache.enabled=true", f"llm.cache.path={tmp}/llm-cache.sqlite"]
            config = load_config(None, [*overrides, *options, *(extra or [])])
            # warm-up: imports, the graph, the HTTP client and the SQLite files, off the clock
            # on the loop `mcu run` uses (run.event_loop)
            # (other seeds than the measured episodes', so a cache holds none of their answers)
            warmup = measured_run(config, Path(tmp) / "warmup", 2, 2, first_seed=10**6)
            run_on_loop(warmup, event_loop)
            run_dir = Path(tmp) / "run"
            measured = measured_run(config, run_dir, episodes, in_flight, endpoint)
            result = run_on_loop(measured, event_loop)
    finally:
        served = endpoint.stop()
    report = result["report"]
    calls = report.usage.calls
    endpoint_cpu = result["endpoint_cpu_s"]
    if endpoint_cpu is None:
        endpoint_cpu = served.get("cpu_s", 0)
    capacity_rate = capacity / latency
    peak = peak_rss_mb()
    return {
        "episodes": len(report.finished),
        "failed": len(report.failed),
        "llm_calls": calls,
        "seconds": round(result["seconds"], 2),
        "calls_per_s": round(calls / result["seconds"], 1),
        "sessions_per_episode": round(result["sessions_per_episode"], 2),
        "calls_per_episode": round(calls / max(len(report.finished), 1), 2),
        "capacity_calls_per_s": round(capacity_rate, 1),
        "ratio": round(calls / result["seconds"] / capacity_rate, 3),
        "steady_ratio": round(result["steady_calls_per_s"] / capacity_rate, 3),
        "endpoint_max_in_flight": served.get("max_in_flight"),
        # the endpoint's CPU during the measured run (its whole life where /proc is missing):
        # the same work every time, so framework/endpoint is a figure that machine load
        # (this VM's speed varies by 2x over an hour) changes far less than either alone
        "endpoint_cpu_ms_per_call": round(1000 * endpoint_cpu / max(calls, 1), 3),
        "framework_to_endpoint_cpu": round(result["cpu_s"] / endpoint_cpu, 2)
        if endpoint_cpu
        else None,
        "cpu_ms_per_call": round(1000 * result["cpu_s"] / max(calls, 1), 3),
        "system_cpu_share": round(result["system_cpu_s"] / result["cpu_s"], 3)
        if result["cpu_s"]
        else None,
        "steady_cpu_ms_per_call": round(result["steady_cpu_ms_per_call"], 3),
        # what the kernel's share is spent on: bytes through system calls per call
        **{
            f"{name}_per_call": round(result["io"][name] / max(calls, 1), 1)
            for name in ("wchar", "rchar", "syscw")
            if name in result["io"]
        },
        "cpu_busy_fraction": round(result["cpu_s"] / result["seconds"], 3),
        "peak_rss_mb": round(peak, 1),
        "rss_per_in_flight_mb": round(max(peak - result["rss_before_mb"], 0) / in_flight, 3),
        "in_flight": in_flight,
        "latency_s": latency,
        "capacity": capacity,
        "durability": durability,
        "keep_checkpoints": keep_checkpoints,
        "event_loop": result["event_loop"],
        "cache": cache,
    }


def _io_line(result: dict[str, Any]) -> str:
    """System-call I/O per LLM call (files, SQLite's WAL, sockets), where /proc has it."""
    if "wchar_per_call" not in result:
        return ""
    return (
        f"system calls wrote {result['wchar_per_call'] / 1024:.1f} KiB and read "
        f"{result['rchar_per_call'] / 1024:.1f} KiB per LLM call "
        f"({result['syscw_per_call']} writes)\n"
    )


def _percent(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f} %"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2, help="L, seconds per request")
    parser.add_argument("--capacity", type=int, default=16, help="C, requests served at once")
    parser.add_argument("--in-flight", type=int, help="episodes at once (default 2C)")
    parser.add_argument(
        "--sessions",
        type=int,
        help="sessions per episode (default: the config's own range, 4-6, as `mcu run` has it)",
    )
    parser.add_argument(
        "--durability", choices=["sync", "async", "exit"], default="sync", help="run.durability"
    )
    parser.add_argument(
        "--keep-checkpoints",
        choices=["all", "last"],
        default="all",
        help="run.keep_checkpoints (last: a finished episode's checkpoints are deleted once "
        "its file is written)",
    )
    add_event_loop_option(parser)
    parser.add_argument(
        "--cache",
        action="store_true",
        help="response cache on, as in a default config (every call a miss that is stored)",
    )
    add_set_option(
        parser,
        "any other config override, e.g. run.shard_size=20 to write shards during the run, "
        "as a long run does, instead of once at its end",
    )
    parser.add_argument("--smoke", action="store_true", help="CI size: 6 episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.episodes, args.latency, args.capacity = 6, 0.02, 4
        args.sessions = args.sessions or 1
    in_flight = args.in_flight or 2 * args.capacity
    result = run(
        args.episodes,
        args.latency,
        args.capacity,
        in_flight,
        args.sessions,
        args.durability,
        args.event_loop,
        args.cache,
        args.keep_checkpoints,
        args.set,
    )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['episodes']} episodes ({result['failed']} failed), {result['llm_calls']} LLM "
        f"calls in {result['seconds']} s, {in_flight} episodes in flight "
        f"(run.durability={result['durability']}, "
        f"run.keep_checkpoints={result['keep_checkpoints']}, event loop {result['event_loop']}, "
        f"response cache {'on' if result['cache'] else 'off'}); "
        f"{result['sessions_per_episode']} sessions and {result['calls_per_episode']} LLM calls "
        f"per episode\n"
        f"achieved {result['calls_per_s']} calls/s; capacity C/L = "
        f"{result['capacity_calls_per_s']}/s; ratio {result['ratio']} overall, "
        f"{result['steady_ratio']} steady (endpoint saw {result['endpoint_max_in_flight']} at "
        f"once)\n"
        f"framework CPU {result['cpu_ms_per_call']} ms per LLM call overall, "
        f"{result['steady_cpu_ms_per_call']} ms steady ({_percent(result['system_cpu_share'])} "
        f"of it in the kernel; busy "
        f"{100 * result['cpu_busy_fraction']:.0f} % of one core; the endpoint process used "
        f"{result['endpoint_cpu_ms_per_call']} ms per call; framework/endpoint CPU "
        f"{result['framework_to_endpoint_cpu']})\n"
        f"{_io_line(result)}"
        f"peak RSS {result['peak_rss_mb']} MB; {result['rss_per_in_flight_mb']} MB per "
        f"in-flight episode"
    )


if __name__ == "__main__":
    main()
