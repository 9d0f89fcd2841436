"""``mcu estimate``: LLM calls, tokens and cost of N episodes, before running them.

How the numbers are made:

- **Calls per episode** follow the graph's shape: one persona, commonsense, narrative,
  events and device call; one dialogue (and one judge, one summary when configured) per
  session, with the expected session count: the events asked for (``more than N``), one
  session per event; one
  planner call per image request (album photos plus sharing moments that need an image).
  Repairs and QA rewrites are not predicted; a measured run (``--from-run``) includes them.
- **Prompt tokens** come from a dry run: a few sample people go through the real graph and
  the real prompt templates against an in-process fake endpoint (127.0.0.1), and every
  request is measured (messages plus the JSON schema). Tokens are characters / 4 unless
  ``tiktoken`` is installed with its encodings available.
- **Completion tokens** are typical answer sizes for each role (from the configured counts:
  persona sentences, events, album size, turns), capped by the step's ``max_tokens``.
- **Cost** uses ``llm.provider.prices`` for each step's model.
- **Repeated prefix**: the dry run's client measures, for each request, the longest common
  prefix (in characters of the serialized messages) with any earlier request of the same
  episode, as a share of the request's prompt tokens (:mod:`mcu_sim.agents.llm.prefix`).
  Each role's share of repeated prompt tokens is what a prefix-caching endpoint could serve
  from its cache; the cost is shown with those tokens at ``prices.<model>.cached_input``
  beside the cost at the full input price.
- **--from-run DIR** replaces predictions with the means measured in that run's episodes
  (their ``usage`` field) wherever it has them.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.config import Config

# schema name of a role's answer -> (step settings name, node name in episode usage)
ROLES: dict[str, tuple[str, str]] = {
    "PersonaOutput": ("persona", "persona"),
    "CommonsenseOutput": ("commonsense", "commonsense"),
    "CommonsenseAnswer": ("commonsense", "commonsense"),
    "NarrativeOutput": ("narrative", "narrative"),
    "EventsOutput": ("events", "events"),
    "DeviceOutput": ("device", "device_images"),
    "DialogueOutput": ("dialogue", "session"),
    "SummaryOutput": ("summarizer", "summarizer"),
    "JudgeVerdict": ("judge", "judge"),
    "PlanOutput": ("planner", "planner"),
    "RewriteOutput": ("rewriter", "rewriter"),
}
PER_SESSION = {"DialogueOutput", "SummaryOutput", "JudgeVerdict"}
DRY_RUN_EPISODES = 3


@dataclass
class RoleEstimate:
    role: str
    step: str
    calls_per_episode: float
    prompt_tokens_per_call: float
    completion_tokens_per_call: float
    usd_per_episode: float = 0.0
    source: str = "predicted"
    repeated_share: float = 0.0  # of the prompt tokens, those repeating an earlier prefix
    usd_per_episode_cached: float = 0.0  # repeated tokens at the cached-input price


@dataclass
class Estimate:
    episodes: int
    roles: list[RoleEstimate] = field(default_factory=list)
    tokenizer: str = "chars/4"
    priced: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def calls(self) -> float:
        return self.episodes * sum(r.calls_per_episode for r in self.roles)

    @property
    def prompt_tokens(self) -> float:
        return self.episodes * sum(
            r.calls_per_episode * r.prompt_tokens_per_call for r in self.roles
        )

    @property
    def completion_tokens(self) -> float:
        return self.episodes * sum(
            r.calls_per_episode * r.completion_tokens_per_call for r in self.roles
        )

    @property
    def repeated_prompt_tokens(self) -> float:
        return self.episodes * sum(
            r.calls_per_episode * r.prompt_tokens_per_call * r.repeated_share for r in self.roles
        )

    @property
    def repeated_share(self) -> float:
        """The share of prompt tokens that repeat a prefix sent earlier in the episode."""
        return self.repeated_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def cost_usd(self) -> float:
        return self.episodes * sum(r.usd_per_episode for r in self.roles)

    @property
    def cost_usd_cached(self) -> float:
        """The cost with the repeated prefixes at ``prices.<model>.cached_input``."""
        return self.episodes * sum(r.usd_per_episode_cached for r in self.roles)

    def as_dict(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "calls": round(self.calls),
            "prompt_tokens": round(self.prompt_tokens),
            "completion_tokens": round(self.completion_tokens),
            "cost_usd": round(self.cost_usd, 4),
            "repeated_prompt_tokens": round(self.repeated_prompt_tokens),
            "repeated_prompt_share": round(self.repeated_share, 4),
            "cost_usd_with_cached_input": round(self.cost_usd_cached, 4),
            "priced": self.priced,
            "tokenizer": self.tokenizer,
            "roles": [asdict(r) for r in self.roles],
            "notes": self.notes,
        }


# ---------------------------------------------------------------- tokens


def token_counter(model: str) -> tuple[Any, str]:
    """(count(text) -> int, name): tiktoken when usable offline, else characters / 4."""
    try:
        import tiktoken

        try:
            encoding = tiktoken.encoding_for_model(model)
        except KeyError:
            encoding = tiktoken.get_encoding("o200k_base")
        encoding.encode("probe")
        return (lambda text: len(encoding.encode(text))), f"tiktoken {encoding.name}"
    except Exception:  # not installed, or its encoding files cannot be fetched here
        return (lambda text: max(1, round(len(text) / 4))), "chars/4"


def prompt_text(body: dict[str, Any]) -> str:
    """What the endpoint bills as input: the messages plus a response-format schema."""
    parts = [str(m.get("content") or "") for m in body.get("messages") or []]
    response_format = body.get("response_format") or {}
    if response_format:
        parts.append(json.dumps(response_format, separators=(",", ":")))
    return "\n".join(parts)


def typical_completion(role: str, config: Config) -> int:
    """Tokens a capable model typically answers for ``role``, before the max_tokens cap."""
    episode = config.episode
    sessions = expected_sessions(config)
    sizes = {
        "PersonaOutput": 20 + 38 * episode.persona_count(),
        "CommonsenseOutput": 130,
        "CommonsenseAnswer": 25,
        "NarrativeOutput": 100,
        "EventsOutput": 20 + 70 * sessions,
        "DeviceOutput": 20 + 40 * episode.device_images,
        "DialogueOutput": 40 + 28 * episode.max_turns + 70 * (episode.sharing_more_than + 1),
        "SummaryOutput": 90,
        "JudgeVerdict": 35,
        "PlanOutput": 45,
        "RewriteOutput": 40,
    }
    return sizes.get(role, 100)


def expected_sessions(config: Config) -> int:
    """A compliant model's graph: one more event than ``more than N`` asks, in bounds."""
    episode = config.episode
    return min(max(episode.asked_events() + 1, episode.events_min), episode.max_events())


# ---------------------------------------------------------------- the dry run


def images_config(config: Config) -> Any:
    from mcu_sim.tools.settings import ImagesConfig

    return ImagesConfig.model_validate(config.images)


def dry_run_tools(config: Config) -> Any:
    """The real image toolbox and its real availability checks (so the planner is asked
    exactly as in a real run), but nothing is generated or downloaded: every execution
    yields one small placeholder image, which passes QA (no scorers)."""
    from mcu_sim.tools.base import Candidate
    from mcu_sim.tools.toolbox import ImageToolbox, candidate_dict

    class DryRunToolbox(ImageToolbox):
        async def execute(self, module: str, description: str, **kwargs: Any) -> list[dict]:
            from PIL import Image

            out_dir: Path = kwargs["out_dir"]
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{kwargs['stem']}.png"
            Image.new("RGB", (8, 8)).save(path)
            return [candidate_dict(Candidate(path=path, module=module))]

        async def generate_face(self, face: dict, episode_id: str, run_dir: Path) -> dict:
            return {**face, "status": "unavailable", "reason": "estimate dry run"}

    return DryRunToolbox(images_config(config), scorers={})


def dry_run_config(config: Config) -> Config:
    """``config`` for the dry run: checkpoints in the throwaway run directory's SQLite (never
    the user's Postgres) and the local backend, whatever the run section says."""
    run = config.run.model_copy(update={"postgres_dsn_env": None, "backend": "local"})
    return config.model_copy(update={"run": run})


def dry_run(
    config: Config, episodes: int = DRY_RUN_EPISODES
) -> tuple[list[dict], list[int], dict[str, dict[str, float]]]:
    """Run sample episodes against a fake endpoint; return (request bodies, sessions, the
    episodes' usage summed per node)."""
    from mcu_sim.runner.runner import plan_jobs

    with tempfile.TemporaryDirectory() as tmp:
        return dry_run_jobs(config, Path(tmp) / "run", plan_jobs(episodes, config.run.seed))


def dry_run_jobs(
    config: Config, run_dir: Path, jobs: list[Any]
) -> tuple[list[dict], list[int], dict[str, dict[str, float]]]:
    """:func:`dry_run` of the given ``jobs`` in ``run_dir`` (``mcu augment --estimate``
    prepares its sample dialogues there first)."""
    from mcu_sim.agents.llm.client import build_client
    from mcu_sim.runner.runner import EpisodeRunner
    from mcu_sim.testing.fake_openai import FakeOpenAIServer
    from mcu_sim.testing.scripted import scripted_answer

    images_on = images_config(config).enabled
    with FakeOpenAIServer(scripted_answer) as server:
        provider = config.llm.provider.model_dump()
        provider.update(kind="openai_compatible", base_url=server.url, api_key_env=None)
        llm_config = config.llm.model_copy(
            update={
                "provider": type(config.llm.provider).model_validate(provider),
                "cache": config.llm.cache.model_copy(update={"enabled": False}),
            }
        )
        runner = EpisodeRunner(
            dry_run_config(config),
            run_dir,
            llm=build_client(llm_config, environ={}),
            tools=dry_run_tools(config) if images_on else None,
            use_cache=False,
            max_in_flight=len(jobs),
        )
        report = asyncio.run(runner.run_jobs(jobs))
        if report.failed:
            reason = next(iter(report.failed.values()))
            raise ValueError(f"the estimate's dry run failed: {reason}")
        ids = runner.run.finished_ids()
        sessions = [len(runner.run.read_episode(i)["sessions"]) for i in ids]
        bodies = [r.body for r in server.chat_requests if isinstance(r.body, dict)]
        usage = usage_per_node(runner.run, ids)
    return bodies, sessions, usage


def prompt_tokens_by_role(bodies: list[dict], count: Any) -> dict[str, list[int]]:
    """Each request's prompt tokens (``count`` of :func:`prompt_text`), by the schema name of
    the answer it asks for."""
    from mcu_sim.testing.scripted import schema_of

    per_role: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        per_role[schema_of(body)[0]].append(count(prompt_text(body)))
    return per_role


def usage_per_node(run: Any, ids: list[str]) -> dict[str, dict[str, float]]:
    """The ``usage`` of the episodes ``ids`` of ``run`` (a RunDir), summed per node."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for episode_id in ids:
        for node, values in (run.read_episode(episode_id).get("usage") or {}).items():
            for key, value in values.items():
                totals[node][key] += float(value)
    return totals


def repeated_share(values: dict[str, float]) -> float:
    """The share of a node's prompt tokens that repeat an earlier prefix of the episode."""
    prompt = values.get("prompt_tokens", 0.0)
    return values.get("repeated_prompt_tokens", 0.0) / prompt if prompt else 0.0


# ---------------------------------------------------------------- the estimate


def estimate_run(config: Config, episodes: int, from_run: Path | None = None) -> Estimate:
    """Predict the calls, tokens and cost of ``episodes`` episodes with ``config``."""

    count, tokenizer = token_counter(config.llm.provider.model)
    bodies, sessions, node_usage = dry_run(config)
    sampled = len(sessions)
    expected = expected_sessions(config)
    session_scale = expected / max(statistics.mean(sessions), 1e-9)
    per_role = prompt_tokens_by_role(bodies, count)
    album = config.episode.device_images
    result = Estimate(episodes=episodes, tokenizer=tokenizer)
    for role, prompts in per_role.items():
        step, _ = ROLES.get(role, (role, role))
        calls = len(prompts) / sampled
        if role in PER_SESSION:
            calls *= session_scale
        elif role == "PlanOutput":  # album photos are fixed; sharing moments scale
            calls = album + max(calls - album, 0) * session_scale
        settings = config.llm.step(step) if step in config.llm.steps else None
        completion = typical_completion(role, config)
        if settings is not None:
            completion = min(completion, settings.max_tokens)
        row = RoleEstimate(role, step, calls, statistics.mean(prompts), float(completion))
        row.repeated_share = repeated_share(node_usage.get(ROLES.get(role, (role, role))[1], {}))
        result.roles.append(row)
    if from_run is not None:
        refine_from_run(result, Path(from_run))
    price_roles(result, config)
    result.roles.sort(key=lambda r: list(ROLES).index(r.role) if r.role in ROLES else 99)
    result.notes.append(
        f"prompt sizes from a dry run of {sampled} sample episodes; "
        f"{expected:g} sessions per episode expected (one per event of the graph)"
    )
    return result


def compare_presets(config: Config, result: Estimate) -> dict[str, Estimate]:
    """The estimate under each ``episode.preset`` (``result`` is the configured one's)."""
    from mcu_sim.config_episode import PRESETS

    out = {config.episode.preset: result}
    for preset in PRESETS:
        if preset not in out:
            other = config.episode.model_copy(update={"preset": preset})
            out[preset] = estimate_run(config.model_copy(update={"episode": other}), 1)
            out[preset].episodes = result.episodes
    return out


def format_presets(estimates: dict[str, Estimate], configured: str) -> str:
    """One line per preset: calls, tokens and cost per episode and for the whole run."""
    lines = ["", "presets (episode.preset):"]
    for name, e in estimates.items():
        per_episode = e.calls / max(e.episodes, 1)
        tokens = (e.prompt_tokens + e.completion_tokens) / max(e.episodes, 1)
        cost = f"${e.cost_usd:,.2f}" if e.priced else "unknown cost"
        mark = " (configured)" if name == configured else ""
        lines.append(
            f"  {name:<8}{per_episode:>7.1f} calls/ep {tokens:>10,.0f} tokens/ep   "
            f"{e.episodes} episodes: {cost}{mark}"
        )
    return "\n".join(lines)


def refine_from_run(result: Estimate, run_dir: Path) -> None:
    """Replace predictions with per-episode means measured in ``run_dir``'s episodes."""
    from mcu_sim.runner.outputs import RunDir

    run = RunDir(run_dir)
    ids = run.finished_ids() if run.episodes.is_dir() else []
    if not ids:
        raise FileNotFoundError(f"{run_dir} has no finished episodes to measure")
    totals = usage_per_node(run, ids)
    present = {r.role for r in result.roles}  # a node two roles share: the one predicted
    by_node = {node: role for role, (_, node) in ROLES.items() if role in present}
    by_node.update({n: r for r, (_, n) in ROLES.items() if n not in by_node})
    for node, values in totals.items():
        role = by_node.get(node)
        if role is None:
            continue
        row = next((r for r in result.roles if r.role == role), None)
        if row is None:
            row = RoleEstimate(role, ROLES[role][0], 0.0, 0.0, 0.0)
            result.roles.append(row)
        row.calls_per_episode = (values["calls"] + values["cached_calls"]) / len(ids)
        if values["calls"] > 0:  # cached answers carry no token counts
            row.prompt_tokens_per_call = values["prompt_tokens"] / values["calls"]
            row.completion_tokens_per_call = values["completion_tokens"] / values["calls"]
            row.repeated_share = repeated_share(values)
        row.source = f"measured ({len(ids)} episodes)"
    result.notes.append(f"refined with {len(ids)} episodes of {run_dir}")


def price_roles(result: Estimate, config: Config) -> None:
    provider = config.llm.provider
    missing = set()
    for row in result.roles:
        settings = config.llm.steps.get(row.step)
        model = (settings.model if settings else None) or provider.model
        price = provider.prices.get(model)
        if price is None:
            missing.add(model)
            continue
        completion = row.completion_tokens_per_call * price.output
        per_call = row.prompt_tokens_per_call * price.input + completion
        row.usd_per_episode = row.calls_per_episode * per_call / 1_000_000
        cached_price = price.input if price.cached_input is None else price.cached_input
        repeated = row.prompt_tokens_per_call * row.repeated_share
        per_call += repeated * (cached_price - price.input)
        row.usd_per_episode_cached = row.calls_per_episode * per_call / 1_000_000
    if missing:
        result.priced = False
        result.notes.append(
            f"no price for {', '.join(sorted(missing))}: set llm.provider.prices "
            "(USD per million tokens) to get a cost"
        )


def format_estimate(result: Estimate) -> str:
    """A plain-text table for the terminal."""
    lines = [
        f"{'role':<18}{'calls/ep':>9}{'prompt tok':>12}{'compl. tok':>12}{'$/ep':>10}  source",
    ]
    for r in result.roles:
        lines.append(
            f"{r.step:<18}{r.calls_per_episode:>9.2f}{r.prompt_tokens_per_call:>12.0f}"
            f"{r.completion_tokens_per_call:>12.0f}{r.usd_per_episode:>10.4f}  {r.source}"
        )
    cost = f"${result.cost_usd:,.2f}" if result.priced else "unknown (no prices)"
    lines += [
        "",
        f"{result.episodes} episodes: {result.calls:,.0f} LLM calls, "
        f"{result.prompt_tokens:,.0f} prompt + {result.completion_tokens:,.0f} completion "
        f"tokens ({result.tokenizer}), cost {cost}",
        f"repeated prefix: {result.repeated_prompt_tokens:,.0f} prompt tokens "
        f"({result.repeated_share:.1%}) repeat a prefix sent earlier in the episode; "
        + (
            f"cost with them at the cached-input price ${result.cost_usd_cached:,.2f} "
            f"(without ${result.cost_usd:,.2f})"
            if result.priced
            else "no cost (no prices)"
        ),
        *[f"note: {n}" for n in result.notes],
    ]
    return "\n".join(lines)
