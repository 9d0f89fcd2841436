"""The provider layer's answers: validation and repair turns, the response cache, usage
and cost, and JSON extraction. Against the real HTTP fake endpoint, through the openai SDK.
Transport (retries, limits, the wire, secrets) is in ``test_llm.py``.
"""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import BaseModel, Field

from mcu_sim.agents.llm.cache import ResponseCache, cache_key
from mcu_sim.agents.llm.client import LLMOutputError
from mcu_sim.config import StepSettings, default_step_settings
from mcu_sim.testing.fake_openai import Reply

USER = [{"role": "user", "content": "Describe one person."}]
GOOD = {"name": "Ada", "age": 36}


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


# ----------------------------------------------------------------- validation and repair


async def test_repair_turn_fixes_an_invalid_answer(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    bad = {"name": "Ada", "age": 300}
    fake_openai.script(Reply(bad, 100, 10), Reply(GOOD, 130, 8))
    result = await client.complete(USER, Person)
    assert result.value == Person(**GOOD)
    assert result.repairs == 1
    second = fake_openai.chat_requests[1].body["messages"]
    assert second[: len(USER)] == USER
    assert second[-2] == {"role": "assistant", "content": Reply(bad).text}
    assert second[-1]["role"] == "user"
    assert "age" in second[-1]["content"]
    assert "less than or equal to 120" in second[-1]["content"]
    assert (result.usage.calls, result.usage.prompt_tokens) == (2, 230)
    assert result.usage.completion_tokens == 18


async def test_prose_around_json_and_no_json_at_all(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.script(
        "Sure, I cannot give a person.",
        'Here you go:\n```json\n{"name": "Bo", "age": 4}\n```',
    )
    result = await client.complete(USER, Person)
    assert result.value.name == "Bo" and result.repairs == 1
    assert "no JSON object found" in fake_openai.chat_requests[1].body["messages"][-1]["content"]


async def test_validate_callback_errors_are_fed_back(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)

    def starts_with_b(person: Person) -> None:
        if not person.name.startswith("B"):
            raise ValueError("the name must start with B")

    fake_openai.script(GOOD, {"name": "Bea", "age": 3})
    result = await client.complete(USER, Person, validate=starts_with_b)
    assert result.value.name == "Bea"
    assert "must start with B" in fake_openai.chat_requests[1].body["messages"][-1]["content"]


async def test_hopeless_answer_raises_output_error_with_raw_text(fake_openai, make_llm_client):
    client = make_llm_client(repair_turns=2)
    fake_openai.handler = lambda body: Reply("I would rather not.", 10, 5)
    with pytest.raises(LLMOutputError) as info:
        await client.complete(USER, Person)
    error = info.value
    assert error.raw_text == "I would rather not."
    assert error.attempts == 3
    assert len(fake_openai.chat_requests) == 3
    assert (error.usage.calls, error.usage.prompt_tokens, error.usage.completion_tokens) == (
        3,
        30,
        15,
    )
    assert len(client.cache) == 0  # nothing invalid is cached
    # Each repair turn carries the whole conversation so far.
    assert len(fake_openai.chat_requests[2].body["messages"]) == len(USER) + 4


async def test_an_answer_cut_off_at_max_tokens_is_named_as_such(fake_openai, make_llm_client):
    client = make_llm_client(repair_turns=1)
    cut = Reply('{"name": "Ada", "age": 3', 10, 64, finish_reason="length")
    fake_openai.handler = lambda body: cut
    with pytest.raises(LLMOutputError) as info:
        await client.complete(USER, Person, settings=StepSettings(max_tokens=64))
    assert "cut off at max_tokens=64" in str(info.value)
    # the repair turn tells the model why, so it can answer shorter
    repair = fake_openai.chat_requests[1].body["messages"][-1]["content"]
    assert "cut off at max_tokens=64" in repair
    # an answer that merely fails validation is not called cut off
    fake_openai.handler = lambda body: Reply('{"name": "Ada"}', 10, 5)
    with pytest.raises(LLMOutputError) as info:
        await client.complete(USER, Person, use_cache=False)
    assert "cut off" not in str(info.value)


async def test_text_completion_without_schema(fake_openai, make_llm_client):
    client = make_llm_client(cache_path=None)
    fake_openai.script("just words")
    result = await client.complete(USER)
    assert result.value == result.text == "just words"
    assert "response_format" not in fake_openai.chat_requests[0].body


def _adult_rescue(text: str) -> tuple[Person, list[str]]:
    data = json.loads(text)
    if "age" not in data:
        raise ValueError("nothing to rescue")
    changes = [f"age {data['age']} -> 18"] if data["age"] < 18 else []
    return Person(name=data["name"], age=max(18, data["age"])), changes


def _adult(person: Person) -> None:
    if person.age < 18:
        raise ValueError("the person must be an adult")


async def test_rescue_fixes_the_last_answer_and_is_cached_with_its_changes(
    fake_openai, make_llm_client
):
    client = make_llm_client(repair_turns=1)
    counter = iter(range(100))
    fake_openai.handler = lambda body: Reply({"name": f"Kid{next(counter)}", "age": 7}, 10, 5)
    first = await client.complete(USER, Person, validate=_adult, rescue=_adult_rescue)
    assert first.value == Person(name="Kid1", age=18)  # the last of the two answers, fixed
    assert first.repairs_by_code == ["age 7 -> 18"] and first.repairs == 2
    assert first.usage.calls == 2 and len(fake_openai.chat_requests) == 2
    again = await make_llm_client(repair_turns=1).complete(
        USER, Person, validate=_adult, rescue=_adult_rescue
    )
    assert again.cached and len(fake_openai.chat_requests) == 2  # no call for the re-run
    assert (again.value, again.repairs_by_code, again.usage) == (
        first.value,
        first.repairs_by_code,
        first.usage,
    )


async def test_a_rescue_that_cannot_help_keeps_the_output_error(fake_openai, make_llm_client):
    client = make_llm_client(repair_turns=1)
    fake_openai.handler = lambda body: Reply({"name": "Kid"}, 10, 5)
    with pytest.raises(LLMOutputError) as info:
        await client.complete(USER, Person, validate=_adult, rescue=_adult_rescue)
    assert info.value.raw_text == '{"name": "Kid"}' and len(client.cache) == 0


async def test_a_rescued_object_must_still_validate(fake_openai, make_llm_client):
    client = make_llm_client(repair_turns=0)
    fake_openai.handler = lambda body: Reply({"name": "Kid", "age": 7}, 10, 5)
    with pytest.raises(LLMOutputError):
        await client.complete(USER, Person, validate=_adult, rescue=lambda text: (text, []))
    assert len(client.cache) == 0


# ----------------------------------------------------------------- cache


async def test_cache_makes_the_second_identical_call_free(fake_openai, make_llm_client, tmp_path):
    client = make_llm_client(prices={"fake-model": {"input": 1, "output": 1}})
    fake_openai.handler = lambda body: Reply(GOOD, 1000, 1000)
    first = await client.complete(USER, Person, seed=1, prompt_version="p@1")
    second = await client.complete(USER, Person, seed=1, prompt_version="p@1")
    assert len(fake_openai.chat_requests) == 1
    assert not first.cached and second.cached
    assert second.value == first.value
    # the completion reports what the answer originally cost (so episodes are reproducible);
    # the client's ledger shows this run paid nothing for it
    assert second.usage == first.usage and first.usage.cost_usd == pytest.approx(0.002)
    assert client.usage.calls == 1 and client.usage.cached_calls == 1
    assert client.usage.cost_usd == pytest.approx(0.002)
    # The cache lives on disk: a new client (a re-run) is free too.
    rerun = make_llm_client()
    third = await rerun.complete(USER, Person, seed=1, prompt_version="p@1")
    assert third.cached and len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 2},
        {"prompt_version": "p@2"},
        {"messages": [{"role": "user", "content": "Describe another person."}]},
        {"settings": default_step_settings()["judge"]},
    ],
)
async def test_cache_key_covers_what_changes_the_answer(fake_openai, make_llm_client, change):
    client = make_llm_client()
    fake_openai.handler = lambda body: GOOD
    base = {"messages": USER, "seed": 1, "prompt_version": "p@1"}
    await client.complete(schema=Person, **base)
    again = await client.complete(schema=Person, **{**base, **change})
    assert not again.cached
    assert len(fake_openai.chat_requests) == 2


async def test_use_cache_false_bypasses_the_cache(fake_openai, make_llm_client):
    client = make_llm_client()
    fake_openai.handler = lambda body: GOOD
    await client.complete(USER, Person)
    result = await client.complete(USER, Person, use_cache=False)
    assert not result.cached
    assert len(fake_openai.chat_requests) == 2


async def test_only_the_validated_answer_is_cached(fake_openai, make_llm_client):
    client = make_llm_client()
    fake_openai.script({"name": "Ada", "age": -1}, GOOD)
    await client.complete(USER, Person)
    hit = await client.complete(USER, Person)
    assert hit.cached and hit.value == Person(**GOOD)
    assert len(client.cache) == 1


async def test_a_cached_answer_failing_new_validation_is_not_used(fake_openai, make_llm_client):
    client = make_llm_client()
    fake_openai.script(GOOD, {"name": "Bea", "age": 3})
    await client.complete(USER, Person)

    def starts_with_b(person: Person) -> None:
        if not person.name.startswith("B"):
            raise ValueError("the name must start with B")

    result = await client.complete(USER, Person, validate=starts_with_b)
    assert not result.cached and result.value.name == "Bea"


# ----------------------------------------------------------------- usage and cost


async def test_usage_and_cost_are_summed_across_repairs_and_calls(fake_openai, make_llm_client):
    prices = {"fake-model": {"input": 2.0, "output": 8.0}, "big": {"input": 10, "output": 30}}
    client = make_llm_client(cache_path=None, prices=prices)
    fake_openai.script(
        Reply({"name": "Ada", "age": "old"}, 1000, 100), Reply(GOOD, 1200, 50), Reply(GOOD, 10, 10)
    )
    first = await client.complete(USER, Person)
    assert first.usage.as_dict() == {
        "calls": 2,
        "cached_calls": 0,
        "prompt_tokens": 2200,
        "completion_tokens": 150,
        "cost_usd": round((2200 * 2.0 + 150 * 8.0) / 1e6, 8),
    }
    big = default_step_settings()["events"].model_copy(update={"model": "big"})
    second = await client.complete(USER, Person, settings=big)
    assert second.usage.cost_usd == pytest.approx((10 * 10 + 10 * 30) / 1e6)
    assert fake_openai.chat_requests[-1].body["model"] == "big"
    total = first.usage + second.usage
    assert client.usage == total
    assert total.total_tokens == 2200 + 150 + 20


# ----------------------------------------------------------------- the cache itself


def test_cache_key_is_canonical():
    assert cache_key({"a": 1, "b": [1, 2]}, "x") == cache_key({"b": [1, 2], "a": 1}, "x")
    assert cache_key({"a": 1}, "x") != cache_key({"a": 2}, "x")


def test_cache_keys_stay_those_of_earlier_versions_when_parts_come_pre_encoded():
    """Keys were sha256 of the whole parts list encoded at once; a cache written then must
    still be hit, whether the schema part is encoded per call or once (Encoded)."""
    import hashlib

    from mcu_sim.agents.llm.cache import Encoded, canonical_json
    from mcu_sim.agents.llm.client import json_schema_of

    schema = json_schema_of(Person)
    parts = [
        {"kind": "k", "model": "m"},
        {"temperature": 0.7},
        [*USER, {"role": "user", "content": "é"}],
    ]
    parts += [schema, "person@3", 7, "json_schema", None]
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    earlier = hashlib.sha256(blob.encode()).hexdigest()
    assert cache_key(*parts) == earlier
    parts[3] = Encoded(canonical_json(schema))
    assert cache_key(*parts) == earlier
    parts[4] = "person@4"
    assert cache_key(*parts) != earlier


def test_cache_is_shared_safely_between_writers(tmp_path):
    path = tmp_path / "shared.sqlite"

    def write(worker: int) -> None:
        cache = ResponseCache(path)  # one connection per writer, as separate processes would
        for n in range(50):
            cache.put(f"{worker}-{n}", f"text {worker} {n}")
        cache.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache = ResponseCache(path)
    assert len(cache) == 200
    assert cache.get("3-49") == "text 3 49" and cache.get("nope") is None
    assert (cache.hits, cache.misses) == (1, 1)
    mode = cache._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"a": 1} Hope this helps! {"b"', {"a": 1}),  # whole object, then chatter
        ('Here: {"a": [1, 2]} and {"c": 2}', {"a": [1, 2]}),  # objects before arrays
        ('```json\n{"z": 3}\n```', {"z": 3}),
        ('{"line": "two\nlines"}', {"line": "two\nlines"}),  # a raw newline in a string
    ],
)
def test_extract_json_takes_the_first_complete_object(reply: str, expected: dict) -> None:
    from mcu_sim.agents.llm.structured import extract_json

    assert extract_json(reply) == expected


def test_extract_json_without_json_raises() -> None:
    from mcu_sim.agents.llm.structured import extract_json

    with pytest.raises(ValueError, match="no JSON object found"):
        extract_json("no braces at all")


def test_a_prompt_part_without_variables_is_rendered_once_and_the_same() -> None:
    from importlib import resources

    from mcu_sim.agents.prompting import SEPARATOR, VERSION_PATTERN, _env, load_prompt

    prompt = load_prompt("narrative")
    text = resources.files("mcu_sim.agents").joinpath("prompts", "narrative.j2").read_text()
    system_source = text.split(SEPARATOR, 1)[0]
    fresh = _env.from_string(VERSION_PATTERN.sub("", system_source, count=1)).render().strip()
    assert prompt.fixed_system == fresh != ""
    assert prompt.fixed_user is None  # the user part has variables: rendered per call
    messages = prompt.render(sentence_form="Ada keeps bees.")
    assert messages[0] == {"role": "system", "content": fresh}
    assert messages[1]["content"].startswith("Ada keeps bees.")
    with pytest.raises(Exception, match="undefined"):  # a missing variable is still an error
        prompt.render()


class _Anything:
    """A template value that has every attribute and item, iterates twice and prints."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth

    def __getattr__(self, name: str) -> _Anything:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(self.depth + 1)

    def __getitem__(self, key: object) -> _Anything:
        return _Anything(self.depth + 1)

    def __iter__(self):
        inner = [_Anything(self.depth + 1), _Anything(self.depth + 2)]
        return iter(inner if self.depth < 3 else [])

    def __len__(self) -> int:
        return 2

    def __str__(self) -> str:
        return f"value{self.depth}"


def test_every_prompt_renders_the_same_through_the_quick_path_as_through_render() -> None:
    from importlib import resources

    import jinja2.meta

    from mcu_sim.agents.prompting import SEPARATOR, _env, _render, load_prompt

    folder = resources.files("mcu_sim.agents").joinpath("prompts")
    names = sorted(p.name.removesuffix(".j2") for p in folder.iterdir() if p.name.endswith(".j2"))
    assert len(names) >= 10
    rendered = 0
    for name in names:
        prompt = load_prompt(name)
        sources = folder.joinpath(f"{name}.j2").read_text().split(SEPARATOR, 1)
        for template, source in zip((prompt.system, prompt.user), sources, strict=True):
            wanted = jinja2.meta.find_undeclared_variables(_env.parse(source))
            variables = {v: _Anything() for v in wanted}
            quick = _env.concat(template.root_render_func(template.new_context(variables)))
            assert quick.strip() == template.render(**variables).strip() != ""
            assert _render(template, variables) == quick.strip()
            rendered += bool(wanted)
        with pytest.raises(jinja2.UndefinedError):
            _render(prompt.user, {})
    assert rendered >= 10  # templates with variables were compared, not only fixed text


# ----------------------------------------------------------------- device and planner roles


async def test_album_categories_are_free_text_bounded_and_normalised(fake_openai, make_llm_client):
    from mcu_sim.agents.base import RoleCall
    from mcu_sim.agents.device import CATEGORY_MAX_LENGTH, generate_device_images
    from mcu_sim.personas.lexicons import DEVICE_IMAGE_CATEGORY_EXAMPLES

    call = RoleCall(make_llm_client(cache_path=None), default_step_settings()["device"])
    too_long = {"description": "A photo of Tom's dog in the park", "categories": ["x" * 40]}
    good = [
        {
            "description": "A selfie of Tom at the Warriors' arena",
            "categories": ["Selfie ", "sport"],
        },
        {
            "description": "A screenshot of Tom's Python chatbot code",
            "categories": ["Screenshot", "  computer   Software", "screenshot"],
        },
    ]
    fake_openai.script({"images": [too_long, good[1]]}, {"images": good})
    images, completion, version = await generate_device_images(call, "Tom", "Tom codes.", 2)
    assert [d.categories for d in images] == [
        ["selfie", "sport"],
        ["screenshot", "computer software"],  # not one of the paper's examples: kept as given
    ]
    assert completion.repairs == 1 and version.startswith("2")
    first = fake_openai.chat_requests[0].body
    items = first["response_format"]["json_schema"]["schema"]["$defs"]["DeviceItem"]
    spec = items["properties"]["categories"]
    assert "enum" not in spec["items"] and spec["items"]["maxLength"] == CATEGORY_MAX_LENGTH
    assert spec["maxItems"] == 3
    system = first["messages"][0]["content"]
    assert ", ".join(DEVICE_IMAGE_CATEGORY_EXAMPLES) in system  # the paper's examples
    assert system.count('"description":') == 5  # a five-photo few-shot album
    assert "at most 32 characters" in fake_openai.chat_requests[1].body["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("modules", "shown", "hidden"),
    [
        (
            ["personalized_t2i", "retrieval", "web_search"],
            ["woman img", "Champions"],
            ["lighthouse"],
        ),
        (["retrieval", "t2i"], ["spreadsheet", "lighthouse"], ["woman img", "Champions"]),
    ],
)
def test_planner_prompt_shows_examples_only_for_the_offered_modules(modules, shown, hidden):
    from mcu_sim.agents.prompting import load_prompt

    system, user = load_prompt("planner").render(
        modules=modules,
        name="Tom",
        age=21,
        gender="male",
        class_word="young man",
        description="A selfie of Tom at the arena",
        image_source="mobile",
    )
    for word in shown:
        assert word in system["content"]
    for word in hidden:
        assert word not in system["content"]
    assert 'own class word, "young man"' in system["content"]
    assert system["content"].count('{"module": ') == len(modules)
    assert "Image description: A selfie of Tom at the arena" in user["content"]
