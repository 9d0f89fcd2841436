"""One whole episode on the embedded SmolLM2-135M model, in-process and offline.

Small on purpose (two sessions, short turns) so CI can afford it; the README demo runs the
longer version. Two sessions, so the n-th-session prompt (history, time since the last
session, experience in between) runs on the embedded model too. The point is that a weak
model still yields a *valid* episode that reads as English: the stepwise strategy (the
default for llamacpp) asks it for one short plain-text piece at a time, and code derives
ids, dates, speakers, sharing moments and album references.

Measured with the structured strategy, before stepwise existed (seed 4): one session
25 s, 8 calls, 2,410 + 1,004 tokens; two sessions 62 s, 10 calls (persona 1, commonsense
1, narrative 1, events 3, device 1, dialogue 3), 4,376 + 2,773 tokens; about 0.5 GB RSS.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mcu_sim.config import load_config
from mcu_sim.dataset.readability import run_readability
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs

pytestmark = pytest.mark.slow


def test_embedded_model_produces_a_valid_episode(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "llm.provider.kind=llamacpp",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            "llm.steps.dialogue.max_tokens=900",
            "llm.steps.events.max_tokens=900",
            "episode.preset=economy",
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            "episode.events_min=2",  # the graph decides within 2-2: two sessions
            "episode.events_max=2",
            "episode.min_sharing_moments=2",
            "episode.max_sharing_moments=4",  # the bound of before (2-4), now not forced above 2
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
    assert [s.index for s in episode.sessions] == [1, 2]
    for session in episode.sessions:
        assert sum(1 for t in session.turns if t.sharing) >= 2
    first, second = episode.sessions
    assert first.time_interval is None and second.time_interval  # the n-th-session variant
    assert second.date >= first.date
    assert episode.usage["session"]["calls"] >= 2
    assert report.usage.calls >= 7 and report.usage.completion_tokens > 0
    # every group of texts reads as English (>= 3 words, >= 80 % English words)
    readable = run_readability(tmp_path / "run")
    assert all(group["texts"] > 0 for group in readable.values()), readable
    assert all(group["share"] >= 0.9 for group in readable.values()), readable
