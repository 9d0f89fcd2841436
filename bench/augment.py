"""Throughput of ``mcu augment`` against the bench endpoint (latency L, capacity C).

    python bench/augment.py                          # 200 dialogues of 2 sessions, L=0.2 s, C=16
    python bench/augment.py --images shipped         # DialogCC retrieval from the shipped database
    python bench/augment.py --mode magid --dialogues 400 --latency 1 --capacity 64
    python bench/augment.py --smoke                  # CI: a few dialogues

The dialogues are made from the shipped sample corpus (``data/samples/dialogues/plain.jsonl``):
dialogue ``i`` takes ``--sessions`` sessions of the sample, in turn, so every dialogue has
real turns with and without visual cues (the scripted scanner picks the cued ones). They
go through the same path as ``mcu augment``: read through the plain mapping into the run
directory, then one runner job per dialogue on the augmentation graph.

Prints dialogues/s, LLM calls/s and its ratio to the endpoint's capacity C/L (overall, and
in the steady part between 10 % and 90 % of the calls, as ``bench/throughput.py`` computes
it), framework CPU per LLM call (this process only; the endpoint runs in a subprocess),
peak RSS and RSS per in-flight dialogue. ``--images off`` (the default) measures the
framework and the endpoint alone; ``--images shipped`` adds DialogCC's retrieval from the
shipped database (caption search with all-MiniLM-L6-v2, QA scorers off), which costs CPU in
this process. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    HERE,
    Timer,
    add_set_option,
    bench_overrides,
    cpu_seconds,
    peak_rss_mb,
    rss_mb,
    start_endpoint,
)
from throughput import Sample, _call_sampler, steady_cpu_ms_per_call, steady_rate

SAMPLE = HERE.parent / "data" / "samples" / "dialogues" / "plain.jsonl"
# DialogCC on the shipped database, as tests/test_augment.py runs it: caption search, the
# QA scorers off (their weights are not shipped), every retrieved image accepted
SHIPPED_IMAGES = ["images.enabled=true", "images.qa.scorers=[]", "images.qa.clip_threshold=-1"]


def write_corpus(path: Path, dialogues: int, sessions: int) -> Path:
    """``dialogues`` plain-layout dialogues of ``sessions`` sessions each, the sample's
    sessions taken in turn (ids ``bench-<i>``)."""
    pool = [
        session
        for line in SAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip()
        for session in json.loads(line)["sessions"]
    ]
    with path.open("w", encoding="utf-8") as out:
        for i in range(dialogues):
            chosen = [pool[(i * sessions + j) % len(pool)] for j in range(sessions)]
            out.write(json.dumps({"id": f"bench-{i}", "sessions": chosen}) + "\n")
    return path


async def measured_run(
    config: Any, corpus: Path, out: Path, in_flight: int, mode: str
) -> dict[str, Any]:
    from mcu_sim.dataset.dialogue_mapping import load_mapping
    from mcu_sim.runner.augment import prepare_inputs
    from mcu_sim.runner.runner import EpisodeRunner

    rss_before, cpu_before = rss_mb(), cpu_seconds()
    with Timer() as prepare:  # reading the input into the run directory is part of the job
        prepared = prepare_inputs(out, corpus, load_mapping(None), mode)
    runner = EpisodeRunner(config, out, max_in_flight=in_flight, use_cache=False)
    samples: list[Sample] = [(time.perf_counter(), 0, cpu_seconds())]
    runner.on_event = _call_sampler(runner, samples)
    with Timer() as timer:
        report = await runner.run_jobs(prepared.jobs)
    cpu = cpu_seconds() - cpu_before
    samples.append((time.perf_counter(), report.usage.calls, cpu_seconds()))
    episodes = [runner.run.read_episode(i) for i in report.finished]
    requests = [r for e in episodes for r in e.get("image_requests", [])]
    return {
        "report": report,
        "prepare_s": prepare.seconds,
        "seconds": timer.seconds + prepare.seconds,
        "cpu_s": cpu,
        "rss_before_mb": rss_before,
        "input_errors": len(prepared.errors),
        "image_requests": len(requests),
        "aligned": sum(r["status"] == "aligned" for r in requests),
        "steady_calls_per_s": steady_rate(samples),
        "steady_cpu_ms_per_call": steady_cpu_ms_per_call(samples),
    }


def run(
    dialogues: int,
    sessions: int,
    latency: float,
    capacity: int,
    in_flight: int,
    mode: str = "dialogcc",
    images: str = "off",
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """One measured run; ``extra``: config overrides (``KEY=VALUE``) applied last."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.augment import augment_config
    from mcu_sim.runner.event_loop import run_on_loop

    endpoint = start_endpoint(latency, capacity)
    try:
        overrides = bench_overrides(endpoint.url, None, in_flight)
        if images == "shipped":
            overrides = [o for o in overrides if o != "images.enabled=false"] + SHIPPED_IMAGES
        config = augment_config(load_config(None, [*overrides, *(extra or [])]), mode)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            # warm-up: imports, the graph, the HTTP client, the image database, off the clock
            warm = write_corpus(root / "warm.jsonl", 2, sessions)
            run_on_loop(measured_run(config, warm, root / "warmup", 2, mode), config.run.event_loop)
            corpus = write_corpus(root / "corpus.jsonl", dialogues, sessions)
            measured = measured_run(config, corpus, root / "run", in_flight, mode)
            result = run_on_loop(measured, config.run.event_loop)
    finally:
        served = endpoint.stop()
    report = result["report"]
    calls = report.usage.calls
    done = len(report.finished)
    capacity_rate = capacity / latency
    peak = peak_rss_mb()
    return {
        "dialogues": done,
        "failed": len(report.failed),
        "input_errors": result["input_errors"],
        "sessions_per_dialogue": sessions,
        "mode": mode,
        "images": images,
        "image_requests": result["image_requests"],
        "aligned": result["aligned"],
        "llm_calls": calls,
        "calls_per_dialogue": round(calls / max(done, 1), 2),
        "seconds": round(result["seconds"], 2),
        "prepare_s": round(result["prepare_s"], 3),
        "dialogues_per_s": round(done / result["seconds"], 2),
        "calls_per_s": round(calls / result["seconds"], 1),
        "capacity_calls_per_s": round(capacity_rate, 1),
        "ratio": round(calls / result["seconds"] / capacity_rate, 3),
        "steady_ratio": round(result["steady_calls_per_s"] / capacity_rate, 3),
        "endpoint_max_in_flight": served.get("max_in_flight"),
        "cpu_ms_per_call": round(1000 * result["cpu_s"] / max(calls, 1), 3),
        "steady_cpu_ms_per_call": round(result["steady_cpu_ms_per_call"], 3),
        # a dialogue has few calls (one per scanner window) over a fixed amount of work
        # (checkpoints of each node and aligner branch, filters, the episode file): when
        # this nears the share of a core the process can get, the framework is the limit
        "cpu_busy_fraction": round(result["cpu_s"] / result["seconds"], 3),
        "peak_rss_mb": round(peak, 1),
        "rss_per_in_flight_mb": round(max(peak - result["rss_before_mb"], 0) / in_flight, 3),
        "in_flight": in_flight,
        "latency_s": latency,
        "capacity": capacity,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=2, help="sessions per dialogue")
    parser.add_argument("--latency", type=float, default=0.2, help="L, seconds per request")
    parser.add_argument("--capacity", type=int, default=16, help="C, requests served at once")
    parser.add_argument("--in-flight", type=int, help="dialogues at once (default 2C)")
    parser.add_argument("--mode", choices=["magid", "dialogcc"], default="dialogcc")
    parser.add_argument(
        "--images",
        choices=["off", "shipped"],
        default="off",
        help="off: LLM calls only; shipped: retrieval from the shipped database",
    )
    add_set_option(parser, "any other config override, e.g. augment.scan.window_turns=4")
    parser.add_argument("--smoke", action="store_true", help="CI size: 6 dialogues")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dialogues, args.latency, args.capacity = 6, 0.02, 4
    in_flight = args.in_flight or 2 * args.capacity
    result = run(
        args.dialogues,
        args.sessions,
        args.latency,
        args.capacity,
        in_flight,
        args.mode,
        args.images,
        args.set,
    )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['dialogues']} dialogues ({result['failed']} failed) of "
        f"{result['sessions_per_dialogue']} sessions, mode {result['mode']}, images "
        f"{result['images']} ({result['aligned']} of {result['image_requests']} image requests "
        f"aligned); {result['llm_calls']} LLM calls in {result['seconds']} s, "
        f"{result['calls_per_dialogue']} per dialogue, {in_flight} dialogues in flight\n"
        f"{result['dialogues_per_s']} dialogues/s; {result['calls_per_s']} calls/s; capacity "
        f"C/L = {result['capacity_calls_per_s']}/s; ratio {result['ratio']} overall, "
        f"{result['steady_ratio']} steady (endpoint saw {result['endpoint_max_in_flight']} at "
        f"once)\n"
        f"framework CPU {result['cpu_ms_per_call']} ms per LLM call overall, "
        f"{result['steady_cpu_ms_per_call']} ms steady (busy "
        f"{100 * result['cpu_busy_fraction']:.0f} % of one core)\n"
        f"peak RSS {result['peak_rss_mb']} MB; {result['rss_per_in_flight_mb']} MB per "
        f"in-flight dialogue"
    )


if __name__ == "__main__":
    main()
