"""The ``mcu judge`` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


def _config(run_dir: Path, config: Path | None, overrides: list[str] | None) -> Any:
    from mcu_sim.config import ConfigError, load_config
    from mcu_sim.runner.outputs import RunDir

    if config is None and RunDir(run_dir).config_file.is_file():
        config = RunDir(run_dir).config_file
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


async def _judge(run_dir: Path, versus: Path | None, cfg: Any, options: Any) -> Any:
    from mcu_sim.agents.llm.client import build_run_client
    from mcu_sim.dataset.judge.run import judge_run
    from mcu_sim.dataset.judge.versus import versus_run

    llm = build_run_client(cfg)
    try:
        if versus is None:
            return await judge_run(run_dir, cfg, llm, options)
        return await versus_run(run_dir, versus, cfg, llm, options)
    finally:
        await llm.aclose()


def judge(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of episodes.")],
    sample: Annotated[
        int | None, typer.Option("--sample", "-n", min=1, help="Episodes (pairs) to judge.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample, swaps and bootstrap.")] = 0,
    versus: Annotated[
        Path | None,
        typer.Option("--versus", help="Another run: STARK's head-to-head comparison."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config (default: the run's config.yaml)."),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: section.key=value.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop cleanly after this many USD (this invocation).")
    ] = None,
    max_in_flight: Annotated[int | None, typer.Option(min=1)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LLM cache.")] = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Print the calls, tokens and cost; judge nothing.")
    ] = False,
) -> None:
    """Rate sampled episodes with an LLM judge on STARK's seven human-evaluation criteria
    (4-point scale), or compare two runs head to head (--versus). Results go to
    RUN_DIR/judge/; re-running resumes, and `mcu report` shows them."""
    from mcu_sim.agents.llm.client import LLMError
    from mcu_sim.dataset.judge.run import JudgeOptions

    for path in [run_dir, *([versus] if versus else [])]:
        if not path.is_dir():
            console.print(f"[red]{path} is not a run directory.[/red]")
            raise typer.Exit(2)
    cfg = _config(run_dir, config, overrides)
    if cfg.evaluation.vision and cfg.llm.provider.kind == "llamacpp":
        console.print(
            "[red]evaluation.vision sends images as OpenAI image content parts: use an "
            "openai_compatible or azure_openai provider with a vision model, or set "
            "evaluation.vision=false.[/red]"
        )
        raise typer.Exit(2)
    options = JudgeOptions(sample, seed, max_cost, not no_cache, max_in_flight)
    try:
        if estimate:
            from mcu_sim.dataset.judge.estimate import estimate_judging
            from mcu_sim.runner.estimate import format_estimate

            typer.echo(format_estimate(estimate_judging(run_dir, cfg, options, versus)))
            return
        report = asyncio.run(_judge(run_dir, versus, cfg, options))
    except (FileNotFoundError, LLMError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print(report)


def _print(report: Any) -> None:
    usage = report.usage
    console.print(
        f"judged {len(report.judged)}, skipped (already judged) {len(report.skipped)}, "
        f"failed {len(report.failed)}; LLM calls {usage.calls} ({usage.cached_calls} cached), "
        f"tokens {usage.prompt_tokens}+{usage.completion_tokens}, cost ${usage.cost_usd:.4f}"
    )
    if report.stopped_for_budget:
        console.print(
            "[yellow]stopped at the --max-cost budget; every judgment so far is kept. "
            "Re-run the same command to continue.[/yellow]"
        )
    for key, reason in list(report.failed.items())[:10]:
        console.print(f"[red]failed {key}: {reason[:300]}[/red]")
    typer.echo(json.dumps(report.summary["criteria"], indent=1))
    typer.echo(f"wrote {report.summary_path}")
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("judge")(judge)
