"""Typed rows for the ``hf`` export: ``datasets.Features`` derived from the episode schema.

The nested columns (``sessions``, ``persona``, ``image_requests``, ...) are declared once, by
walking :class:`~mcu_sim.personas.schema.Episode`'s JSON schema, so a field added to the
schema becomes a typed column without touching this module:

- an object with properties is a struct, an array a ``datasets.List``, a date ``date32``, a
  time of day ``time64[us]``,
  an integer ``int64``, a number ``float64``, a boolean ``bool``, an enum or literal a string;
- an optional value is its type, nullable;
- what a fixed Arrow type cannot hold is JSON text (``json.loads`` it): a free-keyed
  mapping (``seeds``, ``scores``, ``usage``) and a union of different kinds (an album id or
  ``"new"``); a value that is already text stays as it is;
- every :class:`~mcu_sim.personas.schema.ImageRecord` keeps its fields and gains
  ``image``, a ``datasets.Image`` with the file's bytes embedded (and its path relative to the
  export), so ``load_dataset`` returns PIL images wherever the folder is moved.

The features ride in the Parquet schema's ``huggingface`` metadata
(``Features.arrow_schema``), which ``datasets`` and the Hub viewer read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcu_sim.personas.schema import Episode, ImageRecord

IMAGE_KEY = "image"
ROWS_PER_GROUP = 100
GROUP_BYTES = 64 * 2**20  # embedded images: keep a row group's memory bounded
SHARD_ROWS = 10_000
SHARD_BYTES = 500 * 2**20  # Hugging Face data files stay a few hundred MB


def _feature(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    import datasets

    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        feature = _feature(defs[name], defs)
        if name == ImageRecord.__name__:
            if IMAGE_KEY in feature:
                raise ValueError(f"ImageRecord has a field {IMAGE_KEY!r}: rename IMAGE_KEY")
            feature[IMAGE_KEY] = datasets.Image()
        return feature
    if len(node.get("allOf", ())) == 1:  # how some pydantic versions wrap a described $ref
        return _feature(node["allOf"][0], defs)
    if "anyOf" in node:
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        if len(options) == 1:
            return _feature(options[0], defs)
        return datasets.Value("string")
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties")
        if not properties:
            return datasets.Value("string")
        return {name: _feature(sub, defs) for name, sub in properties.items()}
    if kind == "array":
        return datasets.List(_feature(node.get("items", {}), defs))
    if kind == "integer":
        return datasets.Value("int64")
    if kind == "number":
        return datasets.Value("float64")
    if kind == "boolean":
        return datasets.Value("bool")
    if kind == "string" and node.get("format") == "date":
        return datasets.Value("date32")
    if kind == "string" and node.get("format") == "time":
        return datasets.Value("time64[us]")
    return datasets.Value("string")


def model_features(model: type[BaseModel]) -> dict[str, Any]:
    """Every top-level field of a pydantic model as a ``datasets`` feature."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    return {name: _feature(node, defs) for name, node in schema["properties"].items()}


@cache
def nested_features() -> dict[str, Any]:
    """The episode schema's fields as ``datasets`` features (derived once per process)."""
    return model_features(Episode)


def episode_features(summary: Any) -> Any:
    """``datasets.Features``: the ``summary`` columns (a ``pyarrow.Schema`` of flat
    columns made for filtering) and every episode field, typed; where a summary column has
    an episode field's name (``narrative``), the episode's field wins, so nothing is lost."""
    import datasets

    features = dict(datasets.Features.from_arrow_schema(summary))
    features.update(nested_features())
    return datasets.Features(features)


class Encoder:
    """Turns episodes into rows of :func:`episode_features`, reading image files under
    ``root`` (paths in the episode are relative to it) and counting the bytes embedded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bytes = 0

    def row(self, episode: Episode, summary_row: dict[str, Any], features: Any) -> dict[str, Any]:
        data = episode.model_dump(mode="json")
        row = {name: summary_row.get(name) for name in features}
        for name in nested_features():
            row[name] = self.value(data.get(name), features[name])
        return row

    def value(self, value: Any, feature: Any) -> Any:
        import datasets

        if value is None:
            return None
        if isinstance(feature, dict):
            out = {
                key: self.value(value.get(key), sub)
                for key, sub in feature.items()
                if not isinstance(sub, datasets.Image)
            }
            for key, sub in feature.items():
                if isinstance(sub, datasets.Image):
                    out[key] = self.image(value.get("path"))
            return out
        if isinstance(feature, datasets.List):
            return [self.value(item, feature.feature) for item in value]
        dtype = getattr(feature, "dtype", "string")
        if dtype == "string":
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if dtype == "date32":
            return dt.date.fromisoformat(value)
        if dtype == "time64[us]":
            return dt.time.fromisoformat(value)
        return value

    def image(self, path: str | None) -> dict[str, Any] | None:
        """The ``datasets.Image`` storage ``{"bytes", "path"}``; ``None`` if the file is
        missing (an image that never left the run cannot be embedded)."""
        file = self.root / path if path else None
        if file is None or not file.is_file():
            return None
        data = file.read_bytes()
        self.bytes += len(data)
        return {"bytes": data, "path": path}


def write_shard(
    rows: Iterator[dict[str, Any]], encoder: Encoder, features: Any, target: Path
) -> tuple[int, bool]:
    """Write rows from ``rows`` into one Parquet file until it holds ``SHARD_ROWS`` rows or
    ``SHARD_BYTES`` of images (the rest stay in the iterator). Returns the rows written and
    whether the shard filled up (else ``rows`` ran out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features.arrow_schema
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    written, start, full = 0, encoder.bytes, False
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batch: list[dict[str, Any]] = []
            group_start = encoder.bytes
            for row in rows:
                batch.append(row)
                full = encoder.bytes - start >= SHARD_BYTES or written + len(batch) >= SHARD_ROWS
                if (
                    full
                    or len(batch) >= ROWS_PER_GROUP
                    or encoder.bytes - group_start >= GROUP_BYTES
                ):
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    written, batch, group_start = written + len(batch), [], encoder.bytes
                if full:
                    break
            if batch or written == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written += len(batch)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written, full
