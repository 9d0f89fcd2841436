"""Instructions per LLM call, counted by valgrind's callgrind: a figure this VM's speed
does not move.

    python bench/instructions.py                  # this tree: batches of 10 and 30 episodes
    python bench/instructions.py --base HEAD~1    # a base commit too, and B/A
    python bench/instructions.py --smoke          # CI: batches of 1 and 3 one-session episodes
    python bench/instructions.py --set run.keep_checkpoints=last   # a config override

CPU time on this VM drifts by up to 2x within an hour: ``bench/ab.py`` pairs batches to cope
and still spreads by a few percent. Instructions repeat: with hash randomisation off
(``PYTHONHASHSEED=0``) and a few episodes in flight, two counts of one tree agreed to
0.01 %. Each side runs a small and a large batch, each in one process under callgrind,
against one bench endpoint (outside valgrind); the difference of the two counts over the
difference of their LLM calls is the instructions per call, so imports, the warm-up and a
run's fixed work cancel out. User-space instructions only: the kernel's share of the CPU
(10-20 %, ``bench/throughput.py``) is not in it. Under valgrind a run is about 50 times
slower (a minute of start-up per process). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import HERE, add_set_option, bench_overrides, start_endpoint
from ab import _run_on_loop, base_tree

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def worker(
    url: str, episodes: int, sessions: int | None, in_flight: int, overrides: list[str]
) -> None:
    """Warm up (2 episodes), run ``episodes``, print the run's LLM calls as JSON."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.runner import EpisodeRunner, plan_jobs

    base = bench_overrides(url, sessions, 32)
    config = load_config(None, [*base, *overrides])

    async def main(root: Path) -> int:
        warmup = EpisodeRunner(config, root / "warmup", max_in_flight=2, use_cache=False)
        await warmup.run_jobs(plan_jobs(2, 10**6))
        runner = EpisodeRunner(config, root / "run", max_in_flight=in_flight, use_cache=False)
        report = await runner.run_jobs(plan_jobs(episodes, 1000))
        return report.usage.calls

    import mcu_sim

    with tempfile.TemporaryDirectory() as tmp:
        calls = _run_on_loop(main(Path(tmp)), getattr(config.run, "event_loop", "auto"))
    print(json.dumps({"calls": calls, "package": str(Path(mcu_sim.__file__).parent)}))


def count(pythonpath: Path | None, url: str, args: argparse.Namespace, episodes: int) -> dict:
    """One batch under callgrind: its instructions and LLM calls."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        url,
        str(episodes),
        str(args.sessions or 0),
        str(args.in_flight),
        *args.set,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None or not done.stdout.strip():
        raise SystemExit(f"a callgrind batch failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"instructions": int(found.group(1)), **result}


def measure(pythonpath: Path | None, url: str, args: argparse.Namespace) -> dict[str, Any]:
    small, large = (count(pythonpath, url, args, n) for n in (args.small, args.large))
    calls = large["calls"] - small["calls"]
    if calls <= 0:
        raise SystemExit(f"the larger batch made no more calls ({small} against {large})")
    per_call = (large["instructions"] - small["instructions"]) / calls
    return {
        "instructions_per_call": round(per_call),
        "calls": [small["calls"], large["calls"]],
        "instructions": [small["instructions"], large["instructions"]],
        "package": large["package"],
    }


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, episodes, sessions, in_flight = sys.argv[2:6]
        worker(url, int(episodes), int(sessions) or None, int(in_flight), sys.argv[6:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="also count this commit (a git archive), and print B/A")
    parser.add_argument("--small", type=int, default=10, help="episodes in the small batch")
    parser.add_argument("--large", type=int, default=30, help="episodes in the large batch")
    parser.add_argument("--in-flight", type=int, default=4, help="episodes at once")
    parser.add_argument(
        "--sessions", type=int, help="sessions per episode (default: the config's own, 4-6)"
    )
    add_set_option(parser, "config override, both sides")
    parser.add_argument("--smoke", action="store_true", help="CI size: 1 and 3 episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.smoke:
        args.small, args.large, args.sessions = 1, 3, args.sessions or 1
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    endpoint = start_endpoint(0.02, 16)
    try:
        result: dict[str, Any] = {"this_tree": measure(None, endpoint.url, args)}
        if args.base:
            with tempfile.TemporaryDirectory() as tmp:
                result["base"] = measure(base_tree(args.base, Path(tmp)), endpoint.url, args)
            result["b_over_a"] = round(
                result["this_tree"]["instructions_per_call"]
                / result["base"]["instructions_per_call"],
                4,
            )
    finally:
        endpoint.stop()
    result.update(
        base_revision=args.base, in_flight=args.in_flight, sessions=args.sessions, set=args.set
    )
    if args.json:
        print(json.dumps(result))
        return
    for side in ("base", "this_tree"):
        if side in result:
            figures = result[side]
            print(
                f"{side.replace('_', ' ')} ({figures['package']}): "
                f"{figures['instructions_per_call'] / 1e6:.4f} M instructions per LLM call "
                f"(batches of {figures['calls'][0]} and {figures['calls'][1]} calls)"
            )
    if "b_over_a" in result:
        print(f"this tree / {args.base}: {result['b_over_a']}")


if __name__ == "__main__":
    main()
