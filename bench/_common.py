"""Helpers shared by the runner benchmarks (imported from the bench/ folder by path).

The fake endpoint always runs in a subprocess (``bench/endpoint.py``), so the CPU time a
benchmark reads from its own process is the framework's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

HERE = Path(__file__).resolve().parent


@dataclass
class Endpoint:
    """A running ``bench/endpoint.py`` subprocess."""

    process: subprocess.Popen
    url: str

    def cpu_seconds(self) -> float | None:
        """CPU the endpoint process has used so far (from /proc; None where it is missing)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        """Stop it and return the statistics it prints on the way out."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}


def start_endpoint(
    latency: float,
    capacity: int,
    fault_rate: float = 0.0,
    seed: int = 0,
    hang_s: float = 3.0,
    environ: dict[str, str] | None = None,
) -> Endpoint:
    """``bench/endpoint.py`` in a subprocess; ``environ``: its environment (default: ours)."""
    command = [
        sys.executable,
        str(HERE / "endpoint.py"),
        "--port=0",
        f"--latency={latency}",
        f"--capacity={capacity}",
        f"--fault-rate={fault_rate}",
        f"--seed={seed}",
        f"--hang-s={hang_s}",
    ]
    # stderr is dropped: a killed client makes the server log connection resets
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environ
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("{"):
        process.kill()
        raise RuntimeError(f"bench/endpoint.py did not start (said {line!r})")
    hello = json.loads(line)
    return Endpoint(process, hello["url"])


def bench_overrides(url: str, sessions: int | None, concurrency: int, **provider: Any) -> list[str]:
    """Config overrides for a run against the bench endpoint (images off, no cache).
    ``sessions=None`` keeps the config's own range of sessions per episode."""
    overrides = [
        "images.enabled=false",
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={url}",
        "llm.provider.model=fake-model",
        f"llm.provider.max_concurrency={concurrency}",
        "llm.cache.enabled=false",
    ]
    if sessions is not None:
        overrides += [f"episode.sessions_min={sessions}", f"episode.sessions_max={sessions}"]
    overrides += [f"llm.provider.{k}={v}" for k, v in provider.items()]
    return overrides


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_cpu_seconds() -> float:
    """The kernel's part of :func:`cpu_seconds` (sockets, files, SQLite's writes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def rss_mb() -> float:
    """Resident set size now, from /proc (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def io_counters() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters (empty where /proc is missing): ``wchar``
    and ``rchar`` are the bytes its system calls wrote and read (files, SQLite's WAL,
    sockets), ``syscw`` the write calls."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {name: int(value) for name, _, value in (line.partition(": ") for line in lines)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scan_run(run_dir: Path) -> dict[str, Any]:
    """Episodes found in a run directory, and any duplicated or corrupt ones."""
    from mcu_sim.personas.schema import Episode
    from mcu_sim.runner.outputs import RunDir

    run = RunDir(run_dir)
    corrupt = []
    for episode_id in run.finished_ids():
        try:
            Episode.model_validate(run.read_episode(episode_id))
        except Exception as exc:  # a half-written or invalid episode file
            corrupt.append(f"{episode_id}: {type(exc).__name__}")
    shard_ids: list[str] = []
    for path in run.shard_paths():  # the set shards.json names, as readers see it
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                shard_ids.append(json.loads(line)["episode_id"])
            except (json.JSONDecodeError, KeyError):
                corrupt.append(f"{path.name}: a cut line")
    index_ids = []
    for line in run.index.read_text().splitlines() if run.index.is_file() else []:
        try:
            index_ids.append(json.loads(line)["episode_id"])
        except json.JSONDecodeError:
            corrupt.append("index.jsonl: a cut line")
    return {
        "found": run.finished_ids(),
        "failed": run.failed_ids(),
        "corrupt": corrupt,
        "shard_duplicates": len(shard_ids) - len(set(shard_ids)),
        "index_duplicates": len(index_ids) - len(set(index_ids)),
        "shard_ids": shard_ids,
    }


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def _choices(section: Any, field: str) -> list[str]:
    """The values a config field accepts (its ``Literal``), so options follow the schema."""
    return list(get_args(section.model_fields[field].annotation))


def add_event_loop_option(parser: argparse.ArgumentParser) -> None:
    from mcu_sim.config_schema import RunConfig

    choices = _choices(RunConfig, "event_loop")
    parser.add_argument("--event-loop", choices=choices, default="auto", help="run.event_loop")


def add_set_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, into ``args.set``."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help=f"{what} (repeatable)"
    )
