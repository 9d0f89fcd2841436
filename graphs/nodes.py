"""Episode graph nodes. Each reads a few state fields and returns a partial update.

Every docstring starts with ``reads: … / writes: …``. Dependencies come from
``runtime.context`` (:class:`~mcu_sim.graphs.context.EpisodeContext`).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from typing import Any, NamedTuple, TypeVar

from langgraph.runtime import Runtime
from pydantic import BaseModel, TypeAdapter

from mcu_sim.agents import (
    commonsense,
    device,
    dialogue,
    events,
    narrative,
    persona,
    strategy,
    summarizer,
)
from mcu_sim.agents.llm.client import Completion
from mcu_sim.graphs.context import IMAGES_DISABLED, EpisodeContext, derive_seed
from mcu_sim.graphs.state import EpisodeState, node_reads
from mcu_sim.personas import samplers
from mcu_sim.personas.intervals import describe_gap
from mcu_sim.personas.schema import (
    DATE_FORMAT,
    Demographics,
    DeviceImage,
    Event,
    EventGraph,
    PersonaAttribute,
    Turn,
)

Ctx = Runtime[EpisodeContext]


def _accounting(node: str, completion: Completion, prompt: str, version: str) -> dict[str, Any]:
    """Usage and prompt version; with the stepwise strategy, also the notes of each piece
    that fell back to a fixed text (its ``repairs_by_code``, which in the structured
    strategy only the events role fills, noted by the events node itself)."""
    update: dict[str, Any] = {
        "usage": {node: completion.usage.as_dict()},
        "prompt_versions": {prompt: version},
    }
    if completion.repairs_by_code and node != "events":
        update["notes"] = list(completion.repairs_by_code)
    return update


def _count(runtime: Ctx, node: str) -> EpisodeContext:
    """Count the execution and return the context (with a clear error when none was given)."""
    if runtime.context is None:
        raise RuntimeError(
            f"node {node!r} needs a runtime context: invoke the graph with "
            "context=EpisodeContext(config=..., llm=..., run_dir=...)"
        )
    runtime.context.executions[node] += 1
    return runtime.context


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validated(model: type[ModelT], raw: Any) -> ModelT:
    """``model.model_validate(raw)``: every node checks the state values it reads, because
    a checkpoint read or a debugger edit may have replaced them."""
    return model.model_validate(raw)


def _demo(state: EpisodeState) -> Demographics:
    return _validated(Demographics, state["demographics"])


@node_reads("seed")
async def demographics_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: seed / writes: demographics, persona_category, face (prompt).

    Pure sampling, no LLM: the same seed always gives the same person.
    """
    _count(runtime, "demographics")
    seed = state["seed"]
    person = samplers.sample_person(seed)
    return {
        "demographics": person.demographics.model_dump(mode="json"),
        "persona_category": {
            "category": person.persona_category.category,
            "entity_key": person.persona_category.entity_key,
        },
        "face": {
            "prompt": person.face_prompt,
            "attributes": person.face_attributes,
            "seed": derive_seed(seed, "face"),
            "status": "pending",
        },
    }


@node_reads("face", "episode_id")
async def face_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: face, episode_id / writes: face (image or the reason it is unavailable)."""
    ctx = _count(runtime, "face")
    face = dict(state["face"])
    if ctx.tools is None:
        face.update(status="unavailable", reason="image tools disabled (images.enabled)")
        return {"face": face}
    return {"face": await ctx.tools.generate_face(face, state["episode_id"], ctx.run_dir)}


@node_reads("seed", "demographics", "persona_category")
async def persona_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: demographics, persona_category / writes: persona, persona_focus."""
    ctx = _count(runtime, "persona")
    category = state["persona_category"]
    attributes, completion, version = await strategy.generate_persona(
        ctx.role("persona", state["seed"]),
        _demo(state),
        category["category"],
        category["entity_key"],
        ctx.config.episode.persona_count(),
    )
    focus = random.Random(derive_seed(state["seed"], "persona-focus")).randrange(len(attributes))
    return {
        "persona": [a.model_dump(mode="json") for a in attributes],
        "persona_focus": focus,
        **_accounting("persona", completion, persona.PROMPT, version),
    }


def _focus_sentence(state: EpisodeState) -> str:
    attribute = PersonaAttribute.model_validate(state["persona"][state.get("persona_focus", 0)])
    return attribute.sentence


@node_reads("seed", "demographics", "persona", "persona_focus")
async def commonsense_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: demographics, persona[persona_focus] / writes: commonsense (five relations:
    one call per relation with the paper's frames, or one joint call, by the preset)."""
    ctx = _count(runtime, "commonsense")
    per_relation = ctx.config.episode.commonsense_mode() == "per_relation"
    call = ctx.role("commonsense", state["seed"])
    if per_relation and call.strategy != "stepwise":
        generate = commonsense.generate_per_relation
    else:  # one joint call (economy), or the stepwise role's own way
        per_relation = False
        generate = strategy.generate_commonsense
    items, completion, version = await generate(call, _demo(state), _focus_sentence(state))
    prompt = commonsense.PROMPT_PER_RELATION if per_relation else commonsense.PROMPT
    return {
        "commonsense": [c.model_dump(mode="json") for c in items],
        **_accounting("commonsense", completion, prompt, version),
    }


@node_reads("seed", "demographics", "persona", "persona_focus", "commonsense")
async def narrative_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: demographics, persona focus, commonsense / writes: narrative.

    One relation is drawn (seeded); its Table 4 template builds the sentence form.
    """
    ctx = _count(runtime, "narrative")
    demo = _demo(state)
    rng = random.Random(derive_seed(state["seed"], "narrative-relation"))
    chosen = rng.choice(state["commonsense"])
    form = samplers.sentence_form(
        chosen["relation"], demo.name, demo, _focus_sentence(state), chosen["text"]
    )
    result, completion, version = await strategy.generate_narrative(
        ctx.role("narrative", state["seed"]), chosen["relation"], form
    )
    return {
        "narrative": result.model_dump(mode="json"),
        **_accounting("narrative", completion, narrative.PROMPT, version),
    }


@node_reads("seed", "demographics", "narrative")
async def events_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: narrative / writes: events (dates derived by code), n_sessions (one session
    per event: the model's graph decides, the §3.9 filter enforces the bounds)."""
    ctx = _count(runtime, "events")
    episode = ctx.config.episode
    window = (episode.date_window.start, episode.date_window.end)
    call = ctx.role("events", state["seed"])
    graph, completion, version = await strategy.generate_events(
        call,
        _demo(state).name,
        state["narrative"]["narrative"],
        episode.asked_events(),
        episode.max_events(),
        window,
        random.Random(derive_seed(state["seed"], "event-dates")),
        episode.events_min,
    )
    fixed = completion.repairs_by_code
    notes = [f"events: model never gave valid causes; code repaired {'; '.join(fixed)}"]
    if call.strategy == "stepwise":  # the pieces that fell back, each with its reason
        notes = fixed
    return {
        "events": graph.model_dump(mode="json"),
        "n_sessions": len(graph.events),
        "notes": notes if fixed else [],
        **_accounting("events", completion, events.PROMPT, version),
    }


def album_request(image: DeviceImage) -> dict[str, Any]:
    return {
        "id": f"album-{image.id}",
        "origin": "album",
        "device_image_id": image.id,
        "description": image.description,
        "keywords": list(image.categories),
        "image_source": "mobile",
        "status": "pending",
    }


@node_reads("seed", "demographics", "narrative")
def _unless_images_off(ctx: EpisodeContext, requests: list[dict[str, Any]]) -> list[dict]:
    """With image tools off, requests are settled as unaligned at once (with the reason), so
    no aligner branch (a subgraph run and its checkpoints) is started for each of them."""
    if ctx.tools is not None:
        return requests
    return [{**r, "status": "unaligned", "reason": IMAGES_DISABLED} for r in requests]


async def device_images_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: narrative / writes: device_images (the album), image_requests (one per photo)."""
    ctx = _count(runtime, "device_images")
    images, completion, version = await strategy.generate_device_images(
        ctx.role("device", state["seed"]),
        _demo(state).name,
        state["narrative"]["narrative"],
        ctx.config.episode.device_images,
    )
    albums = []
    for image in images:
        albums.append(image.model_copy(update={"request_id": f"album-{image.id}"}))
    return {
        "device_images": [a.model_dump(mode="json") for a in albums],
        "image_requests": _unless_images_off(ctx, [album_request(a) for a in albums]),
        **_accounting("device_images", completion, device.PROMPT, version),
    }


@functools.lru_cache(maxsize=4096)
def _stark_date(iso: str) -> str:
    """An ISO date as the prompts write dates. Cached: each session lists the dates of all
    the sessions before it again, and ``strftime`` cost 15 us a call in a run."""
    return dt.date.fromisoformat(iso).strftime(DATE_FORMAT)


def _moment(event: Event) -> dt.date:
    """The event's date and time of day when code derived one (hour intervals)."""
    return dt.datetime.combine(event.date, event.time) if event.time else event.date


class PastSession(NamedTuple):
    """An earlier session as the dialogue prompt lists it, with the phone photos it added.

    The prompt lists the album as it was before the first session and each later photo
    under the session that took it, so both lists only grow at their end and every
    session's request repeats the previous one's up to its new part (prefix caching)."""

    date: str
    event: str
    photos: tuple[DeviceImage, ...] = ()


def _past_session(session: dict[str, Any], album: list[DeviceImage]) -> PastSession:
    photos = tuple(image for image in album if image.added_in_session == session["index"])
    return PastSession(_stark_date(session["date"]), session["event"], photos)


def _session_variables(state: EpisodeState, index: int) -> dict[str, Any]:
    demo = _demo(state)
    chronology = _validated(EventGraph, state["events"]).chronological()
    event = chronology[index - 1]
    album = [
        _validated(DeviceImage, d)
        for d in sorted(state.get("device_images", []), key=lambda d: d["id"])
        if d["added_in_session"] < index
    ]
    past = sorted(state.get("sessions", []), key=lambda s: s["index"])
    variables: dict[str, Any] = {
        "name": demo.name,
        "age": demo.age,
        "gender": demo.gender,
        "birthplace": demo.birthplace,
        "residence": demo.residence,
        "album": album,
        "date": _stark_date(event.date.isoformat()),
        "event": event.event,
        "history": [],
        "event_id": event.id,
        "event_date": event.date,  # for the session record; the prompt has "date"
    }
    if past:
        last = chronology[index - 2]
        variables.update(
            history=[_past_session(s, album) for s in past],
            last_date=_stark_date(past[-1]["date"]),
            time_interval=describe_gap(_moment(last), _moment(event)),
            experience=event.caused_by.experience if event.caused_by else "",
            experience_op=event.caused_by.experience_op if event.caused_by else None,
        )
    return variables


def sharing_requests(turns: list[Turn], session_index: int) -> list[dict[str, Any]]:
    requests = []
    for turn in turns:
        if not turn.sharing:
            continue
        ref = turn.sharing.image_id_from_mobile
        requests.append(
            {
                "id": f"s{session_index}-t{turn.id}",
                "origin": "sharing",
                "session": session_index,
                "turn_id": turn.id,
                "device_image_id": ref if isinstance(ref, int) else None,
                "description": turn.sharing.image_description,
                "keywords": turn.sharing.keywords,
                "image_source": turn.sharing.image_source,
                "status": "pending",
            }
        )
    return requests


# session variables kept for the session record, not given to the dialogue prompt
_NOT_PROMPT_VARIABLES = frozenset({"event_id", "event_date", "experience_op"})
# one call dumps a session's turns instead of a model_dump per turn (with the date taken
# from the event)
_TURNS: TypeAdapter[list[Turn]] = TypeAdapter(list[Turn])


@node_reads("seed", "demographics", "events", "device_images", "sessions")
async def session_node(state: EpisodeState, runtime: Ctx) -> dict[str, Any]:
    """reads: demographics, events, device_images, sessions / writes: one more session,
    new album photos, image_requests for its sharing moments.

    Session n talks about the n-th event in date order; it sees the earlier sessions' topics,
    the time since the last one, the experience in between and the album as it stands.
    """
    ctx = _count(runtime, "session")
    index = len(state.get("sessions", [])) + 1
    variables = _session_variables(state, index)
    album_ids = [image.id for image in variables["album"]]
    episode = ctx.config.episode
    turns, completion, version = await strategy.generate_session(
        ctx.role("dialogue", state["seed"], index),
        variables={k: v for k, v in variables.items() if k not in _NOT_PROMPT_VARIABLES},
        album_ids=album_ids,
        sharing_more_than=episode.sharing_more_than,
        max_sharing=episode.max_sharing_moments,
        min_sharing=episode.min_sharing_moments,
        max_turns=episode.max_turns,
        user_name=variables["name"],
        max_chars=episode.max_utterance_chars,
    )
    requests = sharing_requests(turns, index)
    by_turn = {r["turn_id"]: r["id"] for r in requests}
    turns = [  # a copy only for the few turns whose request id changes (sharing moments)
        t
        if t.request_id == by_turn.get(t.id)
        else t.model_copy(update={"request_id": by_turn.get(t.id)})
        for t in turns
    ]
    album = [_validated(DeviceImage, d) for d in state.get("device_images", [])]
    new_images = dialogue.grow_album(turns, album, index)
    session = {
        "index": index,
        "date": variables["event_date"].isoformat(),
        "event_id": variables["event_id"],
        "event": variables["event"],
        "time_interval": variables.get("time_interval"),
        "experience_op": variables.get("experience_op"),
        "experience": variables.get("experience") or None,
        "turns": _TURNS.dump_python(turns, mode="json"),
    }
    update: dict[str, Any] = {
        "sessions": [session],
        "device_images": [d.model_dump(mode="json") for d in new_images],
        "image_requests": _unless_images_off(ctx, requests),
        **_accounting("session", completion, dialogue.PROMPT, version),
    }
    if episode.summarize_sessions:
        summary, extra, summary_version = await summarizer.summarize_session(
            ctx.role("summarizer", state["seed"], index),
            variables["name"],
            variables["date"],
            turns,
        )
        session["summary"] = summary
        update["usage"] = {
            "session": completion.usage.as_dict(),
            "summarizer": extra.usage.as_dict(),
        }
        update["prompt_versions"][summarizer.PROMPT] = summary_version
    return update


def more_sessions(state: EpisodeState) -> str:
    """Route: another session until ``n_sessions`` are written."""
    return "session" if len(state.get("sessions", [])) < state["n_sessions"] else "done"
