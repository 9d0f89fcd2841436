"""``mcu judge RUN_DIR``: rate sampled episodes on STARK's human-evaluation rubric.

Sampling: the run's episode ids in a seeded random order, the first ``sample`` of them (so
a larger sample with the same seed is a superset of a smaller one). Episodes already judged
by the same judge (model, prompt version, vision) are skipped, so a re-run after a kill or
a budget stop finishes the sample with each episode judged once; the LLM client's response
cache answers any request already answered. ``max_cost`` (USD, this invocation) stops
starting new episodes once reached; the ones in flight finish and are kept.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.judge import RATING_CRITERIA, RATING_PROMPT, STEP, rate_episode
from mcu_sim.agents.llm.client import LLMClient, LLMError, LLMOutputError, Usage
from mcu_sim.agents.prompting import load_prompt
from mcu_sim.config import Config, ProviderConfig
from mcu_sim.dataset.judge.stats import summarize_ratings
from mcu_sim.dataset.judge.store import append_line, judge_dir, read_lines
from mcu_sim.dataset.judge.view import ImageParts, show_episode
from mcu_sim.dataset.report.collect import iter_episodes, stark_reference
from mcu_sim.runner.outputs import RunDir, atomic_write_json
from mcu_sim.runner.runner import run_bounded


@dataclass
class JudgeOptions:
    sample: int | None = None  # None: every episode
    seed: int = 0
    max_cost: float | None = None
    use_cache: bool = True
    max_in_flight: int | None = None  # None: evaluation.max_in_flight


@dataclass
class JudgeReport:
    judged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped_for_budget: bool = False
    usage: Usage = field(default_factory=Usage)
    summary: dict[str, Any] = field(default_factory=dict)
    summary_path: Path | None = None


class EpisodeSource:
    """Episodes of a run by id: from ``episodes/`` when there is one (read on demand),
    else every episode the report can read (shards, exported or imported JSONL)."""

    def __init__(self, run_dir: Path) -> None:
        self.run = RunDir(run_dir)
        self.ids = self.run.finished_ids()
        self._loaded: dict[str, dict[str, Any]] = {}
        if not self.ids:
            for episode in iter_episodes(Path(run_dir)):
                self._loaded.setdefault(str(episode.get("episode_id")), episode)
            self.ids = sorted(self._loaded)

    def read(self, episode_id: str) -> dict[str, Any]:
        if episode_id in self._loaded:
            return self._loaded[episode_id]
        return self.run.read_episode(episode_id)


def sample_ids(ids: Iterable[str], sample: int | None, seed: int) -> list[str]:
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return order if sample is None else order[:sample]


def judge_identity(config: Config, provider: ProviderConfig, prompt_name: str) -> dict[str, Any]:
    """What makes two judgments comparable: model, provider kind, prompt version, vision.
    ``provider`` is the client's (a caller may hand in a client of another config)."""
    settings = config.llm.step(STEP)
    return {
        "model": settings.model or provider.model,
        "provider": provider.kind,
        "prompt": f"{prompt_name}@{load_prompt(prompt_name).version}",
        "vision": config.evaluation.vision,
    }


def image_parts(run_dir: Path, config: Config) -> ImageParts:
    settings = config.evaluation
    return ImageParts(run_dir, settings.vision, settings.image_detail, settings.max_images)


def role_call(llm: LLMClient, config: Config, options: JudgeOptions) -> RoleCall:
    return RoleCall(llm, config.llm.step(STEP), seed=options.seed, use_cache=options.use_cache)


def judged_ids(path: Path, identity: dict[str, Any], key: str) -> set[str]:
    return {str(r.get(key)) for r in read_lines(path) if r.get("judge") == identity}


async def run_all(
    items: list[Any],
    one: Callable[[Any], Awaitable[None]],
    llm: LLMClient,
    limit: int,
    max_cost: float | None,
    report: Any,
) -> None:
    """``one`` over ``items``, ``limit`` at once, starting none once ``max_cost`` is spent
    (this invocation's cost, as the client counts it)."""
    start = llm.usage

    def over_budget() -> bool:
        spent = llm.usage.cost_usd - start.cost_usd
        if max_cost is not None and spent >= max_cost:
            report.stopped_for_budget = True
        return report.stopped_for_budget

    try:
        await run_bounded(items, one, limit, over_budget)
    finally:
        report.usage = llm.usage - start


def failure_record(key: str, value: Any, identity: dict[str, Any], exc: LLMError) -> dict:
    record = {key: value, "judge": identity, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    if isinstance(exc, LLMOutputError):
        record["raw_text"] = exc.raw_text[:8000]
    return record


async def judge_run(
    run_dir: Path, config: Config, llm: LLMClient, options: JudgeOptions | None = None
) -> JudgeReport:
    """Rate the sampled episodes of ``run_dir`` not yet rated by this judge; write the
    summary of every episode this judge has rated."""
    options = options or JudgeOptions()
    run_dir = Path(run_dir)
    folder = judge_dir(run_dir)
    scores_path, failures_path = folder / "scores.jsonl", folder / "failures.jsonl"
    source = EpisodeSource(run_dir)
    if not source.ids:
        raise FileNotFoundError(f"{run_dir} has no episodes to judge")
    identity = judge_identity(config, llm.provider, RATING_PROMPT)
    done = judged_ids(scores_path, identity, "episode_id")
    wanted = sample_ids(source.ids, options.sample, options.seed)
    report = JudgeReport(skipped=[i for i in wanted if i in done])
    images = image_parts(run_dir, config)
    call = role_call(llm, config, options)

    async def one(episode_id: str) -> None:
        shown = show_episode(source.read(episode_id), images)
        try:
            scores, completion, _ = await rate_episode(
                call, shown.view, shown.criteria, shown.images
            )
        except LLMError as exc:
            report.failed[episode_id] = str(exc)
            append_line(failures_path, failure_record("episode_id", episode_id, identity, exc))
            return
        criteria = {name: scores[name] for name in shown.criteria}
        criteria.update({n: {"score": None, "na": why} for n, why in shown.not_applicable.items()})
        append_line(
            scores_path,
            {
                "episode_id": episode_id,
                "judge": identity,
                "criteria": criteria,
                "images_attached": len(shown.images) // 2,
                "usage": completion.usage.as_dict(),
                "cached": completion.cached,
                "repairs": completion.repairs,
            },
        )
        report.judged.append(episode_id)

    todo = [i for i in wanted if i not in done]
    limit = options.max_in_flight or config.evaluation.max_in_flight
    await run_all(todo, one, llm, limit, options.max_cost, report)
    report.summary = rating_summary(run_dir, config, identity, options, len(source.ids))
    report.summary_path = folder / "summary.json"
    atomic_write_json(report.summary_path, report.summary)
    return report


def rating_summary(
    run_dir: Path,
    config: Config,
    identity: dict[str, Any],
    options: JudgeOptions,
    population: int,
) -> dict[str, Any]:
    folder = judge_dir(run_dir)
    lines, seen, others = [], set(), 0
    for record in read_lines(folder / "scores.jsonl"):
        if record.get("judge") != identity:
            others += 1
        elif record["episode_id"] not in seen:
            seen.add(record["episode_id"])
            lines.append(record)
    failed = judged_ids(folder / "failures.jsonl", identity, "episode_id") - seen
    reference = stark_reference()["human_ratings"]
    return {
        "kind": "ratings",
        "judge": identity,
        "scale": "1-4 (1 not at all, 2 a little, 3 somewhat, 4 a lot)",
        "episodes_judged": len(lines),
        "episodes_failed": len(failed),
        "lines_by_other_judges": others,
        "sample": {"requested": options.sample, "seed": options.seed, "population": population},
        "criteria_order": list(RATING_CRITERIA),  # the paper's (the file's keys are sorted)
        "bootstrap": {"resamples": config.evaluation.bootstrap_resamples, "seed": options.seed},
        "criteria": summarize_ratings(
            lines,
            list(RATING_CRITERIA),
            reference["values"],
            config.evaluation.bootstrap_resamples,
            options.seed,
        ),
        "reference": {"source": "STARK human ratings", "where": reference["where"]},
    }
