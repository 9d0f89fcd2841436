"""episode.preset over real HTTP: ``stark`` makes the paper's calls (30 persona sentences,
one commonsense call per relation with its own frame), ``economy`` today's cheaper ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import load_config
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer


def _run(tmp_path: Path, server: Any, *overrides: str) -> Episode:
    config = load_config(
        None,
        [
            "images.enabled=false",
            "filters.text_safety=off",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            *overrides,
        ],
    )
    runner = EpisodeRunner(config, tmp_path / "run", llm=client_for(server, None))
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 3)))
    assert report.failed == {}
    text = (tmp_path / "run" / "episodes" / "ep-00000003.json").read_text()
    return Episode.model_validate(json.loads(text))


def _bodies(server: Any, role: str) -> list[dict]:
    return [r.body for r in server.chat_requests if schema_name(r.body) == role]


def test_the_stark_preset_is_the_default_and_makes_the_papers_calls(fake_openai, tmp_path) -> None:
    fake_openai.handler = scripted_answer
    episode = _run(tmp_path, fake_openai)
    (persona,) = _bodies(fake_openai, "PersonaOutput")
    assert "Write 30 different statements" in persona["messages"][-1]["content"]
    assert len(episode.persona) == 30
    asked = _bodies(fake_openai, "CommonsenseAnswer")
    assert len(asked) == 5 and not _bodies(fake_openai, "CommonsenseOutput")
    prompts = sorted(body["messages"][-1]["content"] for body in asked)
    frames = ["I regularly <routine/habit>.", "I plan <goal/plan>.", "So, I <relationship>.",
              "I <characteristic>.", "I <experience>. Now, I am"]  # fmt: skip
    for frame in frames:  # each relation asked with its own frame, once
        assert sum(frame in p for p in prompts) == 1, frame
    assert [c.relation for c in episode.commonsense] == [
        "routine_habit", "characteristic", "experience", "goal_plan", "relationship"
    ]  # fmt: skip
    assert episode.usage["commonsense"]["calls"] == 5
    assert episode.prompt_versions["commonsense_relation"].split("+")[0] == "1"


@pytest.mark.parametrize("override", [[], ["episode.persona_sentences=5"]])
def test_the_economy_preset_makes_one_joint_call(fake_openai, tmp_path, override) -> None:
    fake_openai.handler = scripted_answer
    episode = _run(tmp_path, fake_openai, "episode.preset=economy", *override)
    (persona,) = _bodies(fake_openai, "PersonaOutput")
    count = 5 if override else 8  # a field set by hand wins over the preset
    assert f"Write {count} different statements" in persona["messages"][-1]["content"]
    assert len(episode.persona) == count
    assert len(_bodies(fake_openai, "CommonsenseOutput")) == 1
    assert not _bodies(fake_openai, "CommonsenseAnswer")
    assert len(episode.commonsense) == 5 and episode.usage["commonsense"]["calls"] == 1
