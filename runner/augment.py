"""``mcu augment``'s preparation: the config of a mode, the input read into the run
directory one file per dialogue, and one runner job per dialogue.

The runner is the one of ``mcu run`` (concurrency, resume, ``--max-cost``, Ray): a config
with ``augment.mode`` set makes it run the augmentation graph
(:func:`mcu_sim.runner.drive.compile_graph`), and each job's first node reads its dialogue
from ``augment/dialogues/<episode_id>.json``. Job ``i`` is the record at position ``i`` of
the input (seed ``i``, id ``ep-<i>``), so running the same command again finds the same
episodes: finished ones are skipped, unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.config import Config
from mcu_sim.dataset.dialogue_input import InputError, iter_dialogues
from mcu_sim.dataset.dialogue_mapping import DialogueMapping
from mcu_sim.graphs.augment import dialogue_path
from mcu_sim.runner.jobs import EpisodeJob
from mcu_sim.runner.manifest import episode_id_for
from mcu_sim.runner.outputs import atomic_write_json, atomic_write_text

ERRORS_FILE = Path("augment") / "errors.jsonl"
INPUT_FILE = Path("augment") / "input.json"


@dataclass
class Prepared:
    jobs: list[EpisodeJob] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    with_gold: int = 0


def augment_config(config: Config, mode: str) -> Config:
    """``config`` for ``mode``: ``augment.mode`` set, the mode's router order in
    ``images.router_order`` (what the aligner follows) and, unless
    ``images.retrieval.min_combined`` is set, the mode's threshold on DialogCC's combined
    score there (DialogCC: 2.702)."""
    settings = getattr(config.augment, mode)
    retrieval = config.images.retrieval
    if retrieval.min_combined is None and settings.min_combined is not None:
        retrieval = retrieval.model_copy(update={"min_combined": settings.min_combined})
    images = {"router_order": list(settings.router_order), "retrieval": retrieval}
    return config.model_copy(
        update={
            "augment": config.augment.model_copy(update={"mode": mode}),
            "images": config.images.model_copy(update=images),
        }
    )


def _record(dialogue: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "source": {
            "input": dialogue["input"],
            "position": dialogue["position"],
            "source_id": dialogue["source_id"],
            "mode": mode,
            "gold_turns": None
            if dialogue["gold_turns"] is None
            else [{"session": s, "turn": t} for s, t in dialogue["gold_turns"]],
        },
        "sessions": dialogue["sessions"],
    }


def prepare_inputs(
    run_dir: Path,
    input_path: Path,
    mapping: DialogueMapping,
    mode: str,
    split: str | None = None,
) -> Prepared:
    """Read ``input_path`` into ``run_dir/augment/``; the jobs of the readable records and
    the errors of the others (also written to ``augment/errors.jsonl``). A dialogue file
    already there is kept as it is (a resumed run reads what it started with)."""
    prepared = Prepared()
    root = Path(run_dir)
    (root / dialogue_path(root, "x").parent).mkdir(parents=True, exist_ok=True)
    for item in iter_dialogues(input_path, mapping, split):
        if isinstance(item, InputError):
            prepared.errors.append(item)
            continue
        episode_id = episode_id_for(item["position"])
        path = dialogue_path(root, episode_id)
        if not path.is_file():
            atomic_write_json(path, _record(item, mode))
        prepared.jobs.append(EpisodeJob(episode_id, item["position"]))
        prepared.with_gold += item["gold_turns"] is not None
    lines = "".join(json.dumps(e.as_dict()) + "\n" for e in prepared.errors)
    atomic_write_text(root / ERRORS_FILE, lines)
    atomic_write_json(
        root / INPUT_FILE,
        {"input": str(input_path), "mode": mode, "mapping": mapping.model_dump(), "split": split},
    )
    return prepared
