"""The Plan-and-Execute aligner's routing end to end: the real subgraph, the planner over
real HTTP (fake endpoint), real tools (tiny PhotoMaker, the shipped image database, web
search against a page served on 127.0.0.1). MAGID's quality loop: test_aligner_loop.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import ConfigError, load_config
from mcu_sim.testing.aligner_run import (
    align_requests,
    episode_files,
    images_settings,
    referenced_files,
    sharing_request,
    tiny_photomaker_assets,
)
from mcu_sim.testing.fake_openai import schema_name
from mcu_sim.testing.image_site import ImageSite, serve_image_site
from mcu_sim.testing.scripted import scripted_answer
from mcu_sim.tools.toolbox import ImageToolbox, ToolDisabled

pytestmark = pytest.mark.images

_align = align_requests
_request = sharing_request


@pytest.fixture(scope="module")
def image_site() -> Iterator[ImageSite]:
    """A Bing-format result page and two images, on 127.0.0.1."""
    with serve_image_site() as site:
        yield site


@pytest.fixture(scope="module")
def tiny_photomaker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_photomaker_assets(tmp_path_factory.mktemp("pm"))


def _settings(tiny: dict[str, Path], site: ImageSite, **changes: Any) -> Any:
    return images_settings(tiny, site.search_url, **changes)


def _planner_enums(server: Any) -> list[list[str]]:
    bodies = [r.body for r in server.chat_requests if schema_name(r.body) == "PlanOutput"]
    schema = [b["response_format"]["json_schema"]["schema"] for b in bodies]
    return [
        s["properties"]["module"].get("enum") or [s["properties"]["module"]["const"]]
        for s in schema
    ]


def test_each_module_is_chosen_and_executed(fake_openai, tmp_path, tiny_photomaker, image_site):
    fake_openai.handler = scripted_answer
    toolbox = ImageToolbox(_settings(tiny_photomaker, image_site), scorers={})
    results = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [
            _request("s1-t1", "a selfie of me on the beach at sunset"),
            _request("s1-t2", "the latest news photo of the city marathon"),
            _request("s1-t3", "a cup of espresso coffee on a saucer"),
        ],
        tiny_photomaker["face"],
    )
    modules = [r["module"] for r in results]
    assert modules == ["personalized_t2i", "web_search", "retrieval"]
    assert all(r["status"] == "aligned" for r in results)
    assert "woman img" in results[0]["planned_description"]
    assert results[1]["image"]["source_url"].startswith("http://127.0.0.1:")
    assert results[2]["image"]["db_id"] == "coffee"
    for result in results:
        path = tmp_path / result["image"]["path"]
        assert path.is_file() and result["image"]["width"] > 0
    # top-2 retrieval and web search: the other passing candidate is an alternative
    assert len(results[2]["alternatives"]) == 1 and len(results[1]["alternatives"]) == 1
    assert results[2]["alternatives"][0]["db_id"] != "coffee"
    # every file in the episode folder is referenced; no staging folder is left behind
    assert episode_files(tmp_path) == referenced_files(results)
    assert all(Path(p).name.startswith(r["id"]) for r in results for p in referenced_files([r]))


def test_disabled_module_falls_back_along_router_order(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    fake_openai.handler = scripted_answer
    settings = _settings(tiny_photomaker, image_site, photomaker={"enabled": False})
    toolbox = ImageToolbox(settings, scorers={})
    (result,) = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [_request("s1-t1", "a selfie of me with a cat")],
        tiny_photomaker["face"],
    )
    assert result["status"] == "aligned" and result["module"] == "retrieval"
    plan = next(a for a in result["attempts"] if a.get("event") == "plan")
    assert any("personalized_t2i unavailable: disabled in config" in n for n in plan["notes"])
    # the planner was only offered what can run here
    (body,) = [r.body for r in fake_openai.chat_requests if schema_name(r.body) == "PlanOutput"]
    offered = body["response_format"]["json_schema"]["schema"]["properties"]["module"]
    assert offered["enum"] == ["retrieval", "web_search"]
    assert "personalized_t2i" not in body["messages"][0]["content"]


def test_a_tool_failing_to_load_is_rerouted_at_once_without_a_rewrite(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    fake_openai.handler = scripted_answer
    broken = dict(tiny_photomaker, ckpt=tiny_photomaker["base"] / "model_index.json")
    settings = _settings(broken, image_site, qa={"max_rewrites": 0})
    toolbox = ImageToolbox(settings, scorers={})
    loads: list[str] = []
    photomaker = toolbox.tool("personalized_t2i")
    real_load = photomaker.load
    photomaker.load = lambda: (loads.append("load"), real_load())  # count, then really load
    first, second = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [
            _request("s1-t1", "a selfie of me with a cat"),
            _request("s1-t2", "a selfie of me at the market"),
        ],
        tiny_photomaker["face"],
    )
    events = [a["event"] for a in first["attempts"]]
    assert events == ["plan", "unavailable", "plan", "qa"]  # no rewrite was spent
    plans = [a for a in first["attempts"] if a["event"] == "plan"]
    assert plans[0]["module"] == "personalized_t2i" and plans[1]["module"] == "retrieval"
    assert "personalized_t2i failed at run time" in plans[1]["notes"][0]
    unavailable = first["attempts"][1]
    assert unavailable["scope"] == "process" and unavailable["module"] == "personalized_t2i"
    assert first["status"] == "aligned" and first["module"] == "retrieval"
    assert "img" not in first["planned_description"].split()
    # a load failure turns the tool off for the process: never offered or loaded again
    assert toolbox.availability("personalized_t2i")[0] is False
    assert second["status"] == "aligned" and second["module"] == "retrieval"
    enums = _planner_enums(fake_openai)
    assert "personalized_t2i" in enums[0] and all("personalized_t2i" not in e for e in enums[1:])
    assert loads == ["load"]
    with pytest.raises(ToolDisabled):
        asyncio.run(
            toolbox.execute(
                "personalized_t2i",
                "a photo of woman img",
                keywords=[],
                seed=1,
                out_dir=tmp_path / "x",
                stem="x",
                face_image=str(tiny_photomaker["face"]),
            )
        )
    assert loads == ["load"]
    assert not any(schema_name(r.body) == "RewriteOutput" for r in fake_openai.chat_requests)


def test_no_face_image_drops_personalised_generation_for_that_episode_only(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    fake_openai.handler = scripted_answer
    toolbox = ImageToolbox(_settings(tiny_photomaker, image_site), scorers={})
    (no_face,) = _align(
        fake_openai, tmp_path, toolbox, [_request("s1-t1", "a selfie of me in the park")], None
    )
    assert no_face["status"] == "aligned" and no_face["module"] == "retrieval"
    plan = no_face["attempts"][0]
    assert "personalized_t2i unavailable: the episode has no face image" in plan["notes"]
    assert _planner_enums(fake_openai) == [["retrieval", "web_search"]]
    # nothing was disabled: an episode with a face still gets PhotoMaker
    assert toolbox.availability("personalized_t2i")[0] is True
    (with_face,) = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [_request("s1-t2", "a selfie of me in the park")],
        tiny_photomaker["face"],
    )
    assert with_face["status"] == "aligned" and with_face["module"] == "personalized_t2i"


def test_missing_face_or_no_module_ends_unaligned_with_reason(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    fake_openai.handler = scripted_answer
    settings = _settings(
        tiny_photomaker,
        image_site,
        retrieval={"enabled": False},
        web_search={"enabled": False},
        qa={"max_rewrites": 0},
    )
    toolbox = ImageToolbox(settings, scorers={})
    (no_face,) = _align(
        fake_openai, tmp_path, toolbox, [_request("s1-t1", "a selfie of me in the park")], face=None
    )
    assert no_face["status"] == "unaligned"
    assert "no image module available" in no_face["reason"]
    assert "personalized_t2i unavailable: the episode has no face image" in no_face["reason"]
    assert not fake_openai.chat_requests  # nothing to plan, nothing asked


def test_unparseable_planner_output_is_repaired_or_defaulted(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    calls: list[dict] = []

    def repaired_once(body: dict) -> Any:
        if schema_name(body) == "PlanOutput":
            calls.append(body)
            if len(calls) == 1:
                return "module: web_search, description: a cat"  # not JSON
        return scripted_answer(body)

    fake_openai.handler = repaired_once
    toolbox = ImageToolbox(_settings(tiny_photomaker, image_site), scorers={})
    (fixed,) = _align(fake_openai, tmp_path, toolbox, [_request("s1-t1", "a black cat")], None)
    assert len(calls) == 2 and "could not be used" in calls[1]["messages"][-1]["content"]
    assert fixed["status"] == "aligned" and fixed["module"] == "retrieval"

    fake_openai.handler = lambda body: (
        "no json at all" if schema_name(body) == "PlanOutput" else scripted_answer(body)
    )
    (defaulted,) = _align(
        fake_openai, tmp_path / "b", toolbox, [_request("s1-t2", "a black cat")], None
    )
    plan = next(a for a in defaulted["attempts"] if a.get("event") == "plan")
    assert any("planner output unusable, defaulted to" in n for n in plan["notes"])
    assert defaulted["status"] == "aligned"


@pytest.mark.parametrize(
    "answer",
    [
        "a photo of woman imgs on the beach",  # not the trigger word
        "woman img and woman img on the beach",  # two triggers
        "a photo of img on the beach",  # no class word
        "a photo of man img on the beach",  # someone else's class word
    ],
)
def test_planner_trigger_is_checked_as_photomaker_checks_it(
    fake_openai, tmp_path, tiny_photomaker, image_site, answer
):
    from mcu_sim.tools.photomaker import check_trigger_prompt

    sent: list[dict] = []

    def bad_then_good(body: dict) -> Any:
        if schema_name(body) == "PlanOutput":
            sent.append(body)
            good = "a photo of woman img on the beach"
            text = answer if len(sent) == 1 else good
            return json.dumps({"module": "personalized_t2i", "description": text})
        return scripted_answer(body)

    fake_openai.handler = bad_then_good
    toolbox = ImageToolbox(_settings(tiny_photomaker, image_site), scorers={})
    (result,) = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [_request("s1-t1", "a selfie of me on the beach")],
        tiny_photomaker["face"],
    )
    assert len(sent) == 2  # the bad trigger was fed back at plan time
    assert "exactly once" in sent[1]["messages"][-1]["content"]
    assert result["status"] == "aligned" and result["module"] == "personalized_t2i"
    assert result["planned_description"] == "a photo of woman img on the beach"
    check_trigger_prompt(result["planned_description"])  # what PhotoMaker accepts


def test_planner_trigger_repaired_by_code_after_the_repair_budget() -> None:
    from mcu_sim.agents.planner import insert_trigger, trigger_problem
    from mcu_sim.tools.photomaker import check_trigger_prompt

    for text in ("woman imgs at sea", "woman img and woman img", "img at sea", "man img"):
        assert trigger_problem(text, "woman")
        fixed = insert_trigger(text, "woman")
        assert trigger_problem(fixed, "woman") is None
        check_trigger_prompt(fixed)
    assert insert_trigger("a photo of woman img at sea", "woman") == "a photo of woman img at sea"


def test_rule_planner_option_is_gone() -> None:
    with pytest.raises(ConfigError, match=r"Unknown key 'images.planner'"):
        load_config(None, ["images.planner=rule"])


def test_link_album_leaves_no_request_pending() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from mcu_sim.graphs.aligner import link_album_node

    image = {"path": "images/ep/a.jpg", "sha256": "0" * 64, "width": 4, "height": 4}
    state = {
        "device_images": [{"id": 1, "request_id": "album-1"}, {"id": 2, "request_id": "album-2"}],
        "image_requests": [
            {"id": "album-1", "origin": "album", "status": "aligned", "image": image},
            {"id": "album-2", "origin": "album", "status": "pending"},  # never aligned
            {"id": "s1-t2", "origin": "sharing", "status": "pending", "device_image_id": 1},
            {"id": "s1-t4", "origin": "sharing", "status": "pending", "device_image_id": 2},
            {"id": "s1-t6", "origin": "sharing", "status": "pending"},
        ],
    }
    runtime = SimpleNamespace(context=SimpleNamespace(executions=Counter()))
    result = asyncio.run(link_album_node(state, runtime))
    updates = {r["id"]: r for r in result["image_requests"]}
    assert set(updates) == {"album-2", "s1-t2", "s1-t4", "s1-t6"}
    assert all(
        r["status"] != "pending" and (r["status"] == "aligned" or r["reason"])
        for r in updates.values()
    )
    assert updates["s1-t2"]["image"] == image
    assert updates["s1-t2"]["attempts"] == [{"event": "album_photo", "request": "album-1"}]
    assert updates["s1-t4"]["reason"].startswith("album photo 2 not aligned")
    assert updates["album-2"]["reason"] == "no aligner branch ran for this request"
