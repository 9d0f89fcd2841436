"""The stepwise strategy over real HTTP: plain-text answers from the fake endpoint become a
valid episode; answers that break the text rules are asked again a bounded number of times,
then replaced by the role's fallback with the reason kept."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

import pytest

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.stepwise import events as stepwise_events
from mcu_sim.agents.stepwise.text import (
    ATTEMPTS,
    Pieces,
    ask_text,
    check_echo,
    check_text,
    shingles,
    tidy,
)
from mcu_sim.config import StepSettings, load_config
from mcu_sim.dataset.readability import reads_as_english, run_readability
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.plain_text import plain_answer

WINDOW = (dt.date(2022, 3, 1), dt.date(2022, 12, 31))  # the episode date window


def _stepwise_config(tmp_path: Path, *more: str):
    return load_config(
        None,
        [
            "llm.strategy=stepwise",
            "images.enabled=false",
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            "episode.max_turns=6",
            "episode.min_sharing_moments=1",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            *more,
        ],
    )


def test_stepwise_episode_from_plain_text(fake_openai, tmp_path: Path) -> None:
    fake_openai.handler = plain_answer
    config = _stepwise_config(tmp_path)
    runner = EpisodeRunner(config, tmp_path / "run", llm=client_for(fake_openai, None))
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 3)))
    assert report.failed == {} and report.finished == ["ep-00000003"]
    episode = Episode.model_validate_json(
        (tmp_path / "run" / "episodes" / "ep-00000003.json").read_text()
    )
    # plain-text requests: no schema, a stop sequence, one short piece each
    # (the text-safety judge, a label and a reason, keeps its structured request)
    bodies = [r.body for r in fake_openai.chat_requests if schema_name(r.body) != "JudgeVerdict"]
    assert bodies and all("response_format" not in b and b["stop"] == ["\n"] for b in bodies)
    assert all(b["max_tokens"] <= 120 for b in bodies)
    # code assembled the structure: speakers alternate, photos shared in every session
    assert len(episode.persona) >= 1 and len(episode.events.events) == 2
    for session in episode.sessions:
        spoken = [t for t in session.turns if not t.sharing]
        assert len(spoken) == 6 and spoken[0].speaker == "AI Assistant"
        assert {t.speaker for t in spoken[1::2]} == {episode.demographics.name}
        shared = [t for t in session.turns if t.sharing]
        assert shared and all(t.speaker == episode.demographics.name for t in shared)
        assert all(t.sharing.rationale.startswith("To ") for t in shared)
        # the model's own lines, none replaced by a fallback
        assert not any(
            t.utterance.startswith(("That sounds lovely", "I wanted to")) for t in spoken
        )
    assert episode.prompt_versions["dialogue"].startswith("stepwise ")
    result = run_readability(tmp_path / "run")
    assert all(entry["share"] >= 0.9 for entry in result.values()), result


@pytest.mark.parametrize(
    "bad", ["1234 5678 9012 3456", '{"event": "a dance show", "caused_by": 0}', ""]
)
def test_broken_text_is_retried_then_falls_back(fake_openai, bad: str) -> None:
    asked: list[str] = []

    def handler(body: dict) -> str:
        asked.append(body["messages"][-1]["content"])
        return bad

    fake_openai.handler = handler
    call = RoleCall(llm=client_for(fake_openai, None), settings=StepSettings(), seed=5)
    graph, completion, _ = asyncio.run(
        stepwise_events.generate_events(
            call, "Lena", "Lena dances.", 1, 2, WINDOW, random.Random(3)
        )
    )
    # event 1, event 2, the experience between them: each asked EVENT_ATTEMPTS times
    tries = stepwise_events.EVENT_ATTEMPTS
    assert len(asked) == 3 * tries
    assert len(fake_openai.chat_requests) == 3 * tries
    first, second = graph.events
    assert first.event.startswith("Lena spends a quiet day at home")  # the fallback rule
    assert second.event.startswith("Lena meets an old friend")  # a different one
    assert second.caused_by is not None and second.caused_by.id == 1
    assert second.date > first.date
    assert all(WINDOW[0] <= e.date <= WINDOW[1] for e in graph.events)
    notes = completion.repairs_by_code
    assert len(notes) == 3 and all(f"after {tries} answers" in n for n in notes)
    assert all("refused" in n and n.startswith("events: ") for n in notes)
    assert completion.usage.calls == 3 * tries


# "Lena, Lena's a person.": words and punctuation pass every other check, but an event must
# say something besides the name (a 135M model answered so in the README demo)
@pytest.mark.parametrize("bad", ["12 34 56 78 90", "Lena, Lena's a person."])
def test_a_good_answer_after_a_bad_one_is_used(fake_openai, bad: str) -> None:
    answers = iter([bad, "Lena joins a dance class near her home."])
    fake_openai.handler = lambda body: next(answers, "Lena practices every single evening.")
    call = RoleCall(llm=client_for(fake_openai, None), settings=StepSettings(), seed=5)
    graph, completion, _ = asyncio.run(
        stepwise_events.generate_events(
            call, "Lena", "Lena dances.", 0, 1, WINDOW, random.Random(3)
        )
    )
    assert graph.events[0].event == "Lena joins a dance class near her home."
    assert completion.repairs_by_code == [] and len(fake_openai.chat_requests) == 2
    seeds = [r.body["seed"] for r in fake_openai.chat_requests]
    assert seeds[0] != seeds[1]  # asked again with another seed, not the same request


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "1: quanquiamagrafe 0056.00.2-1",
        '"utterance": "hi there friend"',
        "image_id_original: [249]",
        "I am a professional professional professional dancer.",
        "ok",
    ],
)
def test_check_text_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        check_text(tidy(text))


def test_an_answer_that_copies_its_request_is_refused() -> None:
    seen = shingles("Quan is a retired bus driver who walks in the park every day.")
    with pytest.raises(ValueError, match="copies the request"):
        check_echo("Quan walks in the park every day with friends.", seen)
    check_echo("Quan meets an old friend from the bus company.", seen)


def test_the_person_does_not_greet_themselves_or_talk_like_the_assistant() -> None:
    from mcu_sim.agents.stepwise.dialogue import person_refusals

    refused = person_refusals("Zhidong")
    greetings = ("Hi Zhidong! Thanks.", "Hai Zhidong, hope you're well.", "Zhidong! Good to see.")
    for said in (*greetings, "Thank you, Zhidong.", "How can I help?"):
        assert refused.search(said), said
    for said in ("Hi! I'm Zhidong, nice to meet you.", "Zhidong here, back from the lake."):
        assert not refused.search(said), said
    assert person_refusals("A.J.").search("hey A.J., how are you")  # the name is literal


def test_tidy_and_readability() -> None:
    assert tidy('AI Assistant: "Hello Quan! How was the show? It was') == (
        "Hello Quan! How was the show?"
    )
    check_text(tidy("I love dancing, and I went to a show at 8 pm."))
    assert reads_as_english("I watched a dance show downtown with my sister.")
    assert reads_as_english("Hello! I'm glad you're having a great day.")
    assert not reads_as_english("quanquiamagrafe 0056 image_id_original")
    assert not reads_as_english("Dance show")  # under three words
    # the person's name is no English word, but is no sign of broken text either
    assert not reads_as_english("The person is Zhidong!")
    assert reads_as_english("The person is Zhidong!", frozenset({"zhidong"}))
    assert reads_as_english("Zhidong's dog ran off.", frozenset({"zhidong"}))
    assert not reads_as_english("Zhidong Zhidong qxzv wrrp.", frozenset({"zhidong"}))


def test_auto_strategy_follows_the_provider() -> None:
    embedded = load_config(None, [])
    endpoint = load_config(
        None, ["llm.provider.kind=openai_compatible", "llm.provider.base_url=http://x/v1"]
    )
    assert embedded.llm.strategy == "auto" and embedded.llm.resolved_strategy() == "stepwise"
    assert endpoint.llm.resolved_strategy() == "structured"
    forced = load_config(None, ["llm.strategy=structured"])
    assert forced.llm.resolved_strategy() == "structured"


def test_ask_text_tries_attempts_times_then_notes_the_reason(fake_openai) -> None:
    fake_openai.handler = lambda body: "[1, 2, 3]"
    call = RoleCall(llm=client_for(fake_openai, None), settings=StepSettings(), seed=1)
    pieces = Pieces("dialogue")
    text = asyncio.run(
        ask_text(
            call,
            pieces,
            "stepwise_photo",
            fallback="A photo of a quiet street.",
            what="a photo",
            context="Lena walks home.",
            subject="the photo",
        )
    )
    assert text == "A photo of a quiet street." and pieces.texts == [text]
    assert len(fake_openai.chat_requests) == ATTEMPTS
    (note,) = pieces.fallbacks
    assert note.startswith("dialogue: a photo fell back") and "[1, 2, 3]" in note
