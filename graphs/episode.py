"""The MCU episode graph (STARK §3): wiring only; the nodes live in ``graphs.nodes``.

demographics → face → persona → commonsense → narrative → events → device_images
→ session (loops until n_sessions) → align → filter → END
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from mcu_sim.agents.llm.client import LLMTransportError
from mcu_sim.graphs import aligner, nodes, quality
from mcu_sim.graphs.context import EpisodeContext, derive_seed
from mcu_sim.graphs.filters import filter_episode
from mcu_sim.graphs.state import EpisodeState, merge_updates, node_reads
from mcu_sim.personas.schema import Episode

# Order of the nodes as they first run; the debugger and progress bars use it.
NODE_ORDER = (
    "demographics",
    "face",
    "persona",
    "commonsense",
    "narrative",
    "events",
    "device_images",
    "align_album",
    "session",
    "align_sharing",
    "filter",
)

# The provider layer already retries transport errors; this only covers a whole-node retry
# when an endpoint stays down a little longer than one call's retry budget.
NODE_RETRY = RetryPolicy(max_attempts=2, initial_interval=1.0, retry_on=LLMTransportError)


def episode_seeds(state: EpisodeState) -> dict[str, int]:
    seed = state["seed"]
    return {
        "sampler": seed,
        "face": state["face"]["seed"],
        "llm": derive_seed(seed, "llm"),
    }


@node_reads("*")
async def filter_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """reads: everything / writes: image_requests (album links, unaligned leftovers),
    sessions[*].safety, usage, prompt_versions, notes, episode (STARK §3.9).

    Three steps in one superstep: link sharing requests to album photos, judge each
    session's text, then assemble and filter the Episode. Each step sees the state the
    previous one left; as one node they cost one checkpoint instead of three.
    """
    runtime.context.executions["filter"] += 1
    update: dict[str, Any] = {}
    for step in (aligner.link_album_node, quality.safety_node, finalize_node):
        done = await step(merge_updates(state, update), runtime)  # type: ignore[arg-type]
        update = merge_updates(update, done)
    return update


async def finalize_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """The last step of ``filter``: the validated, assembled Episode as a dict (``episode``).

    Pure code, run on the event loop (a worker-thread hop per episode cost more than the
    work); only when CLIP image similarity has to be computed does it move to a thread.
    """
    ctx: EpisodeContext = runtime.context
    similarity, missing = quality.image_similarity(ctx)
    if similarity is None:
        return assemble_episode(state, ctx, None, missing)
    return await asyncio.to_thread(assemble_episode, state, ctx, similarity, missing)


def assemble_episode(
    state: EpisodeState, ctx: EpisodeContext, similarity: Any, missing: str
) -> dict[str, Any]:
    """The Episode made of ``state``, validated and passed through the episode filters."""
    episode = Episode(
        episode_id=state["episode_id"],
        seeds=episode_seeds(state),
        config_fingerprint=ctx.fingerprint(),
        prompt_versions=state.get("prompt_versions", {}),
        usage=state.get("usage", {}),
        demographics=state["demographics"],
        face=state["face"],
        persona_category=state["persona_category"]["category"],
        persona_entity_key=state["persona_category"]["entity_key"],
        persona=state["persona"],
        commonsense=state["commonsense"],
        narrative=state["narrative"],
        events=state["events"],
        device_images=sorted(state.get("device_images", []), key=lambda d: d["id"]),
        sessions=sorted(state["sessions"], key=lambda s: s["index"]),
        image_requests=sorted(state.get("image_requests", []), key=lambda r: r["id"]),
        removals=state.get("removals", []),
    )
    episode = filter_episode(episode, quality.filter_settings(ctx.config), similarity, missing)
    return {"episode": episode.model_dump(mode="json")}


def after_device_images(state: EpisodeState) -> Any:
    """Fan the album photos out to the aligner, or straight on to the sessions."""
    return aligner.fan_out_album(state)


def after_session(state: EpisodeState) -> Any:
    """Another session, or fan the sharing moments out to the aligner."""
    if nodes.more_sessions(state) == "session":
        return "session"
    return aligner.fan_out_sharing(state)


def build_episode_graph() -> StateGraph:
    """The uncompiled graph; compile it with a checkpointer (``graph.compile(checkpointer=…)``)."""
    graph = StateGraph(EpisodeState, context_schema=EpisodeContext)
    graph.add_node("demographics", nodes.demographics_node)
    graph.add_node("face", nodes.face_node)
    for name, func in (
        ("persona", nodes.persona_node),
        ("commonsense", nodes.commonsense_node),
        ("narrative", nodes.narrative_node),
        ("events", nodes.events_node),
        ("device_images", nodes.device_images_node),
        ("session", nodes.session_node),
    ):
        graph.add_node(name, func, retry_policy=NODE_RETRY)
    align = aligner.compile_aligner_graph()
    graph.add_node("align_album", align)
    graph.add_node("align_sharing", align)
    graph.add_node("filter", filter_node, retry_policy=NODE_RETRY)
    graph.add_edge(START, "demographics")
    for before, after in itertools.pairwise(NODE_ORDER[:7]):
        graph.add_edge(before, after)
    graph.add_conditional_edges("device_images", after_device_images, ["align_album", "session"])
    graph.add_edge("align_album", "session")
    graph.add_conditional_edges("session", after_session, ["session", "align_sharing", "filter"])
    graph.add_edge("align_sharing", "filter")
    graph.add_edge("filter", END)
    return graph


def compile_episode_graph(checkpointer: Any = None) -> Any:
    return build_episode_graph().compile(checkpointer=checkpointer)
