"""STARK §3.6 and §3.9 over real HTTP: the model's event graph decides the sessions, the
session-count filter removes what falls outside 4-6, and every date stays in the window."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.agents.events import MAX_INTERVAL
from mcu_sim.config import load_config
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer, scripted_object


def _run(tmp_path: Path, server: Any, *overrides: str) -> Episode:
    config = load_config(
        None,
        [
            "images.enabled=false",
            "episode.preset=economy",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            *overrides,
        ],
    )
    client = client_for(server, tmp_path / "llm-cache.sqlite")
    runner = EpisodeRunner(config, tmp_path / "run", llm=client)
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 5)))
    assert report.failed == {} and report.finished == ["ep-00000005"]
    text = (tmp_path / "run" / "episodes" / "ep-00000005.json").read_text()
    return Episode.model_validate(json.loads(text))


def _events(edit: Callable[[list[dict]], list[dict]]) -> Callable[[dict], Any]:
    def handler(body: dict) -> Any:
        if schema_name(body) != "EventsOutput":
            return scripted_answer(body)
        answer = scripted_object(body)
        answer["events"] = edit(answer["events"])
        return json.dumps(answer)

    return handler


def _graph_of(n: int) -> Callable[[list[dict]], list[dict]]:
    def edit(events: list[dict]) -> list[dict]:
        out = [dict(events[i % len(events)]) for i in range(n)]
        for number, item in enumerate(out, start=1):
            item["caused_by"] = number - 1
        return out

    return edit


def _asked(server: Any) -> str:
    body = next(r.body for r in server.chat_requests if schema_name(r.body) == "EventsOutput")
    return body["messages"][-1]["content"]


@pytest.mark.parametrize("events", [5, 4])
def test_the_session_count_follows_the_event_graph(fake_openai, tmp_path, events) -> None:
    fake_openai.handler = _events(_graph_of(events))
    episode = _run(tmp_path, fake_openai)
    assert "more than 5 events" in _asked(fake_openai)  # as the paper asks
    assert len(episode.sessions) == len(episode.events.events) == events
    assert episode.status == "complete"
    assert not [r for r in episode.removals if r.rule == "session_count"]


@pytest.mark.parametrize("events", [3, 7])
def test_the_session_count_filter_removes_graphs_outside_4_to_6(
    fake_openai, tmp_path, events
) -> None:
    fake_openai.handler = _events(_graph_of(events))
    episode = _run(tmp_path, fake_openai)
    assert len(episode.sessions) == events
    assert episode.status == "filtered"
    (mark,) = [r for r in episode.removals if r.rule == "session_count"]
    assert mark.target == "episode" and mark.reason == f"{events} sessions, outside 4-6"


def _largest(events: list[dict]) -> list[dict]:
    out = _graph_of(10)(events)
    for item in out[1:]:
        item.update(time_interval=MAX_INTERVAL, time_unit="year")
    return out


@pytest.mark.parametrize(
    "window", [("2021-01-01", "2024-04-30"), ("2019-06-01", "2019-12-31")]
)  # fmt: skip
def test_every_date_is_inside_the_window_even_with_the_largest_intervals(
    fake_openai, tmp_path, window
) -> None:
    fake_openai.handler = _events(_largest)
    start, end = window
    episode = _run(
        tmp_path,
        fake_openai,
        f"episode.date_window.start={start}",
        f"episode.date_window.end={end}",
        "episode.sessions_max=10",
    )
    low, high = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    dates = [e.date for e in episode.events.events] + [s.date for s in episode.sessions]
    assert len(episode.sessions) == 10
    assert all(low <= d <= high for d in dates), dates
    asks = [r for r in fake_openai.chat_requests if schema_name(r.body) == "EventsOutput"]
    assert len(asks) == 3  # the answer, then two repair turns that name the problem
    assert "use shorter time intervals" in asks[1].body["messages"][-1]["content"]
    # code shortened the intervals as a last resort: the edges tell the truth about the dates
    for event in episode.events.events[1:]:
        assert event.caused_by and event.caused_by.time_interval != "12 year"
    assert len({e.date for e in episode.events.events}) > 1  # shortened, not collapsed


def test_an_hour_interval_gives_a_same_day_session_and_a_prompt_in_hours(
    fake_openai, tmp_path
) -> None:
    def edit(events: list[dict]) -> list[dict]:
        out = _graph_of(4)(events)
        out[1].update(time_interval=3, time_unit="hour")
        out[2].update(time_interval=2, time_unit="week")
        out[3].update(time_interval=1, time_unit="day")
        return out

    fake_openai.handler = _events(edit)
    episode = _run(tmp_path, fake_openai)
    first, second, third, fourth = episode.sessions
    assert second.date == first.date  # 3 hours later, the same day
    assert (third.date - second.date).days == 14 and (fourth.date - third.date).days == 1
    prompts = [
        r.body["messages"][-1]["content"]
        for r in fake_openai.chat_requests
        if schema_name(r.body) == "DialogueOutput"
    ]
    assert "3 hours after the last conversation" in prompts[1]
    assert "2 weeks after the last conversation" in prompts[2]
    assert "a day after the last conversation" in prompts[3]
    assert [s.time_interval for s in episode.sessions[1:]] == ["3 hours", "2 weeks", "a day"]
