"""Issue 33 item 4, measurement and pricing: the share of prompt tokens that repeat a prefix
already sent in the same episode, and prices for the prompt tokens an endpoint reports as
served from its cache. Everything runs against the real HTTP fake endpoint."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from mcu_sim.agents.llm.prefix import episode_prefixes
from mcu_sim.cli import app
from mcu_sim.config import load_config
from mcu_sim.config_schema import Price
from mcu_sim.runner.estimate import estimate_run
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Reply
from mcu_sim.testing.scripted import scripted_answer

USER = [{"role": "user", "content": "Describe one person."}]


def _text(body: dict[str, Any]) -> str:
    """A request as the measure serializes it: role, newline, content, newline, per message."""
    return "".join(f"{m['role']}\n{m.get('content') or ''}\n" for m in body["messages"])


def _prefix(a: str, b: str) -> int:
    """The common prefix of ``a`` and ``b``, counted character by character."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _overrides(server: FakeOpenAIServer, tmp_path: Path) -> list[str]:
    return [
        "images.enabled=false",
        "llm.provider.kind=openai_compatible",
        f"llm.provider.base_url={server.url}",
        "llm.provider.model=fake-model",
        "llm.provider.timeout_s=10",
        "llm.provider.max_concurrency=1",  # the endpoint receives requests in sent order
        "llm.cache.enabled=false",
        f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
        "episode.sessions_min=2",
        "episode.sessions_max=2",
    ]


async def test_cached_prompt_tokens_are_priced_at_the_cached_input_price(
    fake_openai: FakeOpenAIServer, make_llm_client: Any
) -> None:
    prices = {"fake-model": {"input": 2.0, "output": 8.0, "cached_input": 0.5}}
    client = make_llm_client(cache_path=None, prices=prices)
    fake_openai.script(Reply("hi", 1000, 100, cached_tokens=600), Reply("hi", 1000, 100))
    cached = await client.complete(USER)
    assert cached.usage.cached_prompt_tokens == 600
    assert cached.usage.cost_usd == pytest.approx((400 * 2.0 + 600 * 0.5 + 100 * 8.0) / 1e6)
    assert cached.usage.as_dict()["cached_prompt_tokens"] == 600
    plain = await client.complete(USER)  # no cached tokens reported: all at the input price
    assert plain.usage.cost_usd == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)
    assert "cached_prompt_tokens" not in plain.usage.as_dict()
    assert client.usage.cached_prompt_tokens == 600 and client.usage.prompt_tokens == 2000
    # without a cached_input price, cached tokens cost the input price
    unpriced = make_llm_client(cache_path=None, prices={"fake-model": {"input": 2.0}})
    fake_openai.script(Reply("hi", 1000, 100, cached_tokens=600))
    assert (await unpriced.complete(USER)).usage.cost_usd == pytest.approx(2000 / 1e6)
    with pytest.raises(ValidationError):
        Price(input=1.0, cached_input=-0.1)


async def test_the_repeated_prefix_is_measured_within_an_episode_only(
    fake_openai: FakeOpenAIServer, make_llm_client: Any
) -> None:
    client = make_llm_client(cache_path=None)
    system = {"role": "system", "content": "You are X."}
    first = [system, {"role": "user", "content": "Alpha"}]
    second = [system, {"role": "user", "content": "Alphabet"}]
    fake_openai.script(*(Reply("ok", 64, 1) for _ in range(4)))
    outside = await client.complete(first)
    with episode_prefixes():
        one = await client.complete(first)
        two = await client.complete(second)
    with episode_prefixes():
        other_episode = await client.complete(second)
    texts = [_text(r.body) for r in fake_openai.chat_requests]
    # by hand: "system\nYou are X.\nuser\nAlpha" is shared, 28 of the 32 characters
    assert _prefix(texts[2], texts[1]) == 28 and len(texts[2]) == 32
    assert two.usage.repeated_prompt_tokens == 56  # 64 prompt tokens * 28 / 32
    assert outside.usage.repeated_prompt_tokens == 0  # no episode: nothing measured
    assert one.usage.repeated_prompt_tokens == 0  # the episode's first request
    assert other_episode.usage.repeated_prompt_tokens == 0  # a new episode starts afresh
    assert client.usage.repeated_prompt_tokens == 56


def test_a_scripted_episode_reports_its_repeated_prefix_share(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in _overrides(fake_openai, tmp_path)]
    result = CliRunner().invoke(app, ["run", "-n", "1", "-o", str(out), "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    # by hand, from the requests the endpoint received (one episode, in order): each one's
    # longest common prefix with an earlier one, as a share of its (word-counted) tokens
    bodies = [r.body for r in fake_openai.chat_requests]
    texts = [_text(body) for body in bodies]
    expected = prompt = 0
    for i, (body, text) in enumerate(zip(bodies, texts, strict=True)):
        repeated = max((_prefix(text, earlier) for earlier in texts[:i]), default=0)
        tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        expected += round(tokens * repeated / len(text))
        prompt += tokens
    assert 0 < expected < prompt
    run = RunDir(out)
    (episode_id,) = run.finished_ids()
    usage = run.read_episode(episode_id)["usage"].values()
    assert sum(u.get("repeated_prompt_tokens", 0) for u in usage) == expected
    assert sum(u["prompt_tokens"] for u in usage) == prompt
    totals = json.loads(run.manifest.read_text())["usage_total"]
    assert totals["repeated_prompt_tokens"] == expected and totals["prompt_tokens"] == prompt
    assert f"{expected} ({expected / prompt:.1%})" in " ".join(result.output.split())


def test_estimate_prices_the_repeated_prefix_at_the_cached_input_price(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    price = "llm.provider.prices={fake-model: {input: 2.0, output: 8.0, cached_input: 0.5}}"
    config = load_config(None, [*_overrides(fake_openai, tmp_path), price])
    result = estimate_run(config, 10)
    shares = {r.step: r.repeated_share for r in result.roles}
    assert shares["dialogue"] > 0 and shares["persona"] == 0  # persona: the first call
    assert 0 < result.repeated_share < 1
    by_hand = 10 * sum(
        r.calls_per_episode
        * (
            r.prompt_tokens_per_call * (1 - r.repeated_share) * 2.0
            + r.prompt_tokens_per_call * r.repeated_share * 0.5
            + r.completion_tokens_per_call * 8.0
        )
        for r in result.roles
    )
    assert result.cost_usd_cached == pytest.approx(by_hand / 1e6)
    assert result.cost_usd_cached < result.cost_usd
    data = result.as_dict()
    assert data["repeated_prompt_share"] == round(result.repeated_share, 4)
    assert data["cost_usd_with_cached_input"] == round(result.cost_usd_cached, 4)
    sets = [f"--set={s}" for s in [*_overrides(fake_openai, tmp_path), price]]
    text = CliRunner().invoke(app, ["estimate", "-n", "10", *sets])
    assert text.exit_code == 0, text.output
    assert f"({result.repeated_share:.1%}) repeat a prefix" in " ".join(text.output.split())


def _dialogue_requests(server: FakeOpenAIServer) -> list[dict[str, Any]]:
    return [
        r.body
        for r in server.chat_requests
        if "sharing_moments" in json.dumps(r.body.get("response_format", {}))
    ]


def test_dialogue_requests_are_laid_out_for_prefix_caching(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The dialogue prompt is fixed text, then the person and album, then earlier sessions
    (which only grow), then what is new today: each session's request repeats the previous
    one up to the point where the previous one's session-specific part began."""
    fake_openai.handler = scripted_answer
    sets = [f"--set={s}" for s in _overrides(fake_openai, tmp_path)]
    sets = [s for s in sets if "sessions_" not in s]
    sets += ["--set=episode.sessions_min=3", "--set=episode.sessions_max=3"]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "-n", "2", "-o", str(out), "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    dialogues = _dialogue_requests(fake_openai)
    assert len(dialogues) == 6  # two episodes of three sessions
    systems = {body["messages"][0]["content"] for body in dialogues}
    assert len(systems) == 1  # no person in the fixed part: the same for every episode
    by_person: dict[str, list[str]] = {}
    for body in dialogues:  # the two episodes' requests interleave
        user = body["messages"][1]["content"]
        by_person.setdefault(user.split(":", 1)[0], []).append(user)
    assert sorted(len(users) for users in by_person.values()) == [3, 3]
    # photos taken in a session are listed under it, not appended to the first album
    assert any("new photo on the phone" in user for users in by_person.values() for user in users)
    for person, users in by_person.items():
        assert person.removeprefix("About ") not in next(iter(systems))
        for earlier, later in itertools.pairwise(users):
            stable = earlier.split("\n\nToday's topic")[0]  # the first session: person, album
            if "Earlier conversations" in earlier:  # ... and the sessions before it
                stable = earlier[: earlier.index("\n\n", earlier.index("Earlier conversations"))]
            assert later.startswith(stable), earlier + "\n=====\n" + later
            assert "Photos on" in stable and len(stable) > len(earlier) / 2
