"""The provider layer's transport against a real HTTP fake endpoint, through the real openai
SDK: retries, limits, what goes on the wire, secrets, and the fake server itself. Answers
(validation, repair, cache, usage) are in ``test_llm_outputs.py``.

Waits are checked loosely from the arrival times the server records: lower bounds and
ordering only, never tight upper bounds.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
import json
import logging
import queue
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from mcu_sim.agents.llm.client import (
    LLMRequestError,
    LLMTransportError,
)
from mcu_sim.config import default_step_settings, render_config
from mcu_sim.testing.fake_openai import (
    FakeOpenAIServer,
    Fault,
    client_for,
    route_by_schema,
    schema_example_handler,
    schema_name,
)

USER = [{"role": "user", "content": "Describe one person."}]
GOOD = {"name": "Ada", "age": 36}


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def gaps(server) -> list[float]:
    times = [r.arrived for r in server.chat_requests]
    return [b - a for a, b in itertools.pairwise(times)]


# ----------------------------------------------------------------- retries


async def test_retry_after_is_honoured(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.script(Fault.status(429, retry_after=0.2), Fault.status(429, retry_after=0.3), GOOD)
    result = await client.complete(USER, Person)
    assert result.value == Person(**GOOD)
    assert [r.status for r in fake_openai.chat_requests] == [429, 429, 200]
    first, second = gaps(fake_openai)
    # Exponential backoff alone would wait ~0.01-0.04 s here.
    assert first >= 0.2
    assert second >= 0.3
    assert client.usage.calls == 1  # failed attempts are not answers


async def test_5xx_retried_with_growing_waits(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, retry_initial_s=0.05)
    fake_openai.script(Fault.status(500), Fault.status(502), Fault.status(503), GOOD)
    result = await client.complete(USER, Person)
    assert result.value.name == "Ada"
    waits = gaps(fake_openai)
    assert len(waits) == 3
    for n, wait in enumerate(waits):
        assert wait >= 0.05 * 2**n, waits  # initial * 2^(n-1), plus jitter


async def test_retries_stop_at_the_attempt_bound(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, max_attempts=3)
    fake_openai.handler = lambda body: Fault.status(503)
    with pytest.raises(LLMTransportError, match="3 attempt") as info:
        await client.complete(USER, Person)
    assert "max_attempts=3" in str(info.value)
    assert len(fake_openai.chat_requests) == 3
    assert client.network_calls == 3


async def test_retries_stop_at_the_time_bound(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, max_attempts=50, max_retry_seconds=0.5)
    fake_openai.handler = lambda body: Fault.status(429, retry_after=0.2)
    with pytest.raises(LLMTransportError):
        await client.complete(USER, Person)
    # Attempts at ~0, 0.2, 0.4 at most (fewer on a loaded machine): a fourth would start
    # after the 0.5 s budget, so the time bound stopped it long before max_attempts.
    assert 1 <= len(fake_openai.chat_requests) <= 3


async def test_retry_after_beyond_the_budget_stops_at_once(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, max_retry_seconds=1)
    fake_openai.handler = lambda body: Fault.status(429, retry_after=30)
    with pytest.raises(LLMTransportError, match="RateLimitError"):
        await client.complete(USER, Person)
    assert len(fake_openai.chat_requests) == 1  # never retried early against the server's ask


async def test_the_time_budget_counts_from_the_first_attempt(fake_openai, make_llm_client):
    # the budget starts when the first attempt is sent: that attempt's 0.6 s timeout alone
    # spends the 0.5 s budget, so no retry may start after it
    client = make_llm_client(cache_path=None, timeout_s=0.6, max_attempts=5, max_retry_seconds=0.5)
    fake_openai.handler = lambda body: Fault.delay(3)
    with pytest.raises(LLMTransportError, match="1 attempt"):
        await client.complete(USER, Person)
    assert len(fake_openai.chat_requests) == 1


async def test_the_time_budget_does_not_count_the_wait_for_a_slot(fake_openai, make_llm_client):
    # one slot: the second request queues behind a 1 s answer, twice its 0.5 s retry
    # budget, before anything is sent; its 429 must still be retried
    client = make_llm_client(cache_path=None, max_concurrency=1, max_retry_seconds=0.5)
    fake_openai.script(Fault.delay(1.0, then=GOOD), Fault.status(429, retry_after=0.05), GOOD)
    first, second = await asyncio.gather(
        client.complete(USER, Person), client.complete(USER, Person)
    )
    assert first.value == second.value == Person(**GOOD)
    assert [r.status for r in fake_openai.chat_requests] == [200, 429, 200]
    assert client.network_calls == 3


async def test_timeout_is_retried(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, timeout_s=1.0)
    fake_openai.script(Fault.delay(5, then=GOOD), GOOD)
    result = await client.complete(USER, Person)
    assert result.value.age == 36
    assert len(fake_openai.chat_requests) == 2


async def test_persistent_timeouts_raise_transport_error(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, timeout_s=0.2, max_attempts=2)
    fake_openai.handler = lambda body: Fault.delay(3)
    with pytest.raises(LLMTransportError, match="APITimeoutError"):
        await client.complete(USER, Person)
    assert len(fake_openai.chat_requests) == 2


async def test_malformed_body_is_an_endpoint_fault_and_retried(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.script(Fault.malformed(), GOOD)
    result = await client.complete(USER, Person)
    assert result.value.name == "Ada" and result.repairs == 0
    assert len(fake_openai.chat_requests) == 2


async def test_persistently_malformed_body_raises_transport_error(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, max_attempts=2)
    fake_openai.handler = lambda body: Fault.malformed()
    with pytest.raises(LLMTransportError, match="malformed"):
        await client.complete(USER, Person)
    assert len(fake_openai.chat_requests) == 2


async def test_dropped_connection_is_retried(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.script(Fault.disconnect(), GOOD)
    result = await client.complete(USER, Person)
    assert result.value.name == "Ada"
    assert len(fake_openai.chat_requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_surface_immediately(fake_openai, make_llm_client, status):
    client = make_llm_client(cache_path=None)
    fake_openai.handler = lambda body: Fault.status(status, message="nope")
    with pytest.raises(LLMRequestError, match=f"HTTP {status}") as info:
        await client.complete(USER, Person)
    assert info.value.status_code == status
    assert len(fake_openai.chat_requests) == 1


# ----------------------------------------------------------------- limits


def barrier_handler(parties: int):
    """Each request waits until ``parties`` requests are inside the server at once."""
    barrier = threading.Barrier(parties, timeout=20)

    def handler(body):
        barrier.wait()
        return GOOD

    return handler


async def test_concurrency_limit_is_respected(fake_openai, make_llm_client):
    fake_openai.handler = barrier_handler(3)  # a client allowing fewer than 3 would hang
    client = make_llm_client(cache_path=None, max_concurrency=3)
    await asyncio.gather(*(client.complete(USER, Person) for _ in range(12)))
    assert fake_openai.max_in_flight == 3
    fake_openai.reset()
    fake_openai.handler = barrier_handler(12)
    unlimited = make_llm_client(cache_path=None, max_concurrency=50)
    await asyncio.gather(*(unlimited.complete(USER, Person) for _ in range(12)))
    assert fake_openai.max_in_flight == 12  # the limit above was the client's, not the server's


async def test_requests_per_minute_spaces_request_starts(fake_openai, make_llm_client):
    fake_openai.handler = lambda body: GOOD
    client = make_llm_client(cache_path=None, requests_per_minute=600)  # one per 0.1 s
    started = time.monotonic()  # the server stamps arrivals with the same clock
    await asyncio.gather(*(client.complete(USER, Person) for _ in range(4)))
    arrivals = sorted(r.arrived for r in fake_openai.chat_requests)
    # The k-th request may not start before started + 0.1 * (k - 1).
    for k, arrived in enumerate(arrivals):
        assert arrived - started >= 0.1 * k


def test_one_client_serves_successive_event_loops(fake_openai, make_llm_client):
    fake_openai.handler = lambda body: GOOD
    client = make_llm_client(cache_path=None, max_concurrency=2)
    for _ in range(2):
        results = asyncio.run(_several(client))
        assert [r.value.name for r in results] == ["Ada"] * 3
    assert len(fake_openai.chat_requests) == 6


async def _several(client):
    results = await asyncio.gather(*(client.complete(USER, Person) for _ in range(3)))
    await client.aclose()
    return results


async def test_fake_server_sustains_a_hundred_concurrent_requests(fake_openai, make_llm_client):
    fake_openai.handler = barrier_handler(100)
    client = make_llm_client(cache_path=None, max_concurrency=100)
    results = await asyncio.gather(*(client.complete(USER, Person) for _ in range(100)))
    assert [r.value for r in results] == [Person(**GOOD)] * 100
    assert fake_openai.max_in_flight == 100
    assert len(fake_openai.chat_requests) == 100  # no failures, so no retries


# ----------------------------------------------------------------- what goes on the wire


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "json_object_schema", "prompt"])
async def test_structured_output_modes_send_what_they_should(fake_openai, make_llm_client, mode):
    client = make_llm_client(cache_path=None, structured_output=mode)
    fake_openai.handler = lambda body: GOOD
    messages = [{"role": "system", "content": "You invent people."}, *USER]
    await client.complete(messages, Person)
    body = fake_openai.chat_requests[0].body
    system = body["messages"][0]["content"]
    response_format = body.get("response_format")
    if mode == "json_schema":
        assert response_format["type"] == "json_schema"
        assert response_format["json_schema"]["name"] == "Person"
        assert response_format["json_schema"]["schema"]["properties"]["name"]["maxLength"] == 20
    elif mode == "json_object_schema":
        assert response_format["type"] == "json_object"
        assert response_format["schema"]["required"] == ["name", "age"]
    elif mode == "json_object":
        assert response_format == {"type": "json_object"}
    else:
        assert response_format is None
    enforced = mode in ("json_schema", "json_object_schema")
    # Without server-side enforcement the schema travels in the system prompt.
    assert ('"maxLength":20' in system) is not enforced
    assert system.startswith("You invent people.")
    assert len(body["messages"]) == 2


async def test_sampling_settings_and_seed_are_sent(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.handler = lambda body: GOOD
    await client.complete(USER, Person, settings=default_step_settings()["narrative"], seed=7)
    body = fake_openai.chat_requests[0].body
    sent = {k: body[k] for k in ("temperature", "top_p", "frequency_penalty", "presence_penalty")}
    table5 = {"temperature": 0.9, "top_p": 0.95, "frequency_penalty": 1, "presence_penalty": 0.6}
    assert sent == table5
    assert (body["max_tokens"], body["seed"], body["model"]) == (2048, 7, "fake-model")
    no_seed = make_llm_client(cache_path=None, supports_seed=False)
    await no_seed.complete(USER, Person, seed=7)
    assert "seed" not in fake_openai.chat_requests[1].body


async def test_azure_adapter_reaches_its_deployment_url(fake_openai):
    from mcu_sim.agents.llm.adapters import make_adapter
    from mcu_sim.agents.llm.client import LLMClient
    from mcu_sim.config import LLMConfig

    provider = {
        "kind": "azure_openai",
        "azure_endpoint": fake_openai.url.removesuffix("/v1"),
        "azure_deployment": "my-gpt",
        "api_version": "2024-06-01",
        "model": "gpt-4o-mini",
    }
    config = LLMConfig.model_validate({"provider": provider, "cache": {"enabled": False}})
    adapter = make_adapter(config.provider, {"AZURE_OPENAI_API_KEY": "azure-secret-123"})
    client = LLMClient(config, adapter, None, 0.01, 1.0)
    fake_openai.handler = lambda body: GOOD
    try:
        result = await client.complete(USER, Person)
    finally:
        await client.aclose()
    assert result.value == Person(**GOOD)
    sent = fake_openai.chat_requests[0]
    assert sent.path == "/openai/deployments/my-gpt/chat/completions?api-version=2024-06-01"
    assert sent.auth_sha256 == hashlib.sha256(b"azure-secret-123").hexdigest()  # api-key header
    assert sent.body["messages"] == USER and sent.body["model"] == "gpt-4o-mini"


# ----------------------------------------------------------------- secrets


async def test_api_key_is_sent_but_never_shown(fake_openai, make_llm_client, caplog):
    key = "sk-test-VERY-SECRET-0123456789"
    client = make_llm_client(cache_path=None, api_key_env="FAKE_KEY", environ={"FAKE_KEY": key})
    fake_openai.script(
        Fault.status(500, message=f"upstream said: bad token {key}"),
        GOOD,
        Fault.status(401, message=f"Incorrect API key provided: {key}"),
    )
    with caplog.at_level(logging.DEBUG):
        await client.complete(USER, Person)
        with pytest.raises(LLMRequestError) as info:
            await client.complete(USER, Person, seed=3)
    expected = hashlib.sha256(f"Bearer {key}".encode()).hexdigest()
    assert fake_openai.chat_requests[0].auth_sha256 == expected  # the key did reach the server
    assert "authorization" not in fake_openai.chat_requests[0].headers
    shown = [
        str(info.value),
        repr(client),
        repr(client.adapter),
        repr(client.config),
        render_config_for(client),
        caplog.text,
    ]
    assert "HTTP 401" in shown[0] and "retrying" in caplog.text
    assert "Incorrect API key provided: ***" in shown[0]  # the server's words, key masked
    # the SDK's error (unredacted) is not chained: a logged traceback cannot show the key
    assert info.value.__cause__ is None and info.value.__suppress_context__
    shown.append("".join(traceback.format_exception(info.value)))
    for text in shown:
        assert key not in text


def render_config_for(client) -> str:
    from mcu_sim.config import Config

    return render_config(Config(llm=client.config))


# ----------------------------------------------------------------- the fake server itself


class Outing(BaseModel):
    when: datetime.date
    kind: Literal["hike", "museum"]
    people: list[Person] = Field(min_length=2, max_length=3)
    note: str | None = Field(None, min_length=3, max_length=5)
    score: float = Field(ge=0.5, le=1)


async def test_default_handler_answers_any_schema_with_a_valid_instance(fake_openai):
    client = client_for(fake_openai)  # the fixture's server has the default handler
    result = await client.complete(USER, Outing)
    assert result.repairs == 0
    assert len(result.value.people) == 2 and result.value.score == 0.5
    text = await client.complete(USER)
    assert text.value == "ok"


async def test_route_by_schema_answers_per_role(fake_openai, make_llm_client):
    fake_openai.handler = route_by_schema({"Person": GOOD}, fallback=schema_example_handler)
    client = make_llm_client(cache_path=None)
    person = await client.complete(USER, Person)
    outing = await client.complete(USER, Outing)
    assert person.value.name == "Ada" and outing.value.kind == "hike"
    assert [schema_name(r.body) for r in fake_openai.chat_requests] == ["Person", "Outing"]


async def test_an_exhausted_script_fails_loudly(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None, max_attempts=1)
    script = fake_openai.script(GOOD)
    await client.complete(USER, Person)
    with pytest.raises(LLMTransportError, match="ran out of replies"):
        await client.complete(USER, Person, seed=2)
    assert script.exhausted and script.remaining == 0


def test_models_route_and_unknown_routes(fake_openai):
    with urllib.request.urlopen(f"{fake_openai.url}/models", timeout=5) as response:
        models = json.load(response)
    assert models["data"][0]["id"] == "fake-model"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{fake_openai.url}/embeddings", data=b"{}", timeout=5)
    assert info.value.code == 404


async def test_capacity_makes_extra_requests_wait_inside_the_server(make_llm_client):
    serving, most = [0], [0]
    lock = threading.Lock()

    def handler(body):
        with lock:
            serving[0] += 1
            most[0] = max(most[0], serving[0])
        deadline = time.monotonic() + 10
        while server.max_in_flight < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # hold the slot until every request has arrived
        with lock:
            serving[0] -= 1
        return GOOD

    with FakeOpenAIServer(handler, capacity=2) as server:
        client = client_for(server, max_concurrency=10)
        await asyncio.gather(*(client.complete(USER, Person) for _ in range(6)))
    assert server.max_in_flight == 6  # all six were accepted...
    assert most[0] == 2  # ...but never more than two were served at once
    assert len(server.chat_requests) == 6


def test_command_line_server_for_benchmarks():
    command = [sys.executable, "-m", "mcu_sim.testing.fake_openai", "--port", "0"]
    command += ["--latency", "0.01", "--capacity", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        url = lines.get(timeout=30).strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        body = {
            "model": "m",
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
            },
        }
        request = urllib.request.Request(
            f"{url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        Person.model_validate_json(answer["choices"][0]["message"]["content"])
        assert answer["usage"]["prompt_tokens"] == 3  # "Describe one person."
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0  # SIGTERM stops it cleanly
