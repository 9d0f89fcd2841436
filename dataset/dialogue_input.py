"""Reading the dialogues people already have: JSON, JSONL, a folder of JSON files, Parquet,
or a Hugging Face dataset folder (``save_to_disk``), through a
:class:`~mcu_sim.dataset.dialogue_mapping.DialogueMapping`.

Records stream one at a time (Parquet in batches, JSONL by line). A record that cannot be
read or does not fit the mapping becomes an :class:`InputError` with its position and the
key at fault; the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcu_sim.dataset.dialogue_mapping import DialogueMapping, RecordError, read_dialogue

MAX_RECORD_BYTES = 50_000_000


@dataclass(frozen=True)
class InputError:
    position: int  # over the whole input, from 0
    input: str
    key: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "input": self.input,
            "key": self.key,
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"record {self.position} ({self.input}): {self.key}: {self.message}"


@dataclass(frozen=True)
class RawRecord:
    input: str  # the file the record is in
    position: int  # over the whole input
    record: Any = None
    error: str | None = None  # could not even be parsed


def _json_file(path: Path, start: int) -> Iterator[RawRecord]:
    if path.stat().st_size > MAX_RECORD_BYTES:
        yield RawRecord(str(path), start, error=f"file over {MAX_RECORD_BYTES} bytes")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        yield RawRecord(str(path), start, error=f"not JSON: {exc}")
        return
    for offset, record in enumerate(data if isinstance(data, list) else [data]):
        yield RawRecord(str(path), start + offset, record)


def _jsonl_file(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        position = 0
        for line in lines:
            if not line.strip():
                continue
            if len(line) > MAX_RECORD_BYTES:
                yield RawRecord(str(path), position, error=f"line over {MAX_RECORD_BYTES} bytes")
            else:
                try:
                    yield RawRecord(str(path), position, json.loads(line))
                except ValueError as exc:
                    yield RawRecord(str(path), position, error=f"not JSON: {exc}")
            position += 1


def _parquet(path: Path, start: int = 0) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    position = start
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield RawRecord(str(path), position, row)
            position += 1


def _hf_folder(path: Path, split: str | None) -> Iterator[RawRecord]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        name = split or ("train" if "train" in names else names[0])
        if name not in loaded:
            raise ValueError(f"{path} has no split {name!r} (splits: {', '.join(names)})")
        loaded = loaded[name]
    for position, row in enumerate(loaded):
        yield RawRecord(str(path), position, row)


def is_hf_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def iter_raw(path: Path, split: str | None = None) -> Iterator[RawRecord]:
    """Every record of the input, in order, with its position."""
    if path.is_dir():
        if is_hf_folder(path):
            yield from _hf_folder(path, split)
            return
        position = 0
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".parquet"))
        if not files:
            raise ValueError(f"{path} holds no .json, .jsonl or .parquet files")
        for file in files:
            for raw in iter_raw(file) if file.suffix != ".json" else _json_file(file, 0):
                yield RawRecord(raw.input, position, raw.record, raw.error)
                position += 1
        return
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix == ".jsonl":
        yield from _jsonl_file(path)
    elif path.suffix == ".parquet":
        yield from _parquet(path)
    elif path.suffix == ".json":
        yield from _json_file(path, 0)
    else:
        raise ValueError(f"input {path}: expected .json, .jsonl, .parquet or a folder")


def iter_dialogues(
    path: Path, mapping: DialogueMapping, split: str | None = None
) -> Iterator[dict[str, Any] | InputError]:
    """Normalized dialogues (see :func:`read_dialogue`) with ``position`` and ``input``, or
    an :class:`InputError` for a record that does not fit."""
    for raw in iter_raw(Path(path), split):
        if raw.error is not None:
            yield InputError(raw.position, raw.input, "(record)", raw.error)
            continue
        try:
            dialogue = read_dialogue(raw.record, mapping, raw.position)
        except RecordError as exc:
            yield InputError(raw.position, raw.input, exc.key, exc.message)
            continue
        yield {"position": raw.position, "input": raw.input, **dialogue}
