"""LangGraph's own CPU per step: the floor under ``bench/throughput.py``'s CPU per call.

    python bench/graph_floor.py               # 200 threads x 12 steps, 32 at once
    python bench/graph_floor.py --smoke       # CI: a few threads

Runs a linear graph of no-op async nodes over the real episode state schema, seeded with
an episode-sized state (about 11 KB of plain data), and prints the process CPU per
superstep for each way of keeping checkpoints: none, LangGraph's in-memory saver, and the
runner's SQLite saver as ``mcu run`` opens it (group commit) with ``durability`` sync
(every step, the runner's default) and exit, and with ``run.keep_checkpoints: last``
(sync; each checkpoint rewrites its thread's row, superseded pending writes are not
stored). Like the runner, the graph runs its nodes in place (``lean_graph``). Nothing here
is ours but that, the checkpointer and the state schema, so the figures are what a
LangGraph step costs the runner on this machine. Multiplied by the steps an episode takes
per LLM call (a five-session bench episode: 15 checkpoints for 15 calls) they give the
least CPU per call a per-step-durable run can reach. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import add_event_loop_option, cpu_seconds

VARIANTS = ("none", "memory", "sqlite-sync", "sqlite-exit", "sqlite-last")
# a five-session bench episode: input, start, 7 nodes before the sessions, 5 sessions and
# filter are 15 checkpoints for 15 LLM calls (5 sessions and their 5 judge calls, 5 others)
BENCH_STEPS_PER_CALL = 15 / 15


def episode_sized_state(seed: int) -> dict[str, Any]:
    """Plain data shaped and sized like a finished two-session bench episode's state."""
    turn = {"speaker": "user", "utterance": "A sentence of an ordinary length for a chat. " * 2}
    return {
        "episode_id": f"ep-{seed:08d}",
        "seed": seed,
        "demographics": {"name": "Ada", "age": 36, "gender": "female", "country": "Kenya"},
        "persona": [{"sentence": "I keep bees on my roof.", "e1": "I", "r": "like"}] * 5,
        "commonsense": [{"relation": "experience", "text": "Bees are calm in the morning."}] * 5,
        "narrative": {"narrative": "Ada grew up by the sea and now keeps bees. " * 3},
        "events": {"events": [{"id": i, "date": "2022-03-01", "text": "x" * 80} for i in range(6)]},
        "sessions": [{"index": i, "turns": [turn] * 16} for i in range(2)],
    }


def linear_graph(steps: int) -> Any:
    from langgraph.graph import END, START, StateGraph

    from mcu_sim.graphs.state import EpisodeState

    graph = StateGraph(EpisodeState)
    names = [f"step{i}" for i in range(steps)]
    for index, name in enumerate(names):

        async def step(state: EpisodeState, index: int = index) -> dict[str, Any]:
            return {"notes": [f"step {index}"]}

        graph.add_node(name, step)
    graph.add_edge(START, names[0])
    for before, after in itertools.pairwise(names):
        graph.add_edge(before, after)
    graph.add_edge(names[-1], END)
    return graph


async def _saver(variant: str, folder: Path) -> Any:
    if variant == "none":
        return None
    if variant == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver()
    from mcu_sim.runner.checkpoints import open_checkpointer

    return await open_checkpointer(  # as the local runner opens it (its file's only writer)
        folder / f"{variant}.sqlite",
        group_commit=True,
        drop_superseded=variant == "sqlite-last",
    )


async def cpu_ms_per_step(variant: str, threads: int, steps: int, in_flight: int) -> float:
    from mcu_sim.graphs.lean_steps import lean_graph

    with tempfile.TemporaryDirectory() as tmp:
        saver = await _saver(variant, Path(tmp))
        graph = lean_graph(linear_graph(steps).compile(checkpointer=saver))
        options: dict[str, Any] = {"stream_mode": "updates"}
        if saver is not None:
            options["durability"] = "exit" if variant.endswith("exit") else "sync"
        slots = asyncio.Semaphore(in_flight)

        async def one(seed: int) -> None:
            async with slots:
                config = {"configurable": {"thread_id": f"t{seed}"}}
                async for _ in graph.astream(episode_sized_state(seed), config, **options):
                    pass

        await one(-1)  # warm-up: first compile paths, the SQLite file
        before = cpu_seconds()
        await asyncio.gather(*(one(seed) for seed in range(threads)))
        spent = cpu_seconds() - before
        if saver is not None and hasattr(saver, "conn"):
            await saver.conn.close()
    return 1000 * spent / (threads * (steps + 1))  # + the input step LangGraph records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--in-flight", type=int, default=32)
    add_event_loop_option(parser)
    parser.add_argument("--smoke", action="store_true", help="CI size: 8 threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.threads, args.steps = 8, 4
    from mcu_sim.runner.event_loop import run_on_loop

    per_step = {
        variant: round(
            run_on_loop(
                cpu_ms_per_step(variant, args.threads, args.steps, args.in_flight),
                args.event_loop,
            ),
            3,
        )
        for variant in VARIANTS
    }
    floor = {variant: round(ms * BENCH_STEPS_PER_CALL, 3) for variant, ms in per_step.items()}
    result = {
        "cpu_ms_per_step": per_step,
        "steps_per_bench_call": BENCH_STEPS_PER_CALL,
        "floor_ms_per_bench_call": floor,
        **vars(args),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.threads} threads x {args.steps} no-op steps, {args.in_flight} at once "
        f"(run.event_loop={args.event_loop})"
    )
    for variant in VARIANTS:
        print(
            f"{variant:12s} {per_step[variant]:.3f} ms CPU per step; "
            f"x {BENCH_STEPS_PER_CALL:.2f} steps per call = {floor[variant]:.3f} ms per call"
        )


if __name__ == "__main__":
    main()
