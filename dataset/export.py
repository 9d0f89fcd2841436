"""Export finished episodes: a Hugging Face dataset folder, Parquet, the two released STARK
layouts (``stark-hf``, ``stark-json``; see ``docs/stark_layouts.md``), our flat JSONL
(``flat-jsonl``), one JSONL file of whole episodes, or the training formats ``llava`` and
``sharegpt`` (``dataset/training.py``).

Exports stream episode by episode (a 100K-episode run never sits in memory) and appear
atomically: a file is written under a temporary name and renamed; a folder is built beside
its target and renamed into place. Episodes the filters marked as removed (``status`` is
``filtered``) are left out unless ``include_filtered``; items the filters marked (an unsafe
session, an NSFW or misaligned image) are left out unless ``keep_marked``
(:mod:`mcu_sim.dataset.marks`); the ``removals`` field names them either way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcu_sim.dataset.files import link_file, replace_dir, write_lines
from mcu_sim.dataset.marks import without_marked
from mcu_sim.personas.schema import DATE_FORMAT, Episode
from mcu_sim.runner.outputs import RunDir

FORMATS = ("hf", "parquet", "stark-hf", "stark-json", "flat-jsonl", "jsonl", "llava", "sharegpt")
DEFAULT_TARGETS = {
    "hf": "export/hf",
    "parquet": "export/episodes.parquet",
    "stark-hf": "export/stark-hf",
    "stark-json": "export/stark.json",
    "flat-jsonl": "export/flat.jsonl",
    "jsonl": "export/episodes.jsonl",
    "llava": "export/llava",
    "sharegpt": "export/sharegpt",
}
RENAMED = {
    "stark": "'stark' was our own flat JSONL and is now 'flat-jsonl'; the released STARK "
    "layouts are 'stark-hf' (the Hugging Face stark-dialogue Parquet) and 'stark-json' "
    "(the generation code's JSON)",
}


def _stark_date(iso: str) -> str:
    import datetime as dt

    return dt.date.fromisoformat(iso).strftime(DATE_FORMAT)


def to_flat(episode: Episode) -> dict[str, Any]:
    """One episode as our flat JSONL record. It borrows STARK's field names but is not a
    released layout: for those, see ``stark_hf`` and ``stark_json``."""
    demo = episode.demographics
    if demo is None or episode.kind == "augmented":
        raise ValueError(
            f"{episode.episode_id} is an augmented dialogue (no simulated person, which the "
            "STARK layout is built around): export it with --format jsonl, parquet or hf"
        )
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


def iter_episodes(
    run_dir: Path, include_filtered: bool = False, keep_marked: bool = True
) -> Iterator[Episode]:
    """Finished episodes in id order, validated; filtered ones only when asked; marked items
    left out unless ``keep_marked``."""
    run = RunDir(run_dir)
    if not run.episodes.is_dir():
        raise FileNotFoundError(f"{run_dir} has no episodes/ folder: not a run directory")
    for episode_id in run.finished_ids():
        episode = Episode.model_validate(run.read_episode(episode_id))
        if include_filtered or episode.status != "filtered":
            yield episode if keep_marked else without_marked(episode)


def load_episodes(run_dir: Path, include_filtered: bool = True) -> list[Episode]:
    return list(iter_episodes(run_dir, include_filtered))


def export_run(
    run_dir: Path,
    fmt: str,
    out: Path | None = None,
    *,
    include_filtered: bool = False,
    keep_marked: bool = False,
    unit: str = "session",
    model_speaker: str = "assistant",
) -> Path:
    """Write the export; return its path (a file, or a folder for ``hf``, ``stark-hf`` and
    the training formats). ``unit`` and ``model_speaker`` apply to ``llava`` and
    ``sharegpt`` (see :func:`~mcu_sim.dataset.training.write_training`)."""
    if fmt in RENAMED:
        raise ValueError(RENAMED[fmt])
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / DEFAULT_TARGETS[fmt]
    episodes = iter_episodes(run_dir, include_filtered, keep_marked)
    if fmt == "stark-hf":
        from mcu_sim.dataset.stark_hf import write_stark_hf

        write_stark_hf(
            run_dir, lambda: iter_episodes(run_dir, include_filtered, keep_marked), target
        )
    elif fmt == "stark-json":
        from mcu_sim.dataset.stark_json import write_stark_json

        write_stark_json(episodes, target)
    elif fmt in ("llava", "sharegpt"):
        from mcu_sim.dataset.training import write_training

        write_training(run_dir, episodes, target, fmt, unit=unit, model_speaker=model_speaker)
    elif fmt == "flat-jsonl":
        write_lines(target, (json.dumps(to_flat(e), ensure_ascii=False) for e in episodes))
    elif fmt == "jsonl":
        write_lines(target, (e.model_dump_json() for e in episodes))
    elif fmt == "parquet":
        write_parquet(episodes, target)
    else:
        write_hf_folder(run_dir, target, include_filtered, keep_marked)
    return target


# ---------------------------------------------------------------- Parquet

# Columns holding free-form nested data are JSON text (decode with json.loads): their
# shapes vary between episodes (scores, attempts), which a fixed Arrow struct cannot hold.
JSON_COLUMNS = (
    "seeds",
    "demographics",
    "face",
    "persona",
    "commonsense",
    "events",
    "device_images",
    "sessions",
    "image_requests",
    "removals",
    "usage",
    "prompt_versions",
)
ROWS_PER_GROUP = 500


def parquet_schema() -> Any:
    import pyarrow as pa

    scalar = [
        ("episode_id", pa.string()),
        ("schema_version", pa.string()),
        ("status", pa.string()),
        ("config_fingerprint", pa.string()),
        ("name", pa.string()),
        ("age", pa.int32()),
        ("gender", pa.string()),
        ("birthplace", pa.string()),
        ("residence", pa.string()),
        ("persona_category", pa.string()),
        ("persona_sentences", pa.list_(pa.string())),
        ("narrative", pa.string()),
        ("n_sessions", pa.int32()),
        ("n_turns", pa.int32()),
        ("n_image_requests", pa.int32()),
        ("n_images_aligned", pa.int32()),
        ("image_paths", pa.list_(pa.string())),
    ]
    return pa.schema(scalar + [(name, pa.string()) for name in JSON_COLUMNS])


def image_paths(episode: Episode) -> list[str]:
    """Every image file an episode refers to (face, aligned images and alternatives)."""
    face = episode.face.image if episode.face else None
    paths = [face.path] if face else []
    for request in episode.image_requests:
        paths += [img.path for img in ([request.image] if request.image else [])]
        paths += [img.path for img in request.alternatives]
    return list(dict.fromkeys(paths))


def parquet_row(episode: Episode) -> dict[str, Any]:
    data = episode.model_dump(mode="json")
    demo = episode.demographics
    person = {  # an augmented dialogue has no simulated person: these stay empty
        "name": demo.name if demo else None,
        "age": demo.age if demo else None,
        "gender": demo.gender if demo else None,
        "birthplace": demo.birthplace if demo else None,
        "residence": demo.residence if demo else None,
    }
    row = {
        "episode_id": episode.episode_id,
        "schema_version": episode.schema_version,
        "status": episode.status,
        "config_fingerprint": episode.config_fingerprint,
        **person,
        "persona_category": episode.persona_category,
        "persona_sentences": [a.sentence for a in episode.persona or []],
        "narrative": episode.narrative.narrative if episode.narrative else None,
        "n_sessions": len(episode.sessions),
        "n_turns": sum(len(s.turns) for s in episode.sessions),
        "n_image_requests": len(episode.image_requests),
        "n_images_aligned": sum(r.status == "aligned" for r in episode.image_requests),
        "image_paths": image_paths(episode),
    }
    for name in JSON_COLUMNS:
        row[name] = json.dumps(data[name], ensure_ascii=False)
    return row


def write_parquet(episodes: Iterator[Episode], target: Path) -> int:
    """One row per episode, written in row groups of ``ROWS_PER_GROUP``; returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batch: list[dict[str, Any]] = []
            for episode in episodes:
                batch.append(parquet_row(episode))
                if len(batch) == ROWS_PER_GROUP:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    rows, batch = rows + len(batch), []
            if batch or rows == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows


# ---------------------------------------------------------------- Hugging Face folder


def write_hf_folder(
    run_dir: Path, target: Path, include_filtered: bool, keep_marked: bool = False
) -> None:
    """``data/train-*.parquet`` with typed nested columns and embedded images
    (``dataset/hf_features.py``), the image files beside them, and a README.md card.

    ``datasets.load_dataset(str(target))`` reads it (the card's ``configs`` names the
    files). Images are hard-linked from the run (copied across file systems).
    """
    from mcu_sim.dataset.card import CardStats, dataset_card
    from mcu_sim.dataset.hf_features import Encoder, episode_features, write_shard

    target.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        stats = CardStats()
        import pyarrow as pa

        summary = pa.schema([f for f in parquet_schema() if f.name not in JSON_COLUMNS])
        features = episode_features(summary)
        encoder = Encoder(run_dir)

        def rows() -> Iterator[dict[str, Any]]:
            for episode in iter_episodes(run_dir, include_filtered=True, keep_marked=keep_marked):
                if episode.status == "filtered" and not include_filtered:
                    stats.excluded += 1
                    continue
                stats.add(episode)
                for path in image_paths(episode):
                    link_file(run_dir / path, built / path)
                flat = {k: v for k, v in parquet_row(episode).items() if k not in JSON_COLUMNS}
                yield encoder.row(episode, flat, features)

        stream = rows()
        written: list[Path] = []
        while True:
            path = built / "data" / f"part-{len(written):05d}.parquet"
            count, full = write_shard(stream, encoder, features, path)
            if count == 0 and written:
                path.unlink()
                break
            written.append(path)
            if not full:
                break
        for number, path in enumerate(written):
            path.rename(path.with_name(f"train-{number:05d}-of-{len(written):05d}.parquet"))
        card = dataset_card(run_dir, stats, include_filtered)
        (built / "README.md").write_text(card, encoding="utf-8")
        replace_dir(built, target)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
