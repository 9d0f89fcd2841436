"""``mcu import``: released STARK records (``stark-hf`` Parquet, ``stark-json`` arrays) into
a run directory of validated episodes that the viewer, filters and report read.

Imported data is untrusted. Every record is checked on its own: one that is too large, names
an image outside the input folder, or fails the episode schema is reported with its position
and left out; the others are kept. Images present beside the input are copied into the run
(``images/<episode id>/``) with their hash and size; a sharing moment without its image is
kept, marked unaligned with the reason. What a layout does not hold is filled as
``docs/stark_layouts.md`` says (an album photo's description in stark-hf, the narrative text).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcu_sim.dataset.stark_common import (
    MODULE_FROM_STARK,
    NEW_IMAGE,
    RELATION_FROM_STARK,
    RecordError,
    episode_id_from_stark,
)
from mcu_sim.personas.schema import ASSISTANT, Episode
from mcu_sim.runner.outputs import RunDir, atomic_write_json

IMPORT_FORMATS = ("stark-hf", "stark-json")
_ASSISTANT_NAMES = {"ai assistant", "assistant", "ai", "ai_assistant", "aiassistant"}
_DATE = re.compile(r"^(\d{4})[./-](\d{1,2})[./-](\d{1,2})")
_PIL_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": len(self.imported),
            "refused": [{"position": p, "reason": r} for p, r in self.refused],
        }


def _records(fmt: str, path: Path) -> Iterator[tuple[dict[str, Any] | None, str, str]]:
    """(neutral record or None, position, reason when None) for each input record."""
    if fmt == "stark-hf":
        from mcu_sim.dataset.stark_hf import iter_rows, record_from_row

        for row, root, position in iter_rows(path):
            try:
                yield record_from_row(row, root, position), position, ""
            except RecordError as exc:
                yield None, position, str(exc)
    else:
        from mcu_sim.dataset.stark_json import iter_items, record_from_json

        for item, _root, position in iter_items(path):
            try:
                yield record_from_json(item, position), position, ""
            except RecordError as exc:
                yield None, position, str(exc)


def import_stark(fmt: str, source: Path, out: Path) -> ImportReport:
    """Read ``source`` (a file or folder) in ``fmt`` into the run directory ``out``."""
    if fmt not in IMPORT_FORMATS:
        raise ValueError(
            f"unknown import format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}"
        )
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    run = RunDir(out)
    run.create()
    report = ImportReport()
    seen: set[str] = set()
    for record, position, reason in _records(fmt, source):
        if record is None:
            report.refused.append((position, reason))
            continue
        try:
            episode, files = build_episode(record, fmt)
        except RecordError as exc:
            report.refused.append((position, str(exc)))
            continue
        except ValidationError as exc:
            report.refused.append((position, _brief(exc)))
            continue
        if episode.episode_id in seen or run.is_finished(episode.episode_id):
            report.refused.append((position, f"episode id {episode.episode_id} is already there"))
            continue
        seen.add(episode.episode_id)
        for src, relative in files:
            dest = out / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        run.write_episode(episode.model_dump(mode="json"))
        report.imported.append(episode.episode_id)
    atomic_write_json(out / "import_report.json", {"format": fmt, **report.as_dict()})
    return report


def _brief(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(x) for x in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "does not fit the episode schema: " + "; ".join(parts)


def _date(value: Any, position: str) -> dt.date:
    match = _DATE.match(str(value or "").strip())
    if not match:
        raise RecordError(position, f"date {str(value)[:40]!r} is not YYYY.MM.DD")
    try:
        return dt.date(*(int(g) for g in match.groups()))
    except ValueError as exc:
        raise RecordError(position, f"date {value!r}: {exc}") from None


def _age_group(age: int) -> str:
    from mcu_sim.personas import lexicons

    for group in lexicons.age_groups():
        if group.low <= age <= group.high:
            return group.label
    low = min(age // 10 * 10, 90)
    return f"{low:02d}-{low + 9:02d}"


def _image(path: Path | None, module: str | None, episode_id: str, name: str):
    """An ImageRecord for a file found beside the input, or ``(None, reason)``."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return None, "imported: the image was not found beside the input"
    try:
        with Image.open(path, formats=_PIL_FORMATS) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None, "imported: the image file is not a readable picture"
    relative = f"images/{episode_id}/{name}{path.suffix.lower()}"
    record = {
        "path": relative,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "width": width,
        "height": height,
        "module": MODULE_FROM_STARK.get(module or "", module or "imported"),
    }
    return (record, path), None


def _keywords(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    text = str(value or "").strip()
    return [k.strip() for k in text.split(",") if k.strip()] if text else []


def _speaker(value: Any, name: str) -> str:
    text = str(value or "").strip()
    if text.lower() in _ASSISTANT_NAMES:
        return ASSISTANT
    return name if text.lower() in ("user", name.lower()) else text


def build_episode(rec: dict[str, Any], fmt: str) -> tuple[Episode, list[tuple[Path, str]]]:
    """Validate one neutral record into an Episode; also the image files to copy."""
    position = rec["position"]
    unique_id = rec["unique_id"] or f"{position}"
    episode_id = episode_id_from_stark(unique_id)
    name = rec["name"].strip()
    try:
        age = int(str(rec["age"]).strip())
    except ValueError:
        raise RecordError(position, f"age {rec['age'][:20]!r} is not a number") from None
    files: list[tuple[Path, str]] = []

    def attach(path: Path | None, module: str | None, label: str) -> tuple[Any, str | None]:
        found, reason = _image(path, module, episode_id, label)
        if found is None:
            return None, reason
        record, source = found
        files.append((source, record["path"]))
        return record, None

    relation = rec["persona_commonsense_relation"]
    relation = RELATION_FROM_STARK.get(relation, relation)
    form = rec["narrative_sentence_form"]
    events = []
    for n, event in enumerate(rec["events"] if isinstance(rec["events"], list) else []):
        if not isinstance(event, dict):
            raise RecordError(position, f"event {n + 1} is not an object")
        cause = event.get("caused_by") or {}
        events.append(
            {
                "id": event.get("id"),
                "event": event.get("event"),
                "date": _date(event.get("date"), f"{position} event {n + 1}"),
                "caused_by": {
                    "id": cause.get("caused_by:id"),
                    "time_interval": cause.get("caused_by:time_interval"),
                    "experience_op": cause.get("caused_by:experience_op"),
                    "experience": cause.get("caused_by:experience"),
                }
                if isinstance(cause, dict) and cause
                else None,
            }
        )
    by_id = {str(e["id"]): e for e in events}
    album = [
        {
            "id": i + 1,
            "description": a["description"] or f"album photo {i + 1}",
            "added_in_session": 0,
        }
        for i, a in enumerate(rec["album"])
    ]
    requests: list[dict[str, Any]] = []
    for i, entry in enumerate(rec["album"]):
        image, reason = attach(entry["image"], entry["module"], f"album-{i + 1}")
        if image is not None:
            requests.append(
                {
                    "id": f"album-{i + 1}",
                    "origin": "album",
                    "device_image_id": i + 1,
                    "description": album[i]["description"],
                    "status": "aligned",
                    "module": image["module"],
                    "image": image,
                }
            )
    sessions = []
    for n, session in enumerate(rec["sessions"], start=1):
        where = f"{position} session {n}"
        event = by_id.get(str(n))
        if event is None:
            raise RecordError(where, f"has no event with id {n} in the event sequence")
        turns = []
        for t_index, turn in enumerate(session["turns"], start=1):
            try:
                turn_id = int(turn["id"])
            except (TypeError, ValueError):
                turn_id = t_index
            entry: dict[str, Any] = {
                "id": turn_id,
                "speaker": _speaker(turn["speaker"], name),
                "utterance": str(turn["utterance"] or ""),
            }
            share = turn["sharing"]
            if isinstance(share, dict):
                request_id = f"s{n}-t{turn_id}"
                source = str(share.get("image_source") or "").strip().lower()
                ref = share.get("image_id_from_mobile", "")
                description = str(share.get("image_description") or "")
                mobile: int | str | None = None
                if source == "mobile":
                    if str(ref).strip() == NEW_IMAGE:
                        mobile = "new"
                        album.append(
                            {
                                "id": len(album) + 1,
                                "description": description,
                                "added_in_session": n,
                                "request_id": request_id,
                            }
                        )
                    elif str(ref).strip().isdigit():
                        mobile = int(str(ref).strip()) + 1
                        if not description and mobile <= len(album):
                            description = album[mobile - 1]["description"]
                    else:
                        mobile = ref if ref not in ("", None) else None
                entry["sharing"] = {
                    "rationale": str(share.get("rationale") or ""),
                    "image_description": description,
                    "image_source": source,
                    "keywords": _keywords(share.get("keywords")),
                    "image_id_from_mobile": mobile,
                }
                entry["request_id"] = request_id
                image, reason = attach(turn["image"], turn["module"], request_id)
                requests.append(
                    {
                        "id": request_id,
                        "origin": "sharing",
                        "session": n,
                        "turn_id": turn_id,
                        "device_image_id": mobile if isinstance(mobile, int) else None,
                        "description": description,
                        "keywords": entry["sharing"]["keywords"],
                        "image_source": source or None,
                        "status": "aligned" if image else "unaligned",
                        "reason": reason if fmt == "stark-hf" else "stark-json holds no images",
                        "module": image["module"] if image else None,
                        "image": image,
                    }
                )
                if image:
                    requests[-1]["reason"] = None
            turns.append(entry)
        cause = event["caused_by"]
        sessions.append(
            {
                "index": n,
                "date": event["date"],
                "event_id": n,
                "event": session["event"] or event["event"],
                "time_interval": session["time_interval"] or None,
                "experience_op": cause["experience_op"] if cause else None,
                "experience": session["experience"] or None,
                "turns": turns,
            }
        )
    face, face_reason = attach(rec["face_image"], "face", "face")
    inference = rec["persona_commonsense_inference"] or form
    data = {
        "episode_id": episode_id,
        "seeds": {},
        "config_fingerprint": f"imported:{fmt}",
        "demographics": {
            "age_group": _age_group(age),
            "age": age,
            "gender": rec["gender"].strip().lower(),
            "birthplace": rec["birthplace"],
            "residence": rec["residence"],
            "name": name,
        },
        "face": {
            "prompt": rec["human_face_description"],
            "attributes": {},
            "seed": 0,
            "status": "generated" if face else "unavailable",
            "reason": None if face else face_reason,
            "image": face,
        },
        "persona_category": rec["persona_category"],
        "persona_entity_key": rec["persona_entity_key"],
        "persona": [
            {
                "sentence": rec["persona_sentence"],
                "relation": rec["persona_category"],
                "entity": {"key": rec["persona_entity_key"], "value": rec["persona_entity_value"]},
            }
        ],
        "commonsense": [{"relation": relation, "text": inference}],
        "narrative": {"relation": relation, "sentence_form": form, "narrative": form},
        "events": {"events": events},
        "device_images": album,
        "sessions": sessions,
        "image_requests": requests,
    }
    return Episode.model_validate(data), files
