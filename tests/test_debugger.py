"""The step debugger driven as a person would: `mcu debug` under a pseudo-terminal against the
fake endpoint (real HTTP), then the checkpoints and files it left; plus the debugger's edge
cases in-process and the state helpers it relies on."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml
from langgraph.types import Overwrite
from rich.console import Console

from mcu_sim.config import load_config
from mcu_sim.debug.debugger import debug_episode
from mcu_sim.debug.state import (
    StateEditError,
    diff,
    edit_update,
    get_path,
    set_path,
    step_overrides,
)
from mcu_sim.debug.timetravel import history, parse_episode_ref, show
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer, scripted_object

MCU = Path(sys.executable).parent / "mcu"
PROMPT = r"mcu-debug [\w.-]+> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TOMATOES = "I grow tomatoes on my balcony."
RADIOS = "I restore old radios."

EDITOR_SCRIPT = f"""
import json, sys
path = sys.argv[1]
value = json.load(open(path))
value["sentence"] = {RADIOS!r}
json.dump(value, open(path, "w"))
"""


def _write_config(tmp_path: Path, url: str) -> Path:
    config = {
        "llm": {
            "provider": {"kind": "openai_compatible", "base_url": url, "model": "fake-model"},
            "cache": {"path": str(tmp_path / "llm-cache.sqlite")},
        },
        "episode": {"sessions_min": 2, "sessions_max": 2},
        "images": {"enabled": False},
    }
    path = tmp_path / "mcu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _persona_requests(server: Any) -> list[dict[str, Any]]:
    return [r.body for r in server.chat_requests if schema_name(r.body) == "PersonaOutput"]


class Terminal:
    """`mcu debug` in a pseudo-terminal; ``run(line)`` returns the screen up to the prompt."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.child = pexpect.spawn(
            str(MCU), args, env=env, encoding="utf-8", dimensions=(60, 220), timeout=90
        )
        self.transcript: list[str] = []
        self.screen = self._until_prompt()

    def _until_prompt(self) -> str:
        self.child.expect(PROMPT)
        text = ANSI.sub("", self.child.before).replace("\r\n", "\n")
        self.transcript.append(text)
        return text

    def run(self, line: str) -> str:
        self.child.sendline(line)
        return self._until_prompt()


def test_debug_session_in_a_terminal(fake_openai, tmp_path: Path) -> None:
    fake_openai.handler = scripted_answer
    config_path = _write_config(tmp_path, fake_openai.url)
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR_SCRIPT)
    run_dir = tmp_path / "run"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MCU__")},
        "TERM": "xterm",
        "NO_COLOR": "1",
        "COLUMNS": "220",
        "EDITOR": f"{sys.executable} {editor}",
    }
    args = ["debug", "--seed", "7", "--config", str(config_path), "--out", str(run_dir)]
    term = Terminal([*args, "--break", "persona,session"], env)
    try:
        # ran up to the first breakpoint
        assert "ran demographics, face" in term.screen
        assert "stop before persona" in term.screen
        assert "persona reads: seed, demographics, persona_category" in term.screen
        # with a short preview of each field it reads
        assert "seed = 7" in term.screen
        assert re.search(r'demographics = \{"age_group": "[^"]+", "age": \d+', term.screen)
        assert re.search(r'persona_category = \{"category": "', term.screen)

        screen = term.run("s")
        assert "ran persona" in screen and "+ persona.0 = " in screen
        assert "stop before commonsense" in screen
        assert "commonsense reads: seed, demographics, persona, persona_focus" in screen

        first_sentence = json.loads(term.run("show persona.0.sentence").splitlines()[-1])
        assert isinstance(first_sentence, str) and first_sentence != TOMATOES
        age = json.loads(term.run("p demographics.age").splitlines()[-1])

        screen = term.run("edit demographics.age 500")
        assert "refused: demographics.age: Input should be less than or equal to 120" in screen
        assert "the state is unchanged" in screen
        assert json.loads(term.run("show demographics.age").splitlines()[-1]) == age

        screen = term.run(f'edit persona.0.sentence "{TOMATOES}"')
        assert "accepted edit of persona.0.sentence" in screen
        assert f'~ persona.0.sentence: "{first_sentence}" → "{TOMATOES}"' in screen
        screen = term.run("edit persona.1")  # opens $EDITOR on the attribute's JSON
        assert "accepted edit of persona.1" in screen and RADIOS in screen

        screen = term.run("rerun --set temperature=0.2")
        assert "re-running persona with temperature=0.2" in screen
        assert "ran persona" in screen and "stop before commonsense" in screen
        # a plain rerun: same settings as the first persona call, whose answer is in the
        # cache, yet the endpoint is asked again (the cache is bypassed)
        asked = _persona_requests(fake_openai)
        screen = term.run("rerun")
        assert "re-running persona from #" in screen and "ran persona" in screen
        assert len(_persona_requests(fake_openai)) == len(asked) + 1
        assert "commonsense reads: seed, demographics, persona, persona_focus" in screen
        assert "persona_focus = " in screen

        table = term.run("history")
        edited = next(line for line in table.splitlines() if "edit persona.1" in line)
        index = re.search(r"\d+", edited).group()
        screen = term.run(f"goto {index}")
        assert f"stop before commonsense at #{index}" in screen

        screen = term.run("fork ep-tomato")
        assert "into episode ep-tomato" in screen and "now debugging ep-tomato" in screen
        screen = term.run("c")
        # images are off here: the album requests are settled by device_images itself, so
        # no align_album branch runs before the first session
        assert "ran commonsense, narrative, events, device_images;" in screen
        assert "align_album" not in screen.split("state changes")[0]
        assert "stop before session" in screen

        term.child.sendline("q")
        term.child.expect(pexpect.EOF)
        assert "left ep-tomato" in ANSI.sub("", term.child.before)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0, "\n".join(term.transcript)

    # the first rerun asked the endpoint with the changed temperature, the plain one with
    # the step's own (the same request as the first call: only a bypassed cache sends it)
    temperatures = [body["temperature"] for body in _persona_requests(fake_openai)]
    assert len(temperatures) == 3 and temperatures[1] == 0.2
    assert temperatures[2] == temperatures[0] != 0.2

    # the fork is a new thread holding both edits, stopped before the session node
    fork_ref = parse_episode_ref(run_dir / "ep-tomato")
    fork_state = asyncio.run(show(fork_ref))
    assert fork_state["episode_id"] == "ep-tomato"
    assert [p["sentence"] for p in fork_state["persona"][:2]] == [TOMATOES, RADIOS]
    assert "commonsense" in fork_state and "sessions" in fork_state
    assert asyncio.run(history(fork_ref))[-1].next == ("session",)

    # the original thread's head is the re-run persona (the edits live on a side branch)
    original = parse_episode_ref(run_dir / "ep-00000007")
    assert asyncio.run(show(original, field="persona.0.sentence")) != TOMATOES
    notes = [row.wrote for row in asyncio.run(history(original))]
    assert "edit persona.0.sentence" in notes and "edit persona.1" in notes

    # quitting left it resumable: the batch runner finishes it without redoing earlier nodes
    runner = EpisodeRunner(load_config(config_path), run_dir)
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 7)))
    assert report.finished == ["ep-00000007"], report.failed
    assert runner.executions["persona"] == 0 and runner.executions["demographics"] == 0
    assert runner.executions["commonsense"] == 1 and runner.executions["session"] == 2


def test_debugger_edge_cases_in_process(fake_openai, tmp_path: Path, monkeypatch) -> None:
    bad_events = Counter()

    def handler(body: dict) -> Any:
        if schema_name(body) == "EventsOutput" and bad_events["n"] < 3:
            bad_events["n"] += 1  # first answer and both repairs are hopeless
            answer = scripted_object(body)
            answer["events"][-1]["caused_by"] = 99
            return json.dumps(answer)
        return scripted_answer(body)

    fake_openai.handler = handler
    monkeypatch.setenv("EDITOR", "false")  # an editor that fails
    commands = iter(
        [
            "bogus",
            "rerun",
            "show nope",
            "goto 99",
            "break nowhere",
            "s",
            "edit seed",
            "rerun temperature=0.1",
            "break events",
            "c",
            "rerun top_p=7",
            "s",
            "s",
            "break none",
            "c",
            "s",
        ]
    )

    def read_line(prompt: str) -> str:
        try:
            return next(commands)
        except StopIteration:
            raise EOFError from None

    buffer = io.StringIO()
    config = load_config(
        None, ["episode.sessions_min=1", "episode.sessions_max=1", "images.enabled=false"]
    )
    client = client_for(fake_openai, tmp_path / "llm-cache.sqlite")
    run = RunDir(tmp_path / "run")
    ended = asyncio.run(
        debug_episode(
            run,
            config,
            "ep-x",
            seed=3,
            console=Console(file=buffer, width=200),
            read_line=read_line,
            llm=client,
        )
    )
    out = buffer.getvalue()
    assert ended == "ep-x"
    assert "stop before demographics" in out
    assert "unknown command 'bogus'" in out
    assert "no node has run before this checkpoint" in out
    assert "the state has no field 'nope'" in out
    assert "no checkpoint #99" in out
    assert "unknown node nowhere" in out
    assert "the editor exited with status 1" in out
    assert "top_p: Input should be less than or equal to 1" in out
    assert "demographics makes no LLM call" in out
    assert "node failed: LLMOutputError" in out and bad_events["n"] == 3
    assert "ran events" in out  # the next step, with a good answer, went through
    assert "episode finished" in out and "the episode is finished here" in out
    assert run.is_finished("ep-x")
    assert "left ep-x" in out  # end of input quits


# ---------------------------------------------------------------- state helpers


def test_paths_edits_and_diffs() -> None:
    values = {
        "persona": [
            {"sentence": "I like tea.", "relation": "like", "entity": {"key": "k", "value": "v"}}
        ],
        "persona_focus": 0,
        "sessions": [],
        "demographics": {
            "age_group": "20-30",
            "age": 25,
            "gender": "female",
            "birthplace": "Kenya",
            "residence": "Kenya",
            "name": "Amani",
        },
    }
    assert get_path(values, "persona[0].entity.value") == "v"
    with pytest.raises(StateEditError, match="index 3 is out of range"):
        get_path(values, "persona.3")
    field, top = set_path(values, "persona.0.sentence", "I like coffee.")
    assert field == "persona" and top[0]["sentence"] == "I like coffee."
    assert values["persona"][0]["sentence"] == "I like tea."  # not modified in place
    # a reducer field is overwritten, not merged into
    update = edit_update(values, "sessions", [])
    assert isinstance(update["sessions"], Overwrite)
    plain = edit_update(values, "demographics.age", "29")
    assert plain == {"demographics": {**values["demographics"], "age": 29}}
    with pytest.raises(StateEditError, match="outside its group"):
        edit_update(values, "demographics.age", 31)
    with pytest.raises(StateEditError, match="persona_focus is 3"):
        edit_update(values, "persona_focus", 3)
    with pytest.raises(StateEditError, match="not a state field"):
        edit_update(values, "mood", "happy")
    changes = diff(values, {**values, "persona_focus": 1, "notes": ["a"]})
    assert [(c.kind, c.path) for c in changes] == [
        ("changed", "persona_focus"),
        ("added", "notes.0"),
    ]
    assert step_overrides(["session"], {"temperature": 0.2}) == {
        "dialogue": {"temperature": 0.2},
        "summarizer": {"temperature": 0.2},
    }
