"""Episodes on Ray: many per async episode actor (the default) or one task each
(``episode_actors=0``) give the same episodes, and the runner says what it started."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import load_config
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.ray_backend import RayEpisodeRunner
from mcu_sim.runner.runner import plan_jobs
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.testing.scripted import scripted_answer

ray = pytest.importorskip("ray")


def test_episode_actors_and_tasks_give_the_same_episodes(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    config = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={fake_openai.url}",
            "llm.provider.model=fake-model",
            "llm.cache.enabled=false",
            "images.enabled=false",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
        ],
    )
    jobs = plan_jobs(5, 70)
    episodes = {}
    for name, actors in (("actors", 1), ("tasks", 0)):
        runner = RayEpisodeRunner(config, tmp_path / name, episode_actors=actors, max_in_flight=5)
        report = asyncio.run(runner.run_jobs(jobs))
        assert report.failed == {} and len(report.finished) == 5
        assert runner.started == {"tasks": 5, "actors": actors}
        assert report.usage.calls > 5  # the monitor counted every call once
        run = RunDir(tmp_path / name)
        episodes[name] = {i: run.read_episode(i)["sessions"] for i in run.finished_ids()}
        episodes[name + "_calls"] = report.usage.calls
    assert episodes["actors"] == episodes["tasks"]
    assert episodes["actors_calls"] == episodes["tasks_calls"]  # no call counted twice


def test_run_ray_episode_actors_reaches_the_ray_runner(tmp_path: Path) -> None:
    """`run.ray_episode_actors` (operational: same fingerprint) chooses the Ray runner's
    episode actors; an explicit option still wins. Building the runner starts no Ray."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.backends import make_runner

    tasks = load_config(None, ["run.ray_episode_actors=0"])
    assert tasks.fingerprint() == load_config(None).fingerprint()
    assert make_runner(tasks, tmp_path / "a", backend="ray").episode_actors == 0
    assert make_runner(load_config(None), tmp_path / "b", backend="ray").episode_actors is None
    chosen = make_runner(tasks, tmp_path / "c", backend="ray", episode_actors=3)
    assert chosen.episode_actors == 3
