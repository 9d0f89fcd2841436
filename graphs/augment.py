"""The augmentation graph (``mcu augment``): an existing dialogue given images.

    load → scan → align (one branch per selected utterance, ``Send``) → finalize → END

**load** reads the normalized dialogue the run directory holds for this episode
(``augment/dialogues/<episode_id>.json``, written by :mod:`mcu_sim.runner.augment`); the
text is kept verbatim. **scan** asks the scanner (MAGID or DialogCC prompts) which turns
to illustrate, window by window. **align** is the aligner subgraph of the episode graph
(plan → execute → QA → rewrite), with the router order of the mode. **finalize** assembles
an ``augmented`` :class:`~mcu_sim.personas.schema.Episode` and runs the filters.

The gold image-turn marker never enters the graph's prompts: ``load`` keeps the gold
positions in the episode's ``source`` record, and ``scan`` reads only speakers and texts.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mcu_sim.agents import scanner
from mcu_sim.graphs import aligner, quality
from mcu_sim.graphs.context import EpisodeContext, derive_seed
from mcu_sim.graphs.episode import NODE_RETRY
from mcu_sim.graphs.filters import filter_episode
from mcu_sim.graphs.state import append, merge_dict, merge_usage, node_reads, upsert_by_id
from mcu_sim.personas.schema import Episode

NODE_ORDER = ("load", "scan", "align", "finalize")
DIALOGUES = Path("augment") / "dialogues"


def dialogue_path(run_dir: Path, episode_id: str) -> Path:
    """Where the runner keeps the normalized input dialogue of ``episode_id``."""
    return Path(run_dir) / DIALOGUES / f"{episode_id}.json"


class AugmentState(TypedDict, total=False):
    episode_id: str
    seed: int
    source: dict[str, Any]
    sessions: list[dict[str, Any]]
    image_requests: Annotated[list[dict[str, Any]], upsert_by_id]
    usage: Annotated[dict[str, dict[str, float]], merge_usage]
    prompt_versions: Annotated[dict[str, str], merge_dict]
    notes: Annotated[list[str], append]
    episode: dict[str, Any]


def _ctx(runtime: Any, node: str) -> EpisodeContext:
    if runtime.context is None:
        raise RuntimeError(f"node {node!r} needs a runtime context (EpisodeContext)")
    runtime.context.executions[node] += 1
    return runtime.context


def windows(n_turns: int, size: int, overlap: int) -> list[tuple[range, range]]:
    """(shown, decided) 1-based turn ranges: each window shows up to ``size`` turns, of
    which the first ``overlap`` were decided by the window before; every turn is decided
    exactly once."""
    out = []
    first = 1
    while first <= n_turns:
        shown_start = max(1, first - overlap)
        last = min(n_turns, shown_start + size - 1)
        out.append((range(shown_start, last + 1), range(first, last + 1)))
        first = last + 1
    return out


@node_reads("episode_id")
async def load_node(state: AugmentState, runtime: Any) -> dict[str, Any]:
    """reads: episode_id / writes: source, sessions (text only, verbatim)."""
    ctx = _ctx(runtime, "load")
    path = dialogue_path(ctx.run_dir, state["episode_id"])
    data = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    sessions = [
        {
            "index": number,
            "date": session.get("date"),
            "turns": [
                {"id": i, "speaker": t["speaker"], "utterance": t["text"]}
                for i, t in enumerate(session["turns"], start=1)
            ],
        }
        for number, session in enumerate(data["sessions"], start=1)
    ]
    return {"source": data["source"], "sessions": sessions}


def _add_usage(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    return {k: total.get(k, 0) + more.get(k, 0) for k in {*total, *more}}


async def _scan_session(
    ctx: EpisodeContext, state: AugmentState, session: dict[str, Any]
) -> tuple[list[tuple[int, int, Any]], dict[str, float], str, list[str]]:
    settings = ctx.config.augment.scan
    mode = ctx.config.augment.mode or "magid"
    turns = [
        {"number": t["id"], "speaker": t["speaker"], "text": t["utterance"]}
        for t in session["turns"]
    ]
    found, usage, version, notes = [], {}, "", []
    for w, (shown, decide) in enumerate(
        windows(len(turns), settings.window_turns, settings.window_overlap)
    ):
        picks, completion, version = await scanner.scan_window(
            ctx.role("scanner", state["seed"], session["index"], w),
            mode=mode,
            style=settings.prompt_style,
            turns=turns[shown.start - 1 : shown.stop - 1],
            decide=decide,
            limit=max(1, min(settings.max_images, scanner.MAX_PICKS)),
            max_chars=settings.max_utterance_chars,
        )
        usage = _add_usage(usage, completion.usage.as_dict())
        found += [(session["index"], p.turn, p) for p in picks]
        notes += [f"session {session['index']} scan: {c}" for c in completion.repairs_by_code]
    return found, usage, version, notes


@node_reads("sessions", "seed")
async def scan_node(state: AugmentState, runtime: Any) -> dict[str, Any]:
    """reads: sessions, seed / writes: sessions (sharing on the chosen turns), pending
    image_requests, usage, prompt_versions, notes (picks over the cap)."""
    ctx = _ctx(runtime, "scan")
    mode = ctx.config.augment.mode or "magid"
    cap = ctx.config.augment.scan.max_images
    results = await asyncio.gather(*(_scan_session(ctx, state, s) for s in state["sessions"]))
    found = sorted((p for r in results for p in r[0]), key=lambda p: (p[0], p[1]))
    usage: dict[str, float] = {}
    for _, spent, _, _ in results:
        usage = _add_usage(usage, spent)
    notes = [n for r in results for n in r[3]] + [
        f"session {s} turn {t}: picked over augment.scan.max_images ({cap}), not kept"
        for s, t, _ in found[cap:]
    ]
    sessions = {
        s["index"]: {**s, "turns": [dict(t) for t in s["turns"]]} for s in state["sessions"]
    }
    requests = []
    for index, turn_id, pick in found[:cap]:
        turn = sessions[index]["turns"][turn_id - 1]
        request_id = f"s{index}-t{turn_id}"
        turn["sharing"] = {
            "rationale": pick.rationale,
            "image_description": pick.description,
            "image_source": "internet",
            "keywords": list(pick.keywords),
        }
        turn["request_id"] = request_id
        requests.append(
            {
                "id": request_id,
                "origin": "sharing",
                "session": index,
                "turn_id": turn_id,
                "description": pick.description,
                "keywords": list(pick.keywords),
                "image_source": "internet",
                "status": "pending",
            }
        )
    version = next((r[2] for r in results if r[2]), "")
    return {
        "sessions": [sessions[i] for i in sorted(sessions)],
        "image_requests": requests,
        "usage": {"scanner": usage} if usage else {},
        "prompt_versions": {scanner.PROMPTS[mode]: version} if version else {},
        "notes": notes,
    }


def fan_out(state: AugmentState) -> list[Send] | str:
    """One aligner branch per pending request; straight to finalize when there is none."""
    speakers = {(s["index"], t["id"]): t["speaker"] for s in state["sessions"] for t in s["turns"]}
    sends = []
    for request in state.get("image_requests", []):
        if request["status"] != "pending":
            continue
        name = speakers.get((request["session"], request["turn_id"]), "someone")
        person = {"name": name, "age": "unknown", "gender": "person", "class_word": "person"}
        sends.append(
            Send(
                "align",
                {
                    "request": request,
                    "person": person,
                    "face_image": None,  # a given dialogue has no face: no personalised t2i
                    "episode_id": state["episode_id"],
                    "seed": state["seed"],
                },
            )
        )
    return sends or "finalize"


def assemble(state: AugmentState, ctx: EpisodeContext, similarity: Any, missing: str) -> dict:
    requests = []
    for request in sorted(state.get("image_requests", []), key=lambda r: r["id"]):
        if request["status"] == "pending":  # never left pending (no branch ran)
            request = {**request, "status": "unaligned", "reason": "no aligner branch ran"}
        requests.append(request)
    episode = Episode(
        episode_id=state["episode_id"],
        kind="augmented",
        source=state["source"],
        seeds={"sampler": state["seed"], "llm": derive_seed(state["seed"], "llm")},
        config_fingerprint=ctx.fingerprint(),
        prompt_versions=state.get("prompt_versions", {}),
        usage=state.get("usage", {}),
        sessions=state["sessions"],
        image_requests=requests,
    )
    episode = filter_episode(episode, quality.filter_settings(ctx.config), similarity, missing)
    return {"episode": episode.model_dump(mode="json")}


@node_reads("*")
async def finalize_node(state: AugmentState, runtime: Any) -> dict[str, Any]:
    """reads: everything / writes: episode (validated, filtered)."""
    ctx = _ctx(runtime, "finalize")
    similarity, missing = quality.image_similarity(ctx)
    if similarity is None:
        return assemble(state, ctx, None, missing)
    return await asyncio.to_thread(assemble, state, ctx, similarity, missing)


def build_augment_graph() -> StateGraph:
    """The uncompiled augmentation graph; compile it with a checkpointer."""
    graph = StateGraph(AugmentState, context_schema=EpisodeContext)
    graph.add_node("load", load_node)
    graph.add_node("scan", scan_node, retry_policy=NODE_RETRY)
    graph.add_node("align", aligner.compile_aligner_graph())
    graph.add_node("finalize", finalize_node)
    graph.add_edge(START, "load")
    graph.add_edge("load", "scan")
    graph.add_conditional_edges("scan", fan_out, ["align", "finalize"])
    graph.add_edge("align", "finalize")
    graph.add_edge("finalize", END)
    return graph
