"""One whole episode on the embedded SmolLM2-135M model, in-process and offline.

Small on purpose (one session, short turns) so CI can afford it; the README demo runs the
longer version. The point is that a weak model still yields a *valid* episode because the
schemas bound every choice and code derives ids, dates and references.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mcu_sim.config import load_config
from mcu_sim.graphs.runner import EpisodeRunner, plan_jobs
from mcu_sim.personas.schema import Episode

pytestmark = pytest.mark.slow


def test_embedded_model_produces_a_valid_episode(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "llm.provider.kind=llamacpp",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            "llm.steps.dialogue.max_tokens=900",
            "llm.steps.events.max_tokens=900",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
            "episode.persona_sentences=3",
            "episode.device_images=2",
            "episode.max_turns=4",
            "episode.max_utterance_chars=120",
            "images.enabled=false",
            "filters.text_safety=off",
        ],
    )
    runner = EpisodeRunner(config, tmp_path / "run")
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 4)))
    assert report.failed == {}, report.failed
    (path,) = (tmp_path / "run" / "episodes").glob("*.json")
    episode = Episode.model_validate(json.loads(path.read_text()))
    assert len(episode.sessions) == 1
    assert sum(1 for t in episode.sessions[0].turns if t.sharing) >= 2
    assert report.usage.calls >= 6 and report.usage.completion_tokens > 0
