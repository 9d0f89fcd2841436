"""The ``mcu augment`` and ``mcu eval turns`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)
eval_app = typer.Typer(help="Evaluate a run.", no_args_is_help=True)


def _print_eval(run_dir: Path) -> None:
    from mcu_sim.dataset.turn_eval import RESULT_FILE, evaluate_run, format_result

    result = evaluate_run(run_dir)
    if result is None:
        console.print("no gold image turns in this run (the mapping declares no gold marker)")
        return
    typer.echo(format_result(result))
    console.print(f"wrote {run_dir / RESULT_FILE}")


def _print_estimate(cfg: Any, input_path: Path, layout: Any, mode: str, split: str | None) -> None:
    """``--estimate``: the dry run's prediction for the whole input; ``out`` is untouched."""
    from mcu_sim.runner.estimate import format_estimate
    from mcu_sim.runner.estimate_augment import estimate_augment

    typer.echo(format_estimate(estimate_augment(cfg, input_path, layout, mode, split)))


def augment(
    input_path: Annotated[Path, typer.Argument(help="JSON, JSONL, folder, Parquet or HF dataset.")],
    mode: Annotated[str, typer.Option(help="magid | dialogcc")] = "magid",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/augment"),
    mapping: Annotated[
        str | None,
        typer.Option(
            help="A shipped mapping (plain, episode, stark-hf, stark-json) or a YAML file."
        ),
    ] = None,
    map_options: Annotated[
        list[str] | None, typer.Option("--map", help="Override one mapping key: key=path.")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split of a HF dataset folder.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: section.key=value.")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LLM cache.")] = False,
    max_in_flight: Annotated[int | None, typer.Option(min=1)] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop cleanly after this many USD.")
    ] = None,
    force_config: Annotated[bool, typer.Option("--force-config")] = False,
    backend: Annotated[str | None, typer.Option(help="local | ray (default: run.backend).")] = None,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="Predict calls, tokens and cost (a dry run); run nothing."),
    ] = False,
) -> None:
    """Give existing text-only dialogues images (MAGID or DialogCC) as episodes in RUN_DIR.
    Re-running the same command resumes; malformed records are reported and skipped."""
    from mcu_sim.config import ConfigError, load_config
    from mcu_sim.dataset.dialogue_mapping import load_mapping
    from mcu_sim.runner.augment import ERRORS_FILE, augment_config, prepare_inputs
    from mcu_sim.runner.backends import make_runner
    from mcu_sim.runner.event_loop import run_on_loop
    from mcu_sim.runner.manifest import FingerprintMismatch, RunLocked
    from mcu_sim.runner.progress import run_with_progress

    if mode not in ("magid", "dialogcc"):
        console.print(f"[red]--mode must be magid or dialogcc, not {mode!r}[/red]")
        raise typer.Exit(2)
    try:
        cfg = augment_config(load_config(config, overrides or []), mode)
        layout = load_mapping(mapping, map_options or [])
        if estimate:
            _print_estimate(cfg, input_path, layout, mode, split)
            return
        prepared = prepare_inputs(out, input_path, layout, mode, split)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for error in prepared.errors[:20]:
        console.print(f"[yellow]skipped {error}[/yellow]")
    if prepared.errors:
        console.print(f"{len(prepared.errors)} record(s) skipped, listed in {out / ERRORS_FILE}")
    options = {"use_cache": not no_cache, "max_in_flight": max_in_flight, "max_cost": max_cost}
    try:
        runner = make_runner(cfg, out, backend=backend, **options)
        live = progress and console.is_terminal
        report = run_on_loop(
            run_with_progress(runner, prepared.jobs, console, live, force_config),
            cfg.run.event_loop,
        )
    except (FingerprintMismatch, RunLocked, ConfigError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; run the same command to continue ({out}).[/yellow]")
        raise typer.Exit(130) from None
    console.print(
        f"finished {len(report.finished)}, skipped (already done) {len(report.skipped)}, "
        f"failed {len(report.failed)}; LLM calls {report.usage.calls}, "
        f"cost ${report.usage.cost_usd:.4f}"
    )
    for episode_id, reason in list(report.failed.items())[:20]:
        console.print(f"[red]failed {episode_id}: {reason[:300]}[/red]")
    if report.stopped_for_budget:
        console.print("[yellow]stopped at --max-cost; run the same command to continue.[/yellow]")
    if prepared.with_gold:
        _print_eval(out)
    console.print(f"output: {out}")
    if report.failed:
        raise typer.Exit(1)


@eval_app.command("turns")
def eval_turns(
    run_dir: Annotated[Path, typer.Argument(help="An augmented run directory.")],
) -> None:
    """Accuracy, precision, recall and F1 of turn selection against the gold image turns,
    overall and per dialogue, and images per 100 turns (written to eval/turns.json)."""
    if not run_dir.is_dir():
        console.print(f"[red]{run_dir} is not a run directory.[/red]")
        raise typer.Exit(2)
    _print_eval(run_dir)


def register(app: typer.Typer) -> None:
    app.command("augment")(augment)
    app.add_typer(eval_app, name="eval")
