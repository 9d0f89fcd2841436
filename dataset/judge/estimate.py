"""``mcu judge --estimate``: the calls, tokens and cost of judging, before judging.

The prompts are the real ones, rendered for the episodes that would be judged (sampled and
not yet judged); their tokens are counted as ``mcu estimate`` counts them, with a fixed
allowance per attached image (OpenAI bills a low-detail image as 85 tokens; high detail
depends on its size, 765 is a 1024x1024 picture). Completion tokens are a typical answer
size per criterion, capped by ``llm.steps.evaluator.max_tokens``; the cost uses
``llm.provider.prices``. Repairs are not predicted, and answers already in the response
cache are counted as calls.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mcu_sim.agents.judge import (
    RATING_PROMPT,
    STEP,
    VERSUS_PROMPT,
    rating_messages,
    rating_model,
    versus_messages,
    versus_model,
)
from mcu_sim.agents.llm.client import json_schema_of
from mcu_sim.config import Config
from mcu_sim.dataset.judge.run import (
    EpisodeSource,
    JudgeOptions,
    image_parts,
    judge_identity,
    judged_ids,
    sample_ids,
)
from mcu_sim.dataset.judge.store import judge_dir, versus_dir
from mcu_sim.dataset.judge.versus import plan_pairs
from mcu_sim.dataset.judge.view import show_episode, show_session, versus_criteria
from mcu_sim.runner.estimate import Estimate, RoleEstimate, price_roles, token_counter

IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}
TOKENS_PER_CRITERION = 75  # a short justification, the score or choice, the JSON around it


def _count_prompt(count, messages: list[dict], schema: dict, images: int, detail: str) -> int:
    text = "\n".join(str(m["content"]) for m in messages) + json.dumps(schema)
    return count(text) + images * IMAGE_TOKENS[detail]


def estimate_judging(
    run_dir: Path, config: Config, options: JudgeOptions, versus: Path | None = None
) -> Estimate:
    """What ``mcu judge`` with these arguments would send (nothing is sent)."""
    settings = config.llm.step(STEP)
    count, tokenizer = token_counter(settings.model or config.llm.provider.model)
    detail = config.evaluation.image_detail
    prompts, completions = [], []
    if versus is None:
        source = EpisodeSource(run_dir)
        judge = judge_identity(config, config.llm.provider, RATING_PROMPT)
        done = judged_ids(judge_dir(run_dir) / "scores.jsonl", judge, "episode_id")
        images = image_parts(run_dir, config)
        for episode_id in sample_ids(source.ids, options.sample, options.seed):
            if episode_id in done:
                continue
            shown = show_episode(source.read(episode_id), images)
            messages = rating_messages(shown.view, shown.criteria)
            schema = json_schema_of(rating_model(shown.criteria))
            prompts.append(_count_prompt(count, messages, schema, len(shown.images) // 2, detail))
            completions.append(20 + TOKENS_PER_CRITERION * len(shown.criteria))
        role = "EpisodeRatings"
    else:
        a, b = EpisodeSource(run_dir), EpisodeSource(versus)
        done = judged_ids(
            versus_dir(run_dir, versus) / "pairs.jsonl",
            judge_identity(config, config.llm.provider, VERSUS_PROMPT),
            "pair_id",
        )
        images_a, images_b = image_parts(run_dir, config), image_parts(versus, config)
        for pair in plan_pairs(a, b, options.sample, options.seed):
            if pair.pair_id in done:
                continue
            view_a = show_session(a.read(pair.first[0]), pair.first[1], "A", images_a)
            view_b = show_session(b.read(pair.second[0]), pair.second[1], "B", images_b)
            criteria, _ = versus_criteria(view_a, view_b)
            messages = versus_messages(view_a.view, view_b.view, criteria)
            attached = (len(view_a.images) + len(view_b.images)) // 2
            schema = json_schema_of(versus_model(criteria))
            prompts.append(_count_prompt(count, messages, schema, attached, detail))
            completions.append(20 + TOKENS_PER_CRITERION * len(criteria))
        role = "HeadToHead"
    result = Estimate(episodes=len(prompts), tokenizer=tokenizer)
    if prompts:
        completion = min(statistics.mean(completions), settings.max_tokens)
        result.roles.append(
            RoleEstimate(role, STEP, 1.0, statistics.mean(prompts), float(completion))
        )
    price_roles(result, config)
    unit = "pairs" if versus is not None else "episodes"
    result.notes.append(f"{len(prompts)} {unit} to judge (already judged ones are skipped)")
    return result
