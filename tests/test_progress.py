"""The live progress display rendered to a real (forced) terminal: the episodes bar with its
figures, a bar per node, and figures that keep moving during a long LLM call."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from mcu_sim.agents.llm.client import Usage
from mcu_sim.config import load_config
from mcu_sim.runner.progress import RunProgress, run_with_progress
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import FakeOpenAIServer, schema_name
from mcu_sim.testing.scripted import scripted_answer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(force_terminal=True, file=screen, width=160, color_system=None), screen


def _text(screen: io.StringIO) -> str:
    return ANSI.sub("", screen.getvalue())


def test_bars_show_episode_and_node_figures() -> None:
    console, screen = _terminal()
    display = RunProgress(console)
    usage = Usage(calls=12, prompt_tokens=3000, completion_tokens=500, cost_usd=0.0123)
    display.bind(SimpleNamespace(usage=usage))  # what the display reads from a runner
    with display:
        display.handle("plan", {"total": 4, "skipped": 1, "todo": 3})
        for episode in ("a", "b", "c"):
            display.handle("start", {"episode_id": episode})
        for node in ("demographics", "face", "persona"):
            display.handle("node", {"episode_id": "a", "node": node})
        for node in ("demographics", "face"):
            display.handle("node", {"episode_id": "b", "node": node})
        display.handle("node", {"episode_id": "c", "node": "demographics"})
        for _ in range(2):
            display.handle("node", {"episode_id": "a", "node": "session"})
        display.handle("done", {"episode_id": "a"})
        display.progress.refresh()
        text = _text(screen)
    final = text[text.rfind("episodes") :]  # the last frame
    rows = {line.split()[0]: line for line in final.splitlines() if line.strip()}
    assert "2/4" in rows["episodes"]  # one skipped, one done
    assert "done 1 failed 0 in flight 2" in rows["episodes"]
    assert "calls/s 3.5k tok $0.0123" in rows["episodes"]
    assert list(rows)[1:] == ["demographics", "face", "persona", "session"]  # graph order
    assert "3/3" in rows["demographics"] and "3 runs, 1 in flight after it" in rows["demographics"]
    assert "2/3" in rows["face"] and "2 runs, 1 in flight after it" in rows["face"]
    assert "1/3" in rows["persona"] and "1 runs" in rows["persona"]
    assert "1/3" in rows["session"] and "2 runs" in rows["session"]  # one episode, twice
    assert "in flight after it" not in rows["session"]  # its episode is done


def test_log_lines_list_the_nodes() -> None:
    console = Console(record=True, width=200)
    display = RunProgress(console, enabled=False, log_every=0.0)
    display.handle("plan", {"total": 2, "skipped": 0, "todo": 2})
    display.handle("start", {"episode_id": "a"})
    display.handle("node", {"episode_id": "a", "node": "persona"})
    display.handle("node", {"episode_id": "a", "node": "demographics"})
    assert "nodes: demographics 1 (1 now) · persona 1" in console.export_text()  # graph order


class _HoldEvents:
    """Answers every role, but holds the events request until released."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()

    def __call__(self, body: dict[str, Any]) -> Any:
        if schema_name(body) == "EventsOutput":
            self.arrived.set()
            self.release.wait(20)
        return scripted_answer(body)


def test_figures_keep_moving_during_a_long_call(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    hold = _HoldEvents()
    fake_openai.handler = hold
    config = load_config(
        None,
        [
            "images.enabled=false",
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={fake_openai.url}",
            "llm.provider.model=fake-model",
            "llm.cache.enabled=false",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
        ],
    )
    console, screen = _terminal()
    during: list[str] = []

    def watch() -> None:
        hold.arrived.wait(20)
        start = len(screen.getvalue())
        threading.Event().wait(1.2)  # no runner event in this time: the call is held
        during.append(ANSI.sub("", screen.getvalue()[start:]))
        hold.release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    runner = EpisodeRunner(config, tmp_path / "run")
    try:
        report = asyncio.run(
            run_with_progress(runner, plan_jobs(1, 3), console, live=True, refresh_s=0.1)
        )
    finally:
        hold.release.set()
        watcher.join()
    assert report.finished == ["ep-00000003"]
    rates = set(re.findall(r"(\d+\.\d) calls/s", during[0]))
    assert len(rates) >= 3, during[0][-2000:]  # recomputed while nothing happened
    assert "events" not in re.findall(r"^\s*(\w+)\s", during[0], re.M)  # still running
    assert "narrative" in _text(screen)  # the node bars are drawn too
