"""Paired A/B of the framework's CPU per LLM call: a base commit against this tree.

    python bench/ab.py --base HEAD~1                  # 6 rounds of 60 episodes a side
    python bench/ab.py --base main --rounds 10 --set run.durability=exit
    python bench/ab.py --smoke                        # CI: HEAD against itself, tiny

This VM's speed drifts by up to 2x within an hour, so two throughput runs minutes apart
cannot show a 5 % change. Here two worker processes run episode batches in turn (A B B A
A B ...), so both sides share the same minutes: A imports ``mcu_sim`` from a ``git archive``
of ``--base``, B from this tree (the installed package). Each has its own bench endpoint
(``bench/endpoint.py`` of this tree, so the same server code on both sides). Prints, per
round and as medians, B/A of CPU per call, raw and normalised by each side's endpoint CPU
(the same work on both sides, so it cancels most machine drift). Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from _common import HERE, add_set_option, bench_overrides, cpu_seconds, start_endpoint

REPO = HERE.parent


# ---------------------------------------------------------------- one side (a subprocess)


def _run_on_loop(coroutine: Any, choice: str) -> Any:
    """``mcu run``'s loop when this side's package has the setting, else asyncio's."""
    try:
        from mcu_sim.runner.event_loop import run_on_loop
    except ImportError:  # a base from before run.event_loop
        import asyncio

        return asyncio.run(coroutine)
    return run_on_loop(coroutine, choice)


def worker(overrides: list[str]) -> None:
    """Answer ``<episodes>`` lines on stdin with one JSON line per batch; stop at EOF."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.runner import EpisodeRunner, plan_jobs

    # the server code of this tree on both sides: without the side's PYTHONPATH, the
    # endpoint imports the installed package (this tree), not the base's fake server
    server_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    endpoint = start_endpoint(0.2, 16, environ=server_env)
    try:
        base = bench_overrides(endpoint.url, 2, 32)
        config = load_config(None, [*base, *overrides])
        loop = getattr(config.run, "event_loop", "auto")
        with tempfile.TemporaryDirectory() as tmp:

            async def batch(name: str, episodes: int, first_seed: int) -> Any:
                runner = EpisodeRunner(config, Path(tmp) / name, max_in_flight=32, use_cache=False)
                return await runner.run_jobs(plan_jobs(episodes, first_seed))

            _run_on_loop(batch("warmup", 4, 10**6), loop)
            import mcu_sim

            package = str(Path(mcu_sim.__file__).parent)
            hello = {"package": package, "server_package": endpoint.server_package}
            print(json.dumps(hello), flush=True)
            for number, line in enumerate(sys.stdin):
                episodes = int(line)
                cpu, served = cpu_seconds(), endpoint.cpu_seconds() or 0.0
                report = _run_on_loop(batch(f"r{number}", episodes, 1000 * (number + 1)), loop)
                result = {
                    "calls": report.usage.calls,
                    "cpu_s": cpu_seconds() - cpu,
                    "endpoint_cpu_s": (endpoint.cpu_seconds() or 0.0) - served,
                    "failed": len(report.failed),
                }
                print(json.dumps(result), flush=True)
    finally:
        endpoint.stop()


# ---------------------------------------------------------------- the driver


def base_tree(revision: str, into: Path) -> Path:
    """``revision`` of this repository unpacked as ``<into>/mcu_sim`` (the repository root is
    the package), for ``PYTHONPATH``."""
    archive = into / "base.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), revision],
        check=True,
    )
    package = into / "mcu_sim"
    with tarfile.open(archive) as tar:
        tar.extractall(package, filter="data")
    return into


class Side:
    """One worker process and the results it sent."""

    def __init__(self, name: str, pythonpath: Path | None, overrides: list[str]) -> None:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", *_sets(overrides)]
        self.name, self.results = name, []
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE
        )
        hello = self._read()  # the warm-up is done
        self.package, self.server_package = hello["package"], hello.get("server_package", "")

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"side {self.name} stopped (exit code {self.process.wait()})")
        return json.loads(line)

    def batch(self, episodes: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{episodes}\n")
        self.process.stdin.flush()
        result = self._read()
        self.results.append(result)
        return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def _sets(overrides: list[str]) -> list[str]:
    return [f"--set={item}" for item in overrides]


def ms_per_call(result: dict[str, Any]) -> float:
    return 1000 * result["cpu_s"] / max(result["calls"], 1)


def normalised(result: dict[str, Any]) -> float:
    """Framework CPU over the endpoint's: the same work each time, so drift cancels."""
    return result["cpu_s"] / result["endpoint_cpu_s"] if result["endpoint_cpu_s"] else 0.0


def compare(a: Side, b: Side, rounds: int, episodes: int, quiet: bool) -> dict[str, Any]:
    ratios, normal = [], []
    for number in range(rounds):
        first, second = (a, b) if number % 2 == 0 else (b, a)
        first.batch(episodes)
        second.batch(episodes)
        ra, rb = a.results[-1], b.results[-1]
        ratios.append(ms_per_call(rb) / ms_per_call(ra))
        shown = f"round {number}: A {ms_per_call(ra):.3f} ms/call, B {ms_per_call(rb):.3f}; "
        shown += f"B/A {ratios[-1]:.3f}"
        if normalised(ra) and normalised(rb):  # no endpoint CPU where /proc is missing
            normal.append(normalised(rb) / normalised(ra))
            shown += f", normalised {normal[-1]:.3f}"
        if not quiet:
            print(shown, flush=True)
    return {
        "rounds": rounds,
        "episodes_per_batch": episodes,
        "a_ms_per_call_median": statistics.median(ms_per_call(r) for r in a.results),
        "b_ms_per_call_median": statistics.median(ms_per_call(r) for r in b.results),
        "b_over_a_median": statistics.median(ratios),
        "b_over_a_range": [min(ratios), max(ratios)],
        "normalised_median": statistics.median(normal) if normal else None,
        "failed": sum(r["failed"] for r in a.results + b.results),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision for side A")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=60, help="episodes per batch")
    add_set_option(parser, "config override, both sides")
    parser.add_argument("--smoke", action="store_true", help="CI: 2 rounds of 4 episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.set)
        return
    if args.smoke:
        args.rounds, args.episodes = 2, 4
    with tempfile.TemporaryDirectory() as tmp:
        sides = [Side("A", base_tree(args.base, Path(tmp)), args.set), Side("B", None, args.set)]
        try:
            result = compare(*sides, args.rounds, args.episodes, quiet=args.json)
        finally:
            for side in sides:
                side.close()
    result["base"] = args.base
    result["packages"] = {side.name: side.package for side in sides}
    result["server_packages"] = {side.name: side.server_package for side in sides}
    if args.json:
        print(json.dumps(result))
        return
    low, high = result["b_over_a_range"]
    print(
        f"A = {args.base}, B = this tree: median {result['a_ms_per_call_median']:.3f} against "
        f"{result['b_ms_per_call_median']:.3f} ms per call; B/A median "
        f"{result['b_over_a_median']:.3f} ({low:.3f}-{high:.3f}), normalised by endpoint CPU "
        f"{result['normalised_median'] or float('nan'):.3f} (A imported mcu_sim from "
        f"{result['packages']['A']}, B from {result['packages']['B']})"
    )


if __name__ == "__main__":
    main()
