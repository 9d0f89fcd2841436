"""Compiled graphs for LangGraph Studio, named in the repository's ``langgraph.json``.

``langgraph dev`` (``pip install "langgraph-cli[inmem]"``, run from the repository root)
imports this file by path and serves ``episode_graph`` and ``aligner_graph`` with its own
in-memory checkpointer.

Why the graphs are wrapped: every node takes its dependencies (config, LLM client, image
tools, run directory) from the runtime context, an :class:`EpisodeContext` of Python
objects. Studio can only send JSON: the run's ``context`` object (Studio draws its form from
``get_context_jsonschema()``, here :class:`StudioSettings`), or nothing at all, in which case
LangGraph would hand the nodes ``runtime.context = None``. A :class:`StudioGraph` therefore
turns whatever arrives (nothing, a :class:`StudioSettings` mapping, or settings under the
assistant's ``configurable``) into an :class:`EpisodeContext` when a run starts: the config
comes from ``config_file`` (else ``$MCU_CONFIG``, else the built-in defaults with the
embedded model), plus ``MCU__SECTION__KEY`` environment variables and ``overrides``.
A real :class:`EpisodeContext` passed from Python is used as is.

Inputs: the episode graph starts from ``{"episode_id": "ep-1", "seed": 1}``; the aligner
takes one branch's state (``request``, ``person``, ``episode_id``, ``seed``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field

from mcu_sim.config import load_config
from mcu_sim.graphs.aligner import build_aligner_graph
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.graphs.episode import build_episode_graph
from mcu_sim.runner.outputs import RunDir

CONFIG_ENV = "MCU_CONFIG"


class StudioSettings(BaseModel):
    """The JSON context a Studio run may send (every key optional)."""

    model_config = ConfigDict(extra="forbid")

    config_file: str | None = Field(
        None, description=f"YAML config file; default ${CONFIG_ENV}, else the built-in defaults."
    )
    overrides: list[str] = Field(
        default_factory=list, description="Config overrides, section.key=value."
    )
    run_dir: str = Field("runs/studio", description="Where images and caches go.")
    use_cache: bool = Field(True, description="Use the LLM response cache.")


class SharedDependencies:
    """LLM clients and toolboxes kept between Studio runs: a small LRU keyed by config.

    Why a module-level cache here, against the rule that nodes get their dependencies
    injected: Studio sends only JSON, so every run would otherwise build its client and
    toolbox from scratch, reloading the embedded GGUF model and any image models (seconds
    to minutes) and losing the client's concurrency limits between runs. The nodes still
    receive these objects through the runtime context; only this Studio entry point keeps
    them. It holds at most ``maxsize`` configs (each may own a loaded model); the least
    recently used one is dropped, and with it the last reference to its models.
    """

    def __init__(self, maxsize: int = 3) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, config: Any) -> tuple[Any, Any]:
        """(LLM client, toolbox) for ``config``, built on first use."""
        from mcu_sim.agents.llm.client import build_run_client
        from mcu_sim.runner.runner import build_toolbox

        key = config.model_dump_json()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            llm = build_run_client(config)
            self._items[key] = (llm, build_toolbox(config))
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return self._items[key]


_shared = SharedDependencies()


def _settings_from(context: Any, config: Mapping[str, Any] | None) -> StudioSettings:
    if isinstance(context, StudioSettings):
        return context
    if isinstance(context, Mapping) and context:
        return StudioSettings.model_validate(dict(context))
    if context is None or (isinstance(context, Mapping) and not context):
        configurable = (config or {}).get("configurable") or {}
        keys = set(StudioSettings.model_fields)
        return StudioSettings.model_validate({k: v for k, v in configurable.items() if k in keys})
    raise TypeError(
        "the episode graphs need an EpisodeContext, or a JSON context with the keys "
        f"{', '.join(StudioSettings.model_fields)}; got {type(context).__name__}"
    )


def studio_context(context: Any, config: Mapping[str, Any] | None = None) -> EpisodeContext:
    """The EpisodeContext for a run that was given ``context`` (see the module docstring)."""
    if isinstance(context, EpisodeContext):
        return context
    settings = _settings_from(context, config)
    cfg = load_config(settings.config_file or os.environ.get(CONFIG_ENV), settings.overrides)
    run = RunDir(settings.run_dir)
    run.create()
    llm, tools = _shared.get(cfg)
    return EpisodeContext(
        config=cfg, llm=llm, run_dir=run.root, tools=tools, use_cache=settings.use_cache
    )


class StudioGraph(CompiledStateGraph):
    """A compiled graph that builds its EpisodeContext from JSON settings (or defaults)."""

    def stream(self, input: Any, config: Any = None, *, context: Any = None, **kwargs: Any):
        return super().stream(input, config, context=studio_context(context, config), **kwargs)

    def astream(self, input: Any, config: Any = None, *, context: Any = None, **kwargs: Any):
        return super().astream(input, config, context=studio_context(context, config), **kwargs)

    def get_context_jsonschema(self) -> dict[str, Any]:
        return StudioSettings.model_json_schema()


def as_studio_graph(graph: CompiledStateGraph) -> StudioGraph:
    """The same compiled graph, as a :class:`StudioGraph` (as ``Pregel.copy`` rebuilds it)."""
    return StudioGraph(**{k: v for k, v in vars(graph).items() if k != "__orig_class__"})


episode_graph = as_studio_graph(build_episode_graph().compile())
aligner_graph = as_studio_graph(build_aligner_graph().compile())
