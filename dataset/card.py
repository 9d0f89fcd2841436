"""The README.md dataset card of a Hugging Face export: a YAML header that ``datasets``
reads (data files, size, tags) and a body with counts, the generating config and the
licences of every image source."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mcu_sim.personas.schema import Episode
from mcu_sim.runner.outputs import RunDir

GENERATED_NOTE = {
    "face": "SDXL (+ SDXL-Lightning) portraits",
    "personalized_t2i": "PhotoMaker images of the episode's person",
}
MODEL_LICENCES = (
    "Generated images are subject to the licence of the model weights the run was "
    "configured with (the defaults: SDXL base and SDXL-Lightning under CreativeML Open "
    "RAIL++-M, PhotoMaker under Apache-2.0)."
)


@dataclass
class CardStats:
    """Counts gathered while the export streams the episodes."""

    episodes: int = 0
    excluded: int = 0
    sessions: int = 0
    turns: int = 0
    image_requests: int = 0
    aligned: Counter = field(default_factory=Counter)  # module -> images
    database_ids: Counter = field(default_factory=Counter)
    web_hosts: Counter = field(default_factory=Counter)
    faces: int = 0
    models: Counter = field(default_factory=Counter)

    def add(self, episode: Episode) -> None:
        self.episodes += 1
        self.sessions += len(episode.sessions)
        self.turns += sum(len(s.turns) for s in episode.sessions)
        self.image_requests += len(episode.image_requests)
        self.faces += episode.face is not None and episode.face.image is not None
        for request in episode.image_requests:
            image = request.image
            if request.status != "aligned" or image is None:
                continue
            self.aligned[image.module] += 1
            if image.db_id:
                self.database_ids[image.db_id] += 1
            if image.source_url:
                self.web_hosts[urlsplit(image.source_url).hostname or "?"] += 1


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M" if n < 1_000_000 else "1M<n<10M"


def database_licences(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``db_id -> {license, source, attribution}`` of the retrieval database the run used."""
    folder = ((config.get("images") or {}).get("retrieval") or {}).get("database")
    if folder:
        db_dir = Path(folder)
    else:
        db_dir = Path(__file__).resolve().parent.parent / "tools" / "data" / "image_db"
    items = db_dir / "items.jsonl"
    if not items.is_file():
        return {}
    licences = {}
    for line in items.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            licences[str(row.get("id"))] = {
                "license": row.get("license") or "unknown",
                "source": row.get("source") or "",
                "attribution": row.get("attribution") or "",
            }
    return licences


def _image_section(stats: CardStats, licences: dict[str, dict[str, str]]) -> list[str]:
    lines = ["## Images and their licences", ""]
    if not stats.aligned and not stats.faces:
        return [*lines, "This export holds no images (the run had image tools disabled).", ""]
    lines += ["| source | images | licence |", "| --- | --- | --- |"]
    if stats.faces:
        lines.append(f"| face ({GENERATED_NOTE['face']}) | {stats.faces} | see below |")
    for module, count in sorted(stats.aligned.items()):
        if module == "retrieval":
            by_licence = Counter()
            for db_id, uses in stats.database_ids.items():
                by_licence[licences.get(db_id, {}).get("license", "unknown")] += uses
            text = ", ".join(f"{name}: {n}" for name, n in by_licence.most_common())
            lines.append(f"| image database (retrieval) | {count} | {text} |")
        elif module == "web_search":
            lines.append(
                f"| web search | {count} | rights stay with their owners; each image keeps "
                "its `source_url` |"
            )
        else:
            note = GENERATED_NOTE.get(module, module)
            lines.append(f"| {module} ({note}) | {count} | see below |")
    lines += ["", MODEL_LICENCES, ""]
    if stats.database_ids:
        lines += ["Database images used:", ""]
        for db_id, uses in sorted(stats.database_ids.items()):
            info = licences.get(db_id, {})
            lines.append(
                f"- `{db_id}` ({uses}x): {info.get('license', 'unknown')}, "
                f"{info.get('attribution', '')} — {info.get('source', '')}".rstrip(" —")
            )
        lines.append("")
    if stats.web_hosts:
        hosts = ", ".join(f"{h} ({n})" for h, n in stats.web_hosts.most_common(20))
        lines += [
            f"Web images came from: {hosts}. Check each image's rights before redistributing.",
            "",
        ]
    return lines


def dataset_card(run_dir: Path, stats: CardStats, include_filtered: bool) -> str:
    """The README.md text for a Hugging Face dataset folder exported from ``run_dir``."""
    run = RunDir(run_dir)
    manifest = run.read_manifest() or {}
    config_text = run.config_file.read_text(encoding="utf-8") if run.config_file.is_file() else ""
    config = yaml.safe_load(config_text) or {} if config_text else {}
    provider = manifest.get("provider") or {}
    header = {
        "pretty_name": f"mcu-sim episodes ({run.root.name})",
        "license": "other",
        "language": ["en"],
        "tags": ["synthetic", "multimodal-dialogue", "image-sharing", "mcu-sim"],
        "size_categories": [size_category(stats.episodes)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "data/train-*.parquet"}],
            }
        ],
    }
    versions = manifest.get("versions") or {}
    kept = "all finished episodes" if include_filtered else "episodes the filters kept"
    body = [
        f"# {header['pretty_name']}",
        "",
        "Synthetic long-term, image-sharing conversations between a simulated person and an "
        "AI assistant, generated with mcu-sim (an implementation of the MCU framework of "
        "the STARK paper). Every person, event and dialogue is invented by a language model.",
        "",
        "## Contents",
        "",
        f"- episodes: {stats.episodes} ({kept}; {stats.excluded} filtered out)",
        f"- sessions: {stats.sessions}, turns: {stats.turns}",
        f"- image requests: {stats.image_requests}, aligned images: {sum(stats.aligned.values())}",
        "",
        "One row per episode. `persona`, `sessions`, `image_requests` and the other nested "
        "columns are typed structs and lists (dates are dates); free-keyed mappings (`seeds`, "
        "`usage`, `scores`, face `attributes`) and values of mixed kind (an album id or "
        "`new`) are JSON text. Every image record (the face's, each request's `image` and "
        "`alternatives`) has an `image` field with the picture embedded; `image_paths` are "
        "the same files, relative to this folder. Item-level filter marks are listed in "
        "`removals`.",
        "",
        "## Generation",
        "",
        f"- config fingerprint: `{manifest.get('config_fingerprint', 'unknown')}`",
        f"- text model: {provider.get('model', 'unknown')} ({provider.get('kind', '?')})",
        f"- mcu-sim {versions.get('mcu_sim', '?')}, episode schema "
        f"{versions.get('schema', '?')}, run `{manifest.get('run_id', '?')}`",
        "",
        "Text is machine generated; it is subject to the terms of the model provider.",
        "",
        *_image_section(stats, database_licences(config)),
        "## Config",
        "",
        "```yaml",
        config_text.strip() or "# config.yaml missing from the run directory",
        "```",
        "",
    ]
    head = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n" + "\n".join(body)
