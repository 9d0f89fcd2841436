"""The released Hugging Face layout of STARK (``passing2961/stark-dialogue``): one flat row
per episode, per-session columns named ``session<n>:<field>``, per-turn values as JSON text
lists, image keys (``face:`` and ``url:`` prefixes) naming files written beside the Parquet.

Written: ``<out>/stark.parquet``, ``<out>/faces/<key>.<ext>``, ``<out>/images/<key>.<ext>``
and ``<out>/images-url/<key>.<ext>``. Column by column, with what could and could not be
confirmed against the release, in ``docs/stark_layouts.md``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mcu_sim.dataset.files import link_file, replace_dir
from mcu_sim.dataset.stark_common import (
    MAX_LITERAL,
    MAX_SESSIONS,
    MAX_TURNS,
    MODULE_TO_STARK,
    RecordError,
    bounded_text,
    inside,
    safe_key,
    stark_view,
)
from mcu_sim.personas.schema import Episode, ImageRecord

PARQUET_NAME = "stark.parquet"
MIN_SESSION_COLUMNS = 6  # the release has session1..session6; shorter episodes leave them ""
TOP_COLUMNS = (
    "index",
    "number_of_session",
    "name",
    "age",
    "gender",
    "birthplace",
    "residence",
    "human_face_description",
    "human_face_image_key",
    "persona_category",
    "persona_sentence",
    "persona_entity_key",
    "persona_entity_value",
    "persona_commonsense_relation",
    "persona_commonsense_inference",
    "narrative_sentence_form",
    "temporal_event_sequence",
)
SESSION_SCALARS = ("date", "event", "time_interval", "experience")
SESSION_LISTS = (
    "device_images_key",
    "device_images_module_name",
    "speakers",
    "utterances",
    "rationales",
    "image_descriptions",
    "image_sources",
    "keywords",
    "image_id_from_mobile",
    "images_key",
    "images_module_name",
)
FOLDERS = {"face:": "faces", "url:": "images-url", "": "images"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def columns(n_sessions: int) -> list[str]:
    names = list(TOP_COLUMNS)
    for n in range(1, max(n_sessions, MIN_SESSION_COLUMNS) + 1):
        names += [f"session{n}:{f}" for f in (*SESSION_SCALARS, *SESSION_LISTS)]
    return names


def image_key(image: ImageRecord | None, prefix: str = "") -> str:
    """A content key: the file's hash; web images (they carry a URL) take ``url:``."""
    if image is None:
        return ""
    if not prefix and image.source_url:
        prefix = "url:"
    return f"{prefix}{image.sha256[:32]}"


def _module(image: ImageRecord | None) -> str:
    return "" if image is None else MODULE_TO_STARK.get(image.module, image.module)


def hf_row(episode: Episode) -> tuple[dict[str, Any], list[tuple[str, ImageRecord]]]:
    """One row, and the images it names (key, record)."""
    view = stark_view(episode)
    images: list[tuple[str, ImageRecord]] = []

    def keyed(image: ImageRecord | None, prefix: str = "") -> str:
        key = image_key(image, prefix)
        if image is not None:
            images.append((key, image))
        return key

    row: dict[str, Any] = {
        "index": view["unique_id"],
        "number_of_session": len(view["sessions"]),
        "name": view["name"],
        "age": view["age"],
        "gender": view["gender"],
        "birthplace": view["birthplace"],
        "residence": view["residence"],
        "human_face_description": view["face_description"],
        "human_face_image_key": keyed(view["face_image"], "face:"),
        "persona_category": view["persona_category"],
        "persona_sentence": view["persona_sentence"],
        "persona_entity_key": view["persona_key"],
        "persona_entity_value": view["persona_value"],
        "persona_commonsense_relation": view["relation"],
        "persona_commonsense_inference": view["inference"],
        "narrative_sentence_form": view["sentence_form"],
        "temporal_event_sequence": json.dumps(view["events"], ensure_ascii=False),
    }
    for session in view["sessions"]:
        turns, album = session["turns"], session["album"]
        shared = [t["sharing"] or {} for t in turns]
        values: dict[str, list[Any]] = {
            "device_images_key": [keyed(a["image"]) for a in album],
            "device_images_module_name": [_module(a["image"]) for a in album],
            "speakers": [t["speaker"] for t in turns],
            "utterances": [t["utterance"] for t in turns],
            "rationales": [s.get("rationale", "") for s in shared],
            "image_descriptions": [s.get("image_description", "") for s in shared],
            "image_sources": [s.get("image_source", "") for s in shared],
            "keywords": [s.get("keywords", "") for s in shared],
            "image_id_from_mobile": [s.get("image_id_from_mobile", "") for s in shared],
            "images_key": [keyed(t["image"]) for t in turns],
            "images_module_name": [_module(t["image"]) for t in turns],
        }
        prefix = f"session{session['index']}:"
        for field in SESSION_SCALARS:
            row[prefix + field] = session[field]
        for field, items in values.items():
            row[prefix + field] = json.dumps(items, ensure_ascii=False)
    return row, images


def write_stark_hf(run_dir: Path, episodes: Callable[[], Iterable[Episode]], target: Path) -> int:
    """The Parquet and its images in a folder built beside ``target``, moved into place.

    ``episodes`` is called twice: once for the column count (the most sessions), once to
    stream the rows, so a large run never sits in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = columns(max((len(e.sessions) for e in episodes()), default=0))
    schema = pa.schema(
        [(n, pa.int64() if n == "number_of_session" else pa.string()) for n in names]
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        count = 0
        stream = iter(episodes())
        with pq.ParquetWriter(built / PARQUET_NAME, schema, compression="zstd") as writer:
            while True:
                rows = []
                for episode in itertools.islice(stream, 500):
                    row, images = hf_row(episode)
                    rows.append({n: row.get(n, "") for n in names})
                    for key, image in images:
                        _place(run_dir / image.path, built, key)
                if rows or count == 0:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
                if len(rows) < 500:
                    break
        replace_dir(built, target)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return count


def _place(source: Path, root: Path, key: str) -> None:
    prefix = next(p for p in ("face:", "url:", "") if key.startswith(p))
    link_file(source, root / FOLDERS[prefix] / f"{key[len(prefix) :]}{source.suffix.lower()}")


# ---------------------------------------------------------------- reading


def _json_list(value: Any, position: str, field: str) -> list[Any]:
    """A per-turn column: JSON text (what the release stores) or already a list."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    text = str(value)
    if len(text) > MAX_LITERAL:
        raise RecordError(position, f"{field} is {len(text):,} characters long")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(position, f"{field} is not a JSON list ({exc.msg})") from None
    if not isinstance(parsed, list):
        raise RecordError(position, f"{field} is not a list")
    return parsed


def find_image(root: Path, key: Any, position: str) -> tuple[Path | None, str]:
    """The file a key (or the first of a ranked list of keys) names, if present."""
    candidates = key if isinstance(key, list) else [key]
    first = ""
    for candidate in candidates:
        if not isinstance(candidate, str) or not candidate:
            continue
        prefix = next(p for p in ("face:", "url:", "") if candidate.startswith(p))
        name = safe_key(candidate[len(prefix) :], position)
        first = first or candidate
        folder = root / FOLDERS[prefix]
        for path in [folder / name, *(folder / f"{name}{s}" for s in IMAGE_SUFFIXES)]:
            if path.is_file() and inside(root, path):
                return path, candidate
    return None, first


def _at(items: list[Any], n: int) -> Any:
    return items[n] if n < len(items) else ""


def record_from_row(row: dict[str, Any], root: Path, position: str) -> dict[str, Any]:
    """One released row as the neutral record the importer validates."""
    skip = ("index", "number_of_session", "temporal_event_sequence")
    text = {k: bounded_text(row.get(k), position, k) for k in TOP_COLUMNS if k not in skip}
    n_sessions = int(row.get("number_of_session") or 0)
    if not 0 < n_sessions <= MAX_SESSIONS:
        raise RecordError(position, f"number_of_session {n_sessions} is out of range")
    face, _ = find_image(root, row.get("human_face_image_key") or "", position)
    events = _json_list(row.get("temporal_event_sequence"), position, "temporal_event_sequence")
    sessions = []
    first_album: list[dict[str, Any]] = []
    for n in range(1, n_sessions + 1):
        where = f"{position} session {n}"
        lists = {f: _json_list(row.get(f"session{n}:{f}"), where, f) for f in SESSION_LISTS}
        count = len(lists["speakers"])
        if count > MAX_TURNS:
            raise RecordError(where, f"{count:,} turns (limit {MAX_TURNS:,})")
        turns = []
        for i in range(count):
            source = _at(lists["image_sources"], i)
            image, key = find_image(root, _at(lists["images_key"], i), f"{where} turn {i + 1}")
            sharing = None
            if source:
                sharing = {
                    "rationale": _at(lists["rationales"], i),
                    "image_description": _at(lists["image_descriptions"], i),
                    "image_source": source,
                    "keywords": _at(lists["keywords"], i),
                    "image_id_from_mobile": _at(lists["image_id_from_mobile"], i),
                }
            turns.append(
                {
                    "id": i + 1,
                    "speaker": _at(lists["speakers"], i),
                    "utterance": _at(lists["utterances"], i),
                    "sharing": sharing,
                    "image": image,
                    "image_key": key,
                    "module": _at(lists["images_module_name"], i) or None,
                }
            )
        if n == 1:
            for i, key in enumerate(lists["device_images_key"]):
                image, _ = find_image(root, key, f"{where} album image {i}")
                module = _at(lists["device_images_module_name"], i) or None
                first_album.append({"description": "", "image": image, "module": module})
        sessions.append(
            {f: row.get(f"session{n}:{f}") or "" for f in SESSION_SCALARS} | {"turns": turns}
        )
    return {
        "position": position,
        "unique_id": str(row.get("index") or ""),
        **text,
        "face_image": face,
        "events": events,
        "album": first_album,
        "sessions": sessions,
    }


def iter_rows(path: Path) -> Iterator[tuple[dict[str, Any], Path, str]]:
    """Rows of a stark-dialogue Parquet file (or every ``*.parquet`` in a folder), with the
    folder their image keys are relative to and a position for messages."""
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    root = path if path.is_dir() else path.parent
    for file in files:
        parquet = pq.ParquetFile(file)
        number = 0
        for batch in parquet.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                number += 1
                yield row, root, f"{file.name} row {number}"
