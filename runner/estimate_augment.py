"""``mcu augment INPUT --estimate``: LLM calls, tokens and cost of augmenting a corpus.

The same method as ``mcu estimate`` (:mod:`mcu_sim.runner.estimate`), on the input's own
dialogues: a few of them, spread over the file, go through the real augmentation graph and
prompts against the in-process fake endpoint, and every request is measured. An
augmentation's calls grow with the dialogue's length (the scanner reads windows of turns;
each picked turn gets a planner call), so each role's calls and tokens are taken per turn
of the sample and scaled to the turns of the whole input. Completion tokens are typical
answer sizes (a scanner's picks, a plan, a rewrite), capped by each step's ``max_tokens``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from mcu_sim.config import Config
from mcu_sim.runner.estimate import (
    Estimate,
    RoleEstimate,
    dry_run_jobs,
    price_roles,
    prompt_tokens_by_role,
    repeated_share,
    token_counter,
)

SAMPLE_DIALOGUES = 4
# schema name of a role's answer -> (step settings name, node name in episode usage,
# typical completion tokens of a capable model)
AUGMENT_ROLES: dict[str, tuple[str, str, int]] = {
    "ScanOutput": ("scanner", "scan", 160),
    "ScanReasonedOutput": ("scanner", "scan", 320),
    "MomentsOutput": ("scanner", "scan", 180),
    "PlanOutput": ("planner", "planner", 45),
    "RewriteOutput": ("rewriter", "rewriter", 40),
}


def spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def dialogue_turns(run_dir: Path, episode_id: str) -> int:
    """The turns of a prepared dialogue (``augment/dialogues/<id>.json``)."""
    from mcu_sim.graphs.augment import dialogue_path

    data = json.loads(dialogue_path(run_dir, episode_id).read_text(encoding="utf-8"))
    return sum(len(session["turns"]) for session in data["sessions"])


def estimate_augment(
    config: Config,
    input_path: Path,
    mapping: Any,
    mode: str,
    split: str | None = None,
    sample: int = SAMPLE_DIALOGUES,
) -> Estimate:
    """Predict the calls, tokens and cost of augmenting every readable dialogue of
    ``input_path`` with ``config`` (already set up for ``mode`` by ``augment_config``)."""
    from mcu_sim.runner.augment import prepare_inputs

    with tempfile.TemporaryDirectory(prefix="mcu-estimate-") as tmp:
        run_dir = Path(tmp) / "run"
        prepared = prepare_inputs(run_dir, input_path, mapping, mode, split)
        if not prepared.jobs:
            raise ValueError(f"{input_path}: no readable dialogue to estimate from")
        turns = {job.episode_id: dialogue_turns(run_dir, job.episode_id) for job in prepared.jobs}
        picked = spread(prepared.jobs, sample)
        bodies, _, usage = dry_run_jobs(config, run_dir, picked)
    sample_turns = sum(turns[job.episode_id] for job in picked)
    mean_turns = statistics.mean(turns.values())
    count, tokenizer = token_counter(config.llm.provider.model)
    per_role = prompt_tokens_by_role(bodies, count)
    result = Estimate(episodes=len(prepared.jobs), tokenizer=tokenizer)
    for role, prompts in per_role.items():
        step, node, completion = AUGMENT_ROLES.get(role, (role, role, 100))
        if step in config.llm.steps:
            completion = min(completion, config.llm.step(step).max_tokens)
        calls = len(prompts) / sample_turns * mean_turns
        row = RoleEstimate(role, step, calls, statistics.mean(prompts), float(completion))
        row.repeated_share = repeated_share(usage.get(node, {}))
        result.roles.append(row)
    price_roles(result, config)
    result.roles.sort(
        key=lambda r: list(AUGMENT_ROLES).index(r.role) if r.role in AUGMENT_ROLES else 99
    )
    result.notes.append(
        f"prompt sizes from a dry run of {len(picked)} of the {len(prepared.jobs)} dialogues "
        f"({sample_turns} turns), scaled to {mean_turns:.1f} turns per dialogue"
    )
    if prepared.errors:
        result.notes.append(f"{len(prepared.errors)} unreadable record(s) left out")
    return result
