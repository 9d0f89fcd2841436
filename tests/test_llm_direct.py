"""``llm.provider.http_client: direct`` (mcu-sim's own aiohttp client) against the real HTTP
fake endpoint: the same wire body as the SDK path, and every fault class retried, bounded
or surfaced exactly as with the SDK (the Azure URL is tested in ``test_llm.py``)."""

from __future__ import annotations

import hashlib
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from mcu_sim.agents.llm.client import LLMRequestError, LLMTransportError
from mcu_sim.testing.fake_openai import FakeOpenAIServer, Fault, Reply, client_for

USER = [{"role": "user", "content": "Describe one person."}]
GOOD = {"name": "Ada", "age": 36}
KEY = "fake-direct-SECRET-0123456789"


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


@pytest.fixture
def direct(fake_openai: FakeOpenAIServer) -> Iterator[Any]:
    """A factory of direct-transport clients; each is closed on its loop by the test."""

    def make(**provider: Any) -> Any:
        return client_for(
            fake_openai,
            None,
            http_client="direct",
            api_key_env="DIRECT_KEY",
            environ={"DIRECT_KEY": KEY},
            **provider,
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield make
    assert not [w for w in caught if "Unclosed" in str(w.message)]


async def test_direct_sends_what_the_sdk_sends(fake_openai, direct) -> None:
    fake_openai.handler = lambda body: Reply(GOOD, 12, 7)
    sdk = client_for(fake_openai, None, api_key_env="DIRECT_KEY", environ={"DIRECT_KEY": KEY})
    client = direct()
    try:
        first = await sdk.complete(USER, Person, seed=5)
        second = await client.complete(USER, Person, seed=5)
    finally:
        await sdk.aclose()
        await client.aclose()
    assert first.value == second.value == Person(**GOOD)
    via_sdk, via_direct = fake_openai.chat_requests
    assert via_direct.body == via_sdk.body  # the same JSON on the wire
    assert via_direct.path == via_sdk.path == "/v1/chat/completions"
    assert via_direct.auth_sha256 == hashlib.sha256(f"Bearer {KEY}".encode()).hexdigest()
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (12, 7)


async def test_direct_retries_each_transient_fault(fake_openai, direct) -> None:
    client = direct(timeout_s=0.5)
    fake_openai.script(
        Fault.status(429, retry_after=0.2),
        Fault.status(503),
        Fault.delay(3, then=GOOD),
        Fault.malformed(),
        Fault.disconnect(),
        GOOD,
    )
    try:
        result = await client.complete(USER, Person)
    finally:
        await client.aclose()
    assert result.value == Person(**GOOD)
    sent = fake_openai.chat_requests
    assert len(sent) == 6
    assert sent[1].arrived - sent[0].arrived >= 0.2  # Retry-After honoured


async def test_direct_bounds_retries_and_surfaces_refusals(fake_openai, direct) -> None:
    client = direct(timeout_s=0.3, max_attempts=2)
    try:
        fake_openai.handler = lambda body: Fault.delay(2)
        with pytest.raises(LLMTransportError, match="2 attempt"):
            await client.complete(USER, Person)
        assert len(fake_openai.chat_requests) == 2
        fake_openai.handler = lambda body: Fault.status(401, message=f"bad key {KEY}")
        with pytest.raises(LLMRequestError, match="HTTP 401") as info:
            await client.complete(USER, Person)
        assert len(fake_openai.chat_requests) == 3  # a refusal is not retried
        assert KEY not in str(info.value) and "bad key ***" in str(info.value)
        shown = "".join(traceback.format_exception(info.value))
        assert info.value.__suppress_context__ and KEY not in shown
    finally:
        await client.aclose()


async def test_direct_reports_a_cut_off_answer(fake_openai, direct) -> None:
    client = direct(repair_turns=0)
    fake_openai.handler = lambda body: Reply('{"name": "Ada", "ag', 5, 64, finish_reason="length")
    try:
        with pytest.raises(Exception, match="cut off at max_tokens"):
            await client.complete(USER, Person)
    finally:
        await client.aclose()


def test_proxies_come_from_the_environment_once(monkeypatch) -> None:
    from mcu_sim.agents.llm.client import direct_http

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    direct_http.proxy_for.cache_clear()
    try:
        assert direct_http.proxy_for("https://api.example/v1") == "http://proxy.example:3128"
        assert direct_http.proxy_for("https://internal.example/v1") is None
        assert direct_http.proxy_for("http://plain.example/v1") is None  # no HTTP_PROXY
    finally:
        direct_http.proxy_for.cache_clear()
