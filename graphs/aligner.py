"""The Plan-and-Execute image aligner (STARK §3.8, Fig. 2) with MAGID's quality loop.

One branch per image request, fanned out with ``Send``::

    plan → execute → qa ─┬─ aligned ───────────────────────────→ END
                         ├─ retry (new seed, generators only) → execute
                         ├─ rewrite (LLM) ────────────────────→ plan
                         └─ budget spent: unaligned, reasons kept → END

Every request ends ``aligned`` or ``unaligned`` with a reason; none disappears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mcu_sim.agents import planner, rewriter
from mcu_sim.agents.llm import LLMError
from mcu_sim.graphs.context import EpisodeContext, derive_seed
from mcu_sim.graphs.state import EpisodeState, append, merge_dict, merge_usage, node_reads

GENERATIVE = {"personalized_t2i"}


class AlignState(TypedDict, total=False):
    request: dict[str, Any]
    person: dict[str, Any]
    face_image: str | None
    episode_id: str
    seed: int
    plan: dict[str, Any]
    candidates: list[dict[str, Any]]
    tries: int
    rewrites: int
    failures: Annotated[list[str], append]
    image_requests: list[dict[str, Any]]
    usage: Annotated[dict[str, dict[str, float]], merge_usage]
    prompt_versions: Annotated[dict[str, str], merge_dict]


class AlignOutput(TypedDict, total=False):
    image_requests: list[dict[str, Any]]
    usage: Annotated[dict[str, dict[str, float]], merge_usage]
    prompt_versions: Annotated[dict[str, str], merge_dict]


def _ctx(runtime: Any, node: str) -> EpisodeContext:
    runtime.context.executions[node] += 1
    return runtime.context


def _finish(state: AlignState, status: str, reason: str | None, **fields: Any) -> dict:
    request = dict(state["request"])
    request.update(status=status, reason=reason, **fields)
    request["attempts"] = [*request.get("attempts", []), *_pending_attempts(state)]
    return {"image_requests": [request]}


def _pending_attempts(state: AlignState) -> list[dict[str, Any]]:
    return [{"event": "failure", "detail": f} for f in state.get("failures", [])]


def _fallback(ctx: EpisodeContext, wanted: str) -> tuple[str | None, list[str]]:
    """The wanted module if available, else the next available one in router order."""
    tools = ctx.tools
    order = [wanted] + [m for m in tools.router_order if m != wanted]
    notes = []
    for module in order:
        ok, why = tools.availability(module)
        if ok:
            return module, notes
        notes.append(f"{module} unavailable: {why}")
    return None, notes


def _available(ctx: EpisodeContext) -> tuple[list[str], list[str]]:
    """Modules that can run here, in router order, and why the others cannot."""
    usable, notes = [], []
    for module in ctx.tools.router_order:
        ok, why = ctx.tools.availability(module)
        if ok:
            usable.append(module)
        else:
            notes.append(f"{module} unavailable: {why}")
    return usable, notes


async def _llm_plan(state: AlignState, ctx: EpisodeContext, modules: list[str]) -> tuple:
    """Ask the planner to choose among ``modules`` (an enum in its schema)."""
    person = state["person"]
    request = state["request"]
    description = request.get("planned_description") or request["description"]
    if len(modules) == 1:  # nothing to choose: no call
        note = f"only {modules[0]} is available; planner not asked"
        return {"module": modules[0], "description": description, "note": note}, {}
    try:
        plan, completion, version = await planner.plan_request(
            ctx.role("planner", state["seed"], request["id"], state.get("rewrites", 0)),
            name=person["name"],
            age=person["age"],
            gender=person["gender"],
            class_word=person["class_word"],
            description=description,
            image_source=request.get("image_source"),
            modules=modules,
        )
    except LLMError as exc:
        # Retrieval is the safest default: it needs no face and fits most descriptions.
        module = "retrieval" if "retrieval" in modules else modules[0]
        note = f"planner output unusable, defaulted to {module}: {exc}"[:400]
        spent = getattr(exc, "usage", None)
        accounting = {"usage": {"planner": spent.as_dict()}} if spent else {}
        return {"module": module, "description": description, "note": note}, accounting
    accounting = {
        "usage": {"planner": completion.usage.as_dict()},
        "prompt_versions": {planner.PROMPT: version},
    }
    return {"module": plan.module, "description": plan.description}, accounting


@node_reads("request", "person")
async def plan_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: request, person / writes: plan (module, description, availability notes).

    Only modules that can run here are offered to the planner, as an enum; when just one
    can, code decides without a call.
    """
    ctx = _ctx(runtime, "align.plan")
    if ctx.tools is None:
        return _finish(state, "unaligned", "image tools disabled (images.enabled is false)")
    modules, notes = _available(ctx)
    if not modules:
        return _finish(state, "unaligned", "no image module available: " + "; ".join(notes))
    plan, accounting = await _llm_plan(state, ctx, modules)
    module, more = _fallback(ctx, plan["module"])
    notes += more
    if plan.get("note"):
        notes.insert(0, plan["note"])
    if module is None:
        update = _finish(state, "unaligned", "no image module available: " + "; ".join(notes))
        return {**update, **accounting}
    description = plan["description"]
    if module == "personalized_t2i":
        description = planner.insert_trigger(description, state["person"]["class_word"])
    elif plan["module"] == "personalized_t2i":
        description = state["request"]["description"]  # drop the trigger for other modules
    chosen = {
        "module": module,
        "description": description,
        "notes": notes,
        "planned": plan["module"],
    }
    request = dict(state["request"])
    request["attempts"] = [*request.get("attempts", []), {"event": "plan", **chosen}]
    return {"plan": chosen, "request": request, "tries": 0, **accounting}


def _resolve(ctx: EpisodeContext, path: str | None) -> str | None:
    """Image paths in state are relative to the run directory."""
    if not path:
        return None
    return str(path) if Path(path).is_absolute() else str(ctx.run_dir / path)


@node_reads("plan", "request", "face_image", "tries")
async def execute_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: plan, request, face_image, tries / writes: candidates (images on disk)."""
    ctx = _ctx(runtime, "align.execute")
    plan = state["plan"]
    request = state["request"]
    seed = derive_seed(
        state["seed"], request["id"], state.get("rewrites", 0), state.get("tries", 0)
    )
    out_dir = ctx.run_dir / "images" / state["episode_id"]
    try:
        candidates = await ctx.tools.execute(
            plan["module"],
            plan["description"],
            keywords=request.get("keywords", []),
            seed=seed,
            out_dir=out_dir,
            stem=f"{request['id']}-r{state.get('rewrites', 0)}-t{state.get('tries', 0)}",
            face_image=_resolve(ctx, state.get("face_image")),
        )
    except Exception as exc:  # a tool error is a failed try, recorded, never a crash
        return {"candidates": [], "failures": [f"{plan['module']} error: {exc}"[:300]]}
    return {"candidates": [c for c in candidates]}


@node_reads("candidates", "plan")
async def qa_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: candidates, plan / writes: the aligned request, or a failure and a try count."""
    ctx = _ctx(runtime, "align.qa")
    plan = state["plan"]
    candidates = state.get("candidates", [])
    tries = state.get("tries", 0) + 1
    if not candidates:
        failures = state.get("failures", [])
        already = bool(failures) and failures[-1].startswith(f"{plan['module']} error")
        return {"tries": tries, "failures": [] if already else [f"{plan['module']}: no image"]}
    verdict = await ctx.tools.judge_candidates(candidates, plan["description"], ctx.run_dir)
    if verdict.best is not None:
        return _finish(
            state,
            "aligned",
            None,
            module=plan["module"],
            planned_description=plan["description"],
            image=verdict.best,
            alternatives=verdict.alternatives,
            attempts=[*state["request"].get("attempts", []), *verdict.log],
        )
    return {"tries": tries, "failures": verdict.reasons}


def after_qa(state: AlignState, runtime: Any) -> str:
    """Route after QA: done, another try, a rewrite, or give up."""
    if state.get("image_requests"):
        return "done"
    qa = runtime.context.tools.qa_settings if runtime.context.tools else None
    retries = qa.retries_per_description if qa else 0
    rewrites = qa.max_rewrites if qa else 0
    generative = state["plan"]["module"] in GENERATIVE
    if generative and state.get("tries", 0) <= retries:
        return "execute"
    if state.get("rewrites", 0) < rewrites:
        return "rewrite"
    return "give_up"


@node_reads("request", "plan", "failures")
async def rewrite_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: request, failures / writes: request.planned_description, rewrites."""
    ctx = _ctx(runtime, "align.rewrite")
    request = dict(state["request"])
    base = request.get("planned_description") or request["description"]
    try:
        text, completion, version = await rewriter.rewrite_description(
            ctx.role("rewriter", state["seed"], request["id"], state.get("rewrites", 0)),
            base,
            state.get("failures", [])[-4:],
        )
    except LLMError as exc:
        return {
            "rewrites": state.get("rewrites", 0) + 1,
            "failures": [f"rewriter failed: {exc}"[:300]],
        }
    request["planned_description"] = text
    request["attempts"] = [
        *request.get("attempts", []),
        {"event": "rewrite", "from": base, "to": text},
    ]
    return {
        "request": request,
        "rewrites": state.get("rewrites", 0) + 1,
        "usage": {"rewriter": completion.usage.as_dict()},
        "prompt_versions": {rewriter.PROMPT: version},
    }


def give_up_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: failures / writes: the request as unaligned, with every reason kept."""
    _ctx(runtime, "align.give_up")
    reasons = state.get("failures", []) or ["quality budget spent"]
    return _finish(state, "unaligned", "; ".join(reasons[-3:])[:600])


def after_plan(state: AlignState) -> str:
    return "done" if state.get("image_requests") else "execute"


def build_aligner_graph() -> StateGraph:
    graph = StateGraph(AlignState, context_schema=EpisodeContext, output_schema=AlignOutput)
    graph.add_node("plan", plan_node)
    graph.add_node("execute", execute_node)
    graph.add_node("qa", qa_node)
    graph.add_node("rewrite", rewrite_node)
    graph.add_node("give_up", give_up_node)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after_plan, {"execute": "execute", "done": END})
    graph.add_edge("execute", "qa")
    graph.add_conditional_edges(
        "qa",
        after_qa,
        {"done": END, "execute": "execute", "rewrite": "rewrite", "give_up": "give_up"},
    )
    graph.add_edge("rewrite", "plan")
    graph.add_edge("give_up", END)
    return graph


def compile_aligner_graph(checkpointer: Any = None) -> Any:
    return build_aligner_graph().compile(checkpointer=checkpointer)


# ---------------------------------------------------------------- fan-out from the episode


def _branch(state: EpisodeState, request: dict[str, Any]) -> Send:
    from mcu_sim.personas.samplers import class_word

    demo = state["demographics"]
    face = state.get("face", {})
    image = face.get("image") or {}
    return Send(
        "align_album" if request["origin"] == "album" else "align_sharing",
        {
            "request": request,
            "person": {
                "name": demo["name"],
                "age": demo["age"],
                "gender": demo["gender"],
                "class_word": class_word(demo["age"], demo["gender"]),
            },
            "face_image": image.get("path"),
            "episode_id": state["episode_id"],
            "seed": state["seed"],
        },
    )


def fan_out_album(state: EpisodeState) -> list[Send] | str:
    """One branch per album photo still pending; straight on to the sessions otherwise."""
    pending = [
        r
        for r in state.get("image_requests", [])
        if r["origin"] == "album" and r["status"] == "pending"
    ]
    return [_branch(state, r) for r in pending] or "session"


def fan_out_sharing(state: EpisodeState) -> list[Send] | str:
    """One branch per sharing moment that is not a photo already in the album."""
    pending = [
        r
        for r in state.get("image_requests", [])
        if r["origin"] == "sharing"
        and r["status"] == "pending"
        and r.get("device_image_id") is None
    ]
    return [_branch(state, r) for r in pending] or "link_album"


@node_reads("image_requests", "device_images")
def link_album_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """reads: image_requests, device_images / writes: sharing requests that reuse an album
    photo (they show the very image aligned for that photo)."""
    runtime.context.executions["link_album"] += 1
    by_id = {r["id"]: r for r in state.get("image_requests", [])}
    album = {d["id"]: d for d in state.get("device_images", [])}
    updates = []
    for request in by_id.values():
        ref = request.get("device_image_id")
        if request["origin"] != "sharing" or ref is None or request["status"] != "pending":
            continue
        photo = album.get(ref, {})
        source = by_id.get(photo.get("request_id") or "")
        linked = dict(request)
        if source and source["status"] == "aligned":
            linked.update(
                status="aligned", image=source["image"], module=source.get("module"), reason=None
            )
        else:
            why = source.get("reason") if source else "the photo has no image request"
            linked.update(status="unaligned", reason=f"album photo {ref} not aligned: {why}")
        updates.append(linked)
    return {"image_requests": updates}
