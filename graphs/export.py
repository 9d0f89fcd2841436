"""Export finished episodes: STARK's released layout, or one JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcu_sim.graphs.outputs import RunDir, atomic_write_text
from mcu_sim.personas.schema import DATE_FORMAT, Episode


def _stark_date(iso: str) -> str:
    import datetime as dt

    return dt.date.fromisoformat(iso).strftime(DATE_FORMAT)


def to_stark(episode: Episode) -> dict[str, Any]:
    """One episode in the field layout of the released STARK data (per-session dialogues)."""
    demo = episode.demographics
    requests = {r.id: r for r in episode.image_requests}
    sessions = {}
    for session in episode.sessions:
        dialogue = []
        for turn in session.turns:
            entry: dict[str, Any] = {
                "utterance_id": turn.id,
                "speaker": turn.speaker,
                "utterance": turn.utterance,
                "sharing_info": {},
            }
            if turn.sharing:
                request = requests.get(turn.request_id or "")
                entry["sharing_info"] = {
                    "rationale": turn.sharing.rationale,
                    "image_description": turn.sharing.image_description,
                    "image_source": turn.sharing.image_source,
                    "keywords": turn.sharing.keywords,
                    "image_id_from_mobile": (
                        "new added image"
                        if turn.sharing.image_id_from_mobile == "new"
                        else turn.sharing.image_id_from_mobile or ""
                    ),
                    "image_url": request.image.path if request and request.image else "",
                }
            dialogue.append(entry)
        sessions[f"session{session.index}"] = {
            "date": _stark_date(session.date.isoformat()),
            "event": session.event,
            "time_interval": session.time_interval or "",
            "experience": session.experience or "",
            "dialogue": dialogue,
        }
    return {
        "unique_id": episode.episode_id,
        "name": demo.name,
        "age": str(demo.age),
        "gender": demo.gender,
        "birthplace": demo.birthplace,
        "residence": demo.residence,
        "face_description": episode.face.prompt,
        "persona_category": episode.persona_category,
        "persona_sentence": [a.sentence for a in episode.persona],
        "persona_entity_key": episode.persona_entity_key,
        "persona_entity_value": [a.entity.value for a in episode.persona],
        "commonsense_relation": [c.relation for c in episode.commonsense],
        "commonsense_inference": [c.text for c in episode.commonsense],
        "narrative": episode.narrative.narrative,
        "temporal_event_sequence": [
            {
                "id": e.id,
                "event": e.event,
                "date": e.date.strftime(DATE_FORMAT),
                "caused_by": (
                    {
                        "caused_by:id": e.caused_by.id,
                        "caused_by:time_interval": e.caused_by.time_interval,
                        "caused_by:experience_op": e.caused_by.experience_op,
                        "caused_by:experience": e.caused_by.experience,
                    }
                    if e.caused_by
                    else {}
                ),
            }
            for e in episode.events.events
        ],
        "mobile_device": [
            {"image_id": d.id, "image_description": d.description, "categories": d.categories}
            for d in episode.device_images
        ],
        **sessions,
    }


def load_episodes(run_dir: Path) -> list[Episode]:
    run = RunDir(run_dir)
    return [
        Episode.model_validate(json.loads(run.episode_path(i).read_text()))
        for i in run.finished_ids()
    ]


def export_run(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    episodes = load_episodes(run_dir)
    if fmt == "stark":
        target = out or run_dir / "export" / "stark.jsonl"
        lines = [json.dumps(to_stark(e), ensure_ascii=False) for e in episodes]
    elif fmt == "jsonl":
        target = out or run_dir / "export" / "episodes.jsonl"
        lines = [e.model_dump_json() for e in episodes]
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose stark or jsonl")
    atomic_write_text(target, "".join(line + "\n" for line in lines))
    return target
