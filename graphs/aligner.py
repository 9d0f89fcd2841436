"""The Plan-and-Execute image aligner (STARK §3.8, Fig. 2) with MAGID's quality loop.

One branch per image request, fanned out with ``Send``::

    plan → execute ─┬─ module unavailable: re-route (no rewrite spent) ─→ plan
                    └─ qa ─┬─ aligned ──────────────────────────────────→ END
                           ├─ retry (new seed, generators only) ─────────→ execute
                           ├─ rewrite (LLM) ─────────────────────────────→ plan
                           └─ budget spent: unaligned, every reason kept → END

A generated image may fail ``images.qa.failures_before_rewrite`` times (MAGID: two) before
the description is rewritten; retrieval and web search get one try per description;
``images.qa.max_attempts`` caps the tries of one request. Every try's QA record (scores,
scorer versions, thresholds, reasons) lands in the request's ``attempts`` in order. Every
request ends ``aligned`` or ``unaligned`` with a reason; none disappears or stays pending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mcu_sim.agents import planner, rewriter
from mcu_sim.agents.llm.client import LLMError
from mcu_sim.graphs.context import IMAGES_DISABLED, EpisodeContext, derive_seed
from mcu_sim.graphs.state import EpisodeState, append, merge_dict, merge_usage, node_reads
from mcu_sim.storage_errors import storage_failure
from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.toolbox import ToolDisabled

GENERATIVE = {"personalized_t2i", "t2i"}
NEEDS_FACE = {"personalized_t2i"}
REASON_MAX = 2000


class AlignState(TypedDict, total=False):
    request: dict[str, Any]
    person: dict[str, Any]
    face_image: str | None
    episode_id: str
    seed: int
    plan: dict[str, Any]
    candidates: list[dict[str, Any]]
    error: str | None  # the current try's execution error, if it raised
    tries: int  # tries of the current plan (description and module)
    total_tries: int  # tries of this request, all plans together
    rewrites: int
    excluded: dict[str, str]  # module -> why this request cannot use it
    reroute: str | None  # why the planned module just became unusable
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


def _logged(request: dict[str, Any], *entries: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``request`` with ``entries`` appended to its attempts (in order)."""
    return {**request, "attempts": [*request.get("attempts", []), *entries]}


def _finish(request: dict[str, Any], status: str, reason: str | None, **fields: Any) -> dict:
    return {"image_requests": [{**request, "status": status, "reason": reason, **fields}]}


def _usable(ctx: EpisodeContext, state: AlignState) -> tuple[list[str], list[str]]:
    """Modules this request can use, in router order, and why each other one cannot: off
    in this process, no face image for personalised generation, or failed for it."""
    excluded = state.get("excluded") or {}
    usable, notes = [], []
    for module in ctx.tools.router_order:
        ok, why = ctx.tools.availability(module)
        if ok and module in excluded:
            ok, why = False, excluded[module]
        if ok and module in NEEDS_FACE and not state.get("face_image"):
            ok, why = False, "the episode has no face image"
        if ok:
            usable.append(module)
        else:
            notes.append(f"{module} unavailable: {why}")
    return usable, notes


def _description(state: AlignState) -> str:
    request = state["request"]
    return request.get("planned_description") or request["description"]


async def _llm_plan(state: AlignState, ctx: EpisodeContext, modules: list[str]) -> tuple:
    """Ask the planner to choose among ``modules`` (an enum in its schema)."""
    person = state["person"]
    request = state["request"]
    description = _description(state)
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


def _reroute_plan(state: AlignState, modules: list[str]) -> dict[str, Any]:
    """The planned module became unusable at run time: the first usable one in router
    order takes over, without asking the planner again and without spending a rewrite."""
    gone = state["plan"]["module"]
    note = f"{gone} failed at run time ({state['reroute']}); fell back to {modules[0]}"
    return {"module": modules[0], "description": _description(state), "note": note[:400]}


@node_reads("request", "person", "face_image", "excluded", "reroute")
async def plan_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: request, person, face_image, excluded, reroute / writes: plan (module,
    description, availability notes), a reset try count.

    Only modules that can run for this request are offered to the planner, as an enum; when
    just one can, or when re-routing after a run-time failure, code decides without a call.
    """
    ctx = _ctx(runtime, "align.plan")
    request = state["request"]
    if ctx.tools is None:
        return _finish(request, "unaligned", IMAGES_DISABLED)
    modules, notes = _usable(ctx, state)
    if not modules:
        return _finish(request, "unaligned", "no image module available: " + "; ".join(notes))
    if state.get("reroute"):
        plan, accounting = _reroute_plan(state, modules), {}
    else:
        plan, accounting = await _llm_plan(state, ctx, modules)
    module = plan["module"] if plan["module"] in modules else modules[0]
    if plan.get("note"):
        notes.insert(0, plan["note"])
    description = plan["description"]
    if module == "personalized_t2i":
        description = planner.insert_trigger(description, state["person"]["class_word"])
    elif plan["module"] == "personalized_t2i":
        description = _description(state)  # no trigger word for the other modules
    chosen = {"module": module, "description": description, "notes": notes}
    chosen["planned"] = plan["module"]
    return {
        "plan": chosen,
        "request": _logged(request, {"event": "plan", **chosen}),
        "tries": 0,
        "reroute": None,
        **accounting,
    }


def _resolve(ctx: EpisodeContext, path: str | None) -> str | None:
    """Image paths in state are relative to the run directory."""
    if not path:
        return None
    return str(path) if Path(path).is_absolute() else str(ctx.run_dir / path)


def _unavailable(state: AlignState, ctx: EpisodeContext, exc: ToolUnavailable) -> dict:
    """Exclude the module for this request (for every episode when it cannot load)."""
    module = state["plan"]["module"]
    scope = "process" if isinstance(exc, ToolDisabled) else "request"
    if scope == "process":
        ctx.tools.disable(module, exc.reason)  # a remote toolbox keeps its own copy
    entry = {"event": "unavailable", "module": module, "reason": exc.reason, "scope": scope}
    return {
        "candidates": [],
        "error": None,
        "reroute": exc.reason,
        "excluded": {**(state.get("excluded") or {}), module: exc.reason},
        "request": _logged(state["request"], entry),
    }


@node_reads("plan", "request", "face_image", "tries", "total_tries", "rewrites")
async def execute_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: plan, request, face_image, tries / writes: candidates (images on disk), or
    error, or a re-route when the module cannot run."""
    ctx = _ctx(runtime, "align.execute")
    plan = state["plan"]
    request = state["request"]
    rewrites = state.get("rewrites", 0)
    seed = derive_seed(state["seed"], request["id"], rewrites, state.get("tries", 0))
    try:
        candidates = await ctx.tools.execute(
            plan["module"],
            plan["description"],
            # the keywords describe the original moment; after a rewrite, search for the
            # rewritten description, or a re-plan would fetch the very same images
            keywords=request.get("keywords", []) if rewrites == 0 else [],
            seed=seed,
            out_dir=ctx.run_dir / "images" / state["episode_id"],
            stem=f"{request['id']}-r{rewrites}-t{state.get('total_tries', 0)}",
            face_image=_resolve(ctx, state.get("face_image")),
        )
    except ToolUnavailable as exc:
        return _unavailable(state, ctx, exc)
    except Exception as exc:  # a tool error is a failed try, recorded, never a crash
        if storage_failure(exc) is not None:
            raise  # a full disk is the run's problem, not a missing image: the run stops
        return {"candidates": [], "error": f"{plan['module']} error: {exc}"[:300]}
    return {"candidates": list(candidates), "error": None}


def after_execute(state: AlignState) -> str:
    return "plan" if state.get("reroute") else "qa"


def _try_fields(state: AlignState) -> dict[str, Any]:
    plan = state["plan"]
    return {
        "module": plan["module"],
        "description": plan["description"],
        "rewrite": state.get("rewrites", 0),
        "try": state.get("total_tries", 0) + 1,
    }


@node_reads("candidates", "error", "plan", "request", "tries", "total_tries")
async def qa_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: candidates, error, plan, request / writes: the aligned request, or this try's
    QA record, its failure reason and the try counts."""
    ctx = _ctx(runtime, "align.qa")
    plan = state["plan"]
    request = state["request"]
    fields = _try_fields(state)
    candidates = state.get("candidates", [])
    if state.get("error") or not candidates:
        reason = state.get("error") or f"{plan['module']}: no image"
        entry = {"event": "failure", **fields, "detail": reason}
        reasons = [reason]
    else:
        verdict = await ctx.tools.judge_candidates(candidates, plan["description"], ctx.run_dir)
        entry = {**verdict.record, **fields}
        if verdict.best is not None:
            return _finish(
                _logged(request, entry),
                "aligned",
                None,
                module=plan["module"],
                planned_description=plan["description"],
                image=verdict.best,
                alternatives=verdict.alternatives,
            )
        reasons = verdict.reasons
    failure = f"try {fields['try']} ({plan['module']}): " + "; ".join(reasons)
    return {
        "request": _logged(request, entry),
        "tries": state.get("tries", 0) + 1,
        "total_tries": fields["try"],
        "failures": [failure[:400]],
        "candidates": [],
        "error": None,
    }


def after_qa(state: AlignState, runtime: Any) -> str:
    """Route after QA: done, another try, a rewrite, or give up."""
    if state.get("image_requests"):
        return "done"
    qa = runtime.context.tools.qa_settings
    if state.get("total_tries", 0) >= qa.max_attempts:
        return "give_up"
    generative = state["plan"]["module"] in GENERATIVE
    if generative and state.get("tries", 0) < qa.failures_before_rewrite:
        return "execute"
    if state.get("rewrites", 0) < qa.max_rewrites:
        return "rewrite"
    return "give_up"


@node_reads("request", "plan", "failures")
async def rewrite_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: request, failures / writes: request.planned_description, rewrites."""
    ctx = _ctx(runtime, "align.rewrite")
    request = state["request"]
    base = _description(state)
    rewrites = state.get("rewrites", 0) + 1
    try:
        text, completion, version = await rewriter.rewrite_description(
            ctx.role("rewriter", state["seed"], request["id"], rewrites - 1),
            base,
            state.get("failures", [])[-4:],
        )
    except LLMError as exc:
        reason = f"rewriter failed: {exc}"[:300]
        return {
            "rewrites": rewrites,
            "failures": [reason],
            "request": _logged(request, {"event": "rewrite_failed", "detail": reason}),
        }
    request = _logged(request, {"event": "rewrite", "from": base, "to": text})
    return {
        "request": {**request, "planned_description": text},
        "rewrites": rewrites,
        "usage": {"rewriter": completion.usage.as_dict()},
        "prompt_versions": {rewriter.PROMPT: version},
    }


async def give_up_node(state: AlignState, runtime: Any) -> dict[str, Any]:
    """reads: failures / writes: the request as unaligned, with every reason kept."""
    ctx = _ctx(runtime, "align.give_up")
    qa = ctx.tools.qa_settings
    tries, rewrites = state.get("total_tries", 0), state.get("rewrites", 0)
    budget = " (images.qa.max_attempts reached)" if tries >= qa.max_attempts else ""
    head = f"no image passed QA in {tries} tries and {rewrites} rewrites{budget}: "
    reasons = state.get("failures", []) or ["quality budget spent"]
    return _finish(state["request"], "unaligned", (head + "; ".join(reasons))[:REASON_MAX])


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
    graph.add_conditional_edges("execute", after_execute, {"plan": "plan", "qa": "qa"})
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
    return [_branch(state, r) for r in pending] or "filter"


@node_reads("image_requests", "device_images")
async def link_album_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """The first step of the ``filter`` node. reads: image_requests, device_images /
    writes: sharing requests that reuse an album photo (they show the very image aligned
    for that photo), and any request still pending marked unaligned, so none leaves the
    image stage pending.

    The linked request carries a copy of the album request's image record (the viewer shows
    it in the chat) and names its source in ``attempts``; the filters count such an image
    once, under the album request."""
    by_id = {r["id"]: r for r in state.get("image_requests", [])}
    album = {d["id"]: d for d in state.get("device_images", [])}
    updates = []
    for request in by_id.values():
        if request["status"] != "pending":
            continue
        ref = request.get("device_image_id")
        if request["origin"] != "sharing" or ref is None:
            why = "no aligner branch ran for this request"
            updates.append({**request, "status": "unaligned", "reason": why})
            continue
        photo = album.get(ref, {})
        source = by_id.get(photo.get("request_id") or "")
        linked = dict(request)
        if source and source["status"] == "aligned":
            linked.update(
                status="aligned", image=source["image"], module=source.get("module"), reason=None
            )
            linked = _logged(linked, {"event": "album_photo", "request": source["id"]})
        else:
            why = source.get("reason") if source else "the photo has no image request"
            linked.update(status="unaligned", reason=f"album photo {ref} not aligned: {why}")
        updates.append(linked)
    return {"image_requests": updates}
