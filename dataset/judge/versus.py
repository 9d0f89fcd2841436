"""``mcu judge A --versus B``: STARK's head-to-head comparison (§4.3, App. B.2).

As in the paper, single session dialogues are compared: pair k is one session of the k-th
sampled episode of A against one session of the k-th sampled episode of B (episodes in a
seeded random order, the session drawn at random). The order shown is swapped on half of
the pairs: in each block of two consecutive pairs, a seeded coin picks the one shown as
"B first", so any prefix of the pairs is balanced to within one. Each pair's line records
``swapped`` and the choices as shown; the tally turns them back into win / tie / lose for
run A. Results go to ``A/judge/versus/<B's folder name>/``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcu_sim.agents.judge import VERSUS_CRITERIA, VERSUS_PROMPT, compare_dialogues
from mcu_sim.agents.llm.client import LLMClient, LLMError
from mcu_sim.config import Config
from mcu_sim.dataset.judge.run import (
    EpisodeSource,
    JudgeOptions,
    JudgeReport,
    failure_record,
    image_parts,
    judge_identity,
    judged_ids,
    role_call,
    run_all,
    sample_ids,
)
from mcu_sim.dataset.judge.stats import tally_versus, unswap
from mcu_sim.dataset.judge.store import append_line, read_lines, versus_dir
from mcu_sim.dataset.judge.view import show_session, versus_criteria
from mcu_sim.runner.outputs import atomic_write_json


@dataclass(frozen=True)
class Pair:
    pair_id: str
    first: tuple[str, int]  # (episode id, session index) of run A
    second: tuple[str, int]  # of run B
    swapped: bool  # True: run B's dialogue is shown as A


def swaps(count: int, seed: int) -> list[bool]:
    """``count`` flags, exactly one True in each block of two (the last odd one: a coin)."""
    rng = random.Random(f"swap:{seed}")
    flags: list[bool] = []
    while len(flags) < count:
        first = rng.random() < 0.5
        flags += [first, not first]
    return flags[:count]


def plan_pairs(a: EpisodeSource, b: EpisodeSource, sample: int | None, seed: int) -> list[Pair]:
    left = sample_ids(a.ids, sample, seed)
    right = sample_ids(b.ids, sample, seed + 1)
    count = min(len(left), len(right))
    flags = swaps(count, seed)
    pairs = []
    for k in range(count):
        chosen = []
        for source, episode_id in ((a, left[k]), (b, right[k])):
            sessions = [s["index"] for s in source.read(episode_id)["sessions"]]
            session = random.Random(f"{seed}:{episode_id}").choice(sessions)
            chosen.append((episode_id, session))
        (ea, sa), (eb, sb) = chosen
        pairs.append(Pair(f"{ea}:s{sa}|{eb}:s{sb}", (ea, sa), (eb, sb), flags[k]))
    return pairs


async def versus_run(
    run_a: Path,
    run_b: Path,
    config: Config,
    llm: LLMClient,
    options: JudgeOptions | None = None,
) -> JudgeReport:
    """Compare sampled dialogues of ``run_a`` and ``run_b`` (pairs already compared by this
    judge are skipped); write the tally of every pair this judge has compared."""
    options = options or JudgeOptions()
    run_a, run_b = Path(run_a), Path(run_b)
    folder = versus_dir(run_a, run_b)
    pairs_path, failures_path = folder / "pairs.jsonl", folder / "failures.jsonl"
    a, b = EpisodeSource(run_a), EpisodeSource(run_b)
    for run, source in ((run_a, a), (run_b, b)):
        if not source.ids:
            raise FileNotFoundError(f"{run} has no episodes to compare")
    identity = judge_identity(config, llm.provider, VERSUS_PROMPT)
    done = judged_ids(pairs_path, identity, "pair_id")
    pairs = plan_pairs(a, b, options.sample, options.seed)
    report = JudgeReport(skipped=[p.pair_id for p in pairs if p.pair_id in done])
    images_a, images_b = image_parts(run_a, config), image_parts(run_b, config)
    call = role_call(llm, config, options)

    async def one(pair: Pair) -> None:
        first = (a.read(pair.first[0]), pair.first[1], images_a)
        second = (b.read(pair.second[0]), pair.second[1], images_b)
        shown_a, shown_b = (second, first) if pair.swapped else (first, second)
        view_a = show_session(shown_a[0], shown_a[1], "A", shown_a[2])
        view_b = show_session(shown_b[0], shown_b[1], "B", shown_b[2])
        criteria, not_applicable = versus_criteria(view_a, view_b)
        try:
            choices, completion, _ = await compare_dialogues(
                call, view_a.view, view_b.view, criteria, [*view_a.images, *view_b.images]
            )
        except LLMError as exc:
            report.failed[pair.pair_id] = str(exc)
            append_line(failures_path, failure_record("pair_id", pair.pair_id, identity, exc))
            return
        results = {
            name: {**choices[name], "outcome": unswap(choices[name]["choice"], pair.swapped)}
            for name in criteria
        }
        results.update({n: {"choice": None, "na": why} for n, why in not_applicable.items()})
        append_line(
            pairs_path,
            {
                "pair_id": pair.pair_id,
                "judge": identity,
                "first": {"run": str(run_a), "episode_id": pair.first[0], "session": pair.first[1]},
                "second": {
                    "run": str(run_b),
                    "episode_id": pair.second[0],
                    "session": pair.second[1],
                },
                "swapped": pair.swapped,
                "criteria": results,
                "usage": completion.usage.as_dict(),
                "cached": completion.cached,
            },
        )
        report.judged.append(pair.pair_id)

    todo = [p for p in pairs if p.pair_id not in done]
    limit = options.max_in_flight or config.evaluation.max_in_flight
    await run_all(todo, one, llm, limit, options.max_cost, report)
    report.summary = versus_summary(pairs_path, run_a, run_b, identity, options)
    report.summary_path = folder / "summary.json"
    atomic_write_json(report.summary_path, report.summary)
    return report


def versus_summary(
    pairs_path: Path, run_a: Path, run_b: Path, identity: dict[str, Any], options: JudgeOptions
) -> dict[str, Any]:
    lines, seen = [], set()
    for record in read_lines(pairs_path):
        if record.get("judge") == identity and record["pair_id"] not in seen:
            seen.add(record["pair_id"])
            lines.append(record)
    return {
        "kind": "versus",
        "judge": identity,
        "first": str(run_a),
        "second": str(run_b),
        "pairs_judged": len(lines),
        "pairs_swapped": sum(1 for r in lines if r["swapped"]),
        "sample": {"requested": options.sample, "seed": options.seed},
        "outcomes_for": "first (win = the first run's dialogue was preferred)",
        "criteria_order": list(VERSUS_CRITERIA),
        "criteria": tally_versus(lines, list(VERSUS_CRITERIA)),
    }
