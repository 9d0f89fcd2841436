"""langgraph.json is valid: each graph it names loads through the path it gives (the way the
LangGraph dev server imports it) and runs with the JSON context Studio would send."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

from mcu_sim.graphs.episode import NODE_ORDER
from mcu_sim.testing.scripted import scripted_answer

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_NODES = {
    "episode": set(NODE_ORDER),
    "aligner": {"plan", "execute", "qa", "rewrite", "give_up"},
}


def _langgraph_json() -> dict[str, Any]:
    return json.loads((ROOT / "langgraph.json").read_text())


def _load(spec: str) -> Any:
    """``./path/file.py:variable`` imported from the file under a fresh module name."""
    path, variable = spec.rsplit(":", 1)
    name = f"studio_{uuid.uuid4().hex}"
    module_spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return getattr(module, variable)


def _context(server_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "overrides": [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={server_url}",
            "images.enabled=false",
            "episode.sessions_min=1",
            "episode.sessions_max=1",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
        ],
        "run_dir": str(tmp_path / "studio-run"),
    }


def test_langgraph_json_names_loadable_compiled_graphs() -> None:
    config = _langgraph_json()
    assert config["dependencies"] == ["."] and (ROOT / "pyproject.toml").is_file()
    assert set(config["graphs"]) == set(EXPECTED_NODES)
    for name, spec in config["graphs"].items():
        assert spec.startswith("./") and (ROOT / spec.split(":")[0]).is_file()
        graph = _load(spec)
        assert isinstance(graph, Pregel), f"{name} is {type(graph).__name__}"
        assert EXPECTED_NODES[name] <= set(graph.nodes), f"{name}: {sorted(graph.nodes)}"
        schema = graph.get_context_jsonschema()
        assert {"config_file", "overrides", "run_dir", "use_cache"} <= set(schema["properties"])
        # the dev server copies the graph with its own checkpointer: still a Studio graph
        copied = graph.copy(update={"checkpointer": InMemorySaver()})
        assert type(copied) is type(graph)


def test_importing_the_studio_file_stays_light() -> None:
    code = (
        "import importlib.util, sys;"
        f"s = importlib.util.spec_from_file_location('m', {str(ROOT / 'graphs/studio.py')!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        "print(sorted(x for x in ('torch', 'diffusers', 'open_clip', 'faiss') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_episode_graph_runs_with_studio_json_context(fake_openai, tmp_path: Path) -> None:
    fake_openai.handler = scripted_answer
    graph = _load(_langgraph_json()["graphs"]["episode"])
    served = graph.copy(update={"checkpointer": InMemorySaver()})
    config = {"configurable": {"thread_id": "studio-1"}}
    result = asyncio.run(
        served.ainvoke(
            {"episode_id": "ep-studio", "seed": 5},
            config,
            context=_context(fake_openai.url, tmp_path),
        )
    )
    episode = result["episode"]
    assert episode["episode_id"] == "ep-studio" and len(episode["sessions"]) == 1
    assert len(fake_openai.chat_requests) >= 6  # persona … dialogue went over HTTP
    assert (tmp_path / "studio-run").is_dir()


def test_aligner_graph_takes_settings_from_the_assistant_config(
    fake_openai, tmp_path: Path
) -> None:
    graph = _load(_langgraph_json()["graphs"]["aligner"])
    branch = {
        "request": {
            "id": "s1-t2",
            "origin": "sharing",
            "description": "a red kite",
            "status": "pending",
        },
        "person": {"name": "Ana", "age": 31, "gender": "female", "class_word": "woman"},
        "episode_id": "ep-a",
        "seed": 2,
    }
    # no context at all: settings come from the assistant's configurable (Studio's config form)
    configurable = {"configurable": _context(fake_openai.url, tmp_path)}
    result = asyncio.run(graph.ainvoke(branch, configurable))
    (request,) = result["image_requests"]
    assert request["id"] == "s1-t2" and request["status"] == "unaligned"
    assert "images.enabled is false" in request["reason"]
    with pytest.raises(TypeError, match="JSON context with the keys config_file"):
        graph.invoke(branch, context=42)
    with pytest.raises(ValueError, match="extra_forbidden"):
        graph.invoke(branch, context={"bogus": 1})


def test_studio_reuses_clients_per_config_and_keeps_only_a_few(fake_openai, tmp_path: Path) -> None:
    from mcu_sim.config import load_config
    from mcu_sim.graphs.studio import SharedDependencies, studio_context

    context = _context(fake_openai.url, tmp_path)
    once, again = studio_context(context), studio_context(context)
    assert again.llm is once.llm and again.tools is once.tools  # no rebuild per Studio run
    shared = SharedDependencies(maxsize=2)
    configs = [load_config(None, [*context["overrides"], f"run.seed={n}"]) for n in range(3)]
    first, second = shared.get(configs[0]), shared.get(configs[1])
    assert shared.get(configs[0]) is first  # now the most recently used
    shared.get(configs[2])  # evicts configs[1], the least recently used
    assert len(shared) == 2 and shared.get(configs[0]) is first
    assert shared.get(configs[1])[0] is not second[0]  # dropped, so built again
    assert len(shared) == 2
