"""The Plan-and-Execute aligner end to end: the real subgraph, the planner over real HTTP
(fake endpoint), real tools (tiny PhotoMaker, the shipped image database, web search against
a page served on 127.0.0.1) and MAGID's quality loop."""

from __future__ import annotations

import asyncio
import html
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import load_config
from mcu_sim.graphs.aligner import compile_aligner_graph
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.testing.fake_openai import client_for, schema_name
from mcu_sim.testing.scripted import scripted_answer
from mcu_sim.tools.scorers import Score
from mcu_sim.tools.settings import ImagesConfig
from mcu_sim.tools.toolbox import ImageToolbox

pytestmark = pytest.mark.images
PERSON = {"name": "Mina", "age": 34, "gender": "female", "class_word": "woman"}


def _jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_site() -> Iterator[str]:
    """A Bing-format result page and two images, on 127.0.0.1."""
    images = {"/a.jpg": _jpeg((200, 20, 20)), "/b.jpg": _jpeg((20, 200, 20))}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if path == "/search":
                links = "".join(
                    '<div class="imgpt"><a class="iusc" m="'
                    + html.escape(
                        json.dumps({"murl": base + p, "turl": base + p}, separators=(",", ":"))
                    )
                    + '" href="#">x</a></div>'
                    for p in images
                )
                body, kind = f"<html><body>{links}</body></html>".encode(), "text/html"
            elif path in images:
                body, kind = images[path], "image/jpeg"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/search?q={{query}}&first={{offset}}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tiny_photomaker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    from mcu_sim.testing.tiny_sdxl import save_tiny_photomaker, save_tiny_sdxl

    root = tmp_path_factory.mktemp("pm")
    base = save_tiny_sdxl(root / "base")
    face = root / "face.png"
    Image.new("RGB", (40, 40), (180, 140, 120)).save(face)
    return {"base": base, "ckpt": save_tiny_photomaker(base, root / "pm.bin"), "face": face}


def _settings(tiny: dict[str, Path], search_url: str, **changes: Any) -> ImagesConfig:
    data: dict[str, Any] = {
        "photomaker": {
            "base_model": str(tiny["base"]),
            "checkpoint": str(tiny["ckpt"]),
            "steps": 2,
            "height": 32,
            "width": 32,
        },
        "web_search": {
            "enabled": True,
            "allow_loopback": True,
            "search_url": search_url,
            "top_k": 2,
            "timeout_s": 5,
        },
        "retrieval": {"top_k": 2},
    }
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return ImagesConfig.model_validate(data)


def _align(
    server, tmp_path: Path, toolbox: ImageToolbox, requests: list[dict], face: Path | None
) -> list[dict]:
    config = load_config(None, ["images.enabled=false"])
    client = client_for(server, tmp_path / "cache.sqlite")
    context = EpisodeContext(config=config, llm=client, run_dir=tmp_path, tools=toolbox)
    graph = compile_aligner_graph()

    async def one(request: dict) -> dict:
        state = {
            "request": request,
            "person": PERSON,
            "face_image": str(face) if face else None,
            "episode_id": "ep-1",
            "seed": 3,
        }
        out = await graph.ainvoke(state, context=context)
        (result,) = out["image_requests"]
        return result

    async def all_of() -> list[dict]:
        return [await one(r) for r in requests]

    return asyncio.run(all_of())


def _request(rid: str, description: str) -> dict:
    return {
        "id": rid,
        "origin": "sharing",
        "description": description,
        "keywords": ["x"],
        "status": "pending",
        "image_source": "internet",
    }


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


def test_a_tool_failing_at_run_time_is_disabled_and_the_router_falls_back(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    fake_openai.handler = scripted_answer
    broken = dict(tiny_photomaker, ckpt=tiny_photomaker["base"] / "model_index.json")
    settings = _settings(broken, image_site, qa={"max_rewrites": 1})
    toolbox = ImageToolbox(settings, scorers={})
    (result,) = _align(
        fake_openai,
        tmp_path,
        toolbox,
        [_request("s1-t1", "a selfie of me with a cat")],
        tiny_photomaker["face"],
    )
    plans = [a for a in result["attempts"] if a.get("event") == "plan"]
    assert plans[0]["module"] == "personalized_t2i"
    assert result["status"] == "aligned" and result["module"] != "personalized_t2i"
    assert any("personalized_t2i unavailable" in n for n in plans[-1]["notes"])
    failures = [a["detail"] for a in result["attempts"] if a.get("event") == "failure"]
    assert any(f.startswith("personalized_t2i error") for f in failures)
    assert "img" not in result["planned_description"]


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
    assert "no face image" in no_face["reason"]
    (none_left,) = _align(
        fake_openai, tmp_path, toolbox, [_request("s1-t2", "a bowl of soup")], face=None
    )
    assert none_left["status"] == "unaligned" and "no image module available" in none_left["reason"]


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


class FailingScorer:
    """Fails the first ``failures`` images it sees, then passes: drives the MAGID loop."""

    name = "clip"
    needs_texts = True
    higher_is_better = True

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[str, str]] = []

    async def score(self, paths: list[Path], texts: list[str] | None) -> list[Score]:
        out = []
        for path, text in zip(paths, texts or [""] * len(paths), strict=True):
            self.seen.append((Path(path).name, text))
            value = 0.05 if len(self.seen) <= self.failures else 0.9
            out.append(Score("clip", value, "stub-1"))
        return out


def _rewrite_as_selfie(body: dict) -> Any:
    if schema_name(body) == "RewriteOutput":
        return json.dumps({"description": "a selfie of me lifting a shiny golden trophy"})
    return scripted_answer(body)


def _magid_run(server, tmp_path, tiny, site, failures: int) -> tuple[dict, FailingScorer]:
    """One selfie request through the real loop, with a scorer failing ``failures`` times."""
    server.handler = _rewrite_as_selfie
    scorer = FailingScorer(failures=failures)
    settings = _settings(tiny, site, qa={"retries_per_description": 2, "max_rewrites": 1})
    toolbox = ImageToolbox(settings, scorers={"clip": scorer})
    request = _request("s1-t1", "a selfie of me holding a trophy")
    (result,) = _align(server, tmp_path, toolbox, [request], tiny["face"])
    return result, scorer


def test_magid_loop_two_failures_then_rewrite_then_success(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    result, scorer = _magid_run(fake_openai, tmp_path, tiny_photomaker, image_site, failures=3)
    assert result["status"] == "aligned"
    # three generations of the first description failed (the first try and two retries with
    # new seeds), then the description was rewritten, re-planned and the fourth image passed
    assert len(scorer.seen) == 4
    assert len({name for name, _ in scorer.seen}) == 4  # every try is a new image
    first_texts = {text for _, text in scorer.seen[:3]}
    assert len(first_texts) == 1 and scorer.seen[3][1] not in first_texts
    rewrites = [a for a in result["attempts"] if a.get("event") == "rewrite"]
    assert len(rewrites) == 1
    assert result["image"]["scores"]["clip"] == pytest.approx(0.9)


def test_magid_loop_exhausted_ends_unaligned_with_reasons(
    fake_openai, tmp_path, tiny_photomaker, image_site
):
    result, scorer = _magid_run(fake_openai, tmp_path, tiny_photomaker, image_site, failures=100)
    assert result["status"] == "unaligned"
    assert "clip 0.050 not >= 0.21" in result["reason"]
    assert len(scorer.seen) == 6  # (1 try + 2 retries) x (original + 1 rewrite)
    assert any(a.get("event") == "rewrite" for a in result["attempts"])
