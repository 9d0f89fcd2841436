"""What a run is made of: episode jobs, which of them to run, and the report of a run.

Shared by the local runner, the Ray driver and its workers (a lower module, so none of
them imports another for these).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mcu_sim.agents.llm.client import Usage
from mcu_sim.runner.manifest import episode_id_for, forks_in_manifest, jobs_in_manifest
from mcu_sim.runner.outputs import RunDir


@dataclass(frozen=True)
class EpisodeJob:
    episode_id: str
    seed: int


@dataclass
class RunReport:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped_for_budget: bool = False
    interrupted: bool = False
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    executions: Counter = field(default_factory=Counter)
    backend: str = "local"
    run_removals: dict[str, int] = field(default_factory=dict)  # run-level filter marks


def plan_jobs(episodes: int, base_seed: int) -> list[EpisodeJob]:
    """Episode i gets seed ``base_seed + i``; its id is derived from that seed."""
    return [EpisodeJob(episode_id_for(base_seed + i), base_seed + i) for i in range(episodes)]


def unique_jobs(jobs: list[EpisodeJob]) -> list[EpisodeJob]:
    """``jobs`` without repeats: two workers on one episode thread would corrupt it."""
    seen: set[str] = set()
    unique = []
    for job in jobs:
        if job.episode_id not in seen:
            seen.add(job.episode_id)
            unique.append(job)
    return unique


def is_planned(job: EpisodeJob) -> bool:
    """A job of the run's plan (its id derives from its seed); forks and other ids are not."""
    return job.episode_id == episode_id_for(job.seed)


def failed_jobs(run: RunDir) -> list[EpisodeJob]:
    """The jobs recorded in ``failures/`` (what ``mcu retry-failed`` re-runs)."""
    return [EpisodeJob(i, int(run.read_failure(i)["seed"])) for i in run.failed_ids()]


def manifest_jobs(run: RunDir) -> list[EpisodeJob]:
    """Every job the run directory's manifest has planned, then its forks (what
    ``--resume`` continues)."""
    planned = [EpisodeJob(episode_id_for(s), s) for s in jobs_in_manifest(run)]
    return planned + [EpisodeJob(f["episode_id"], int(f["seed"])) for f in forks_in_manifest(run)]
