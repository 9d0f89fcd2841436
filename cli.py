"""The ``mcu`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from mcu_sim.config import EXAMPLE_CONFIG, Config, ConfigError, load_config, redacted

app = typer.Typer(
    help="mcu-sim: simulate lives and their image-sharing chats.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a local may hold a secret the run masks
)
config_app = typer.Typer(help="Show or create configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a key: section.key=value.")
]


def _load(config: Path | None, overrides: list[str] | None) -> Config:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the effective config (file + MCU__ env vars + --set), secrets masked."""
    cfg = _load(config, overrides)
    data = redacted(cfg.model_dump(mode="json"))
    typer.echo(yaml.safe_dump(data, sort_keys=False))
    typer.echo(f"# fingerprint: {cfg.fingerprint()}")


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write the example.")] = Path("mcu.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example config."""
    if path.exists() and not force:
        console.print(f"[red]{path} exists; pass --force to overwrite.[/red]")
        raise typer.Exit(1)
    path.write_text(EXAMPLE_CONFIG)
    typer.echo(f"wrote {path}")


@app.command()
def run(
    episodes: Annotated[
        int | None, typer.Option("--episodes", "-n", min=1, help="Episodes to plan (default 1).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first episode.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory (its config.yaml by default)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LLM cache.")] = False,
    max_in_flight: Annotated[int | None, typer.Option(min=1)] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop cleanly after this many USD (this invocation).")
    ] = None,
    force_config: Annotated[
        bool, typer.Option("--force-config", help="Resume even if the config changed.")
    ] = False,
    backend: Annotated[str | None, typer.Option(help="local | ray (default: run.backend).")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a local Ray).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
) -> None:
    """Generate episodes into a run directory. Re-running the same command resumes: finished
    episodes are skipped, unfinished ones continue from their last checkpoint.

    Exit codes: 0 done (or stopped at the budget), 1 some episodes failed, 2 config error,
    3 config changed, 4 run directory in use, 5 the run folder could not be written (disk
    full, quota, read-only, I/O error: finished episodes are kept, re-run to resume),
    130 interrupted."""
    from mcu_sim.runner.outputs import RunDir
    from mcu_sim.runner.runner import manifest_jobs, plan_jobs

    if resume is not None:
        if RunDir(resume).read_manifest() is None:
            console.print(f"[red]{resume} has no manifest.json: nothing to resume.[/red]")
            raise typer.Exit(2)
        if config is None and RunDir(resume).config_file.is_file():
            config = RunDir(resume).config_file
    cfg = _load(config, overrides)
    run_dir = resume or out or Path(cfg.run.out_dir)
    jobs = manifest_jobs(RunDir(run_dir)) if resume is not None else []
    if episodes is not None or resume is None:
        planned = {job.episode_id for job in jobs}
        first = cfg.run.seed if seed is None else seed
        jobs += [j for j in plan_jobs(episodes or 1, first) if j.episode_id not in planned]
    options = {"use_cache": not no_cache, "max_in_flight": max_in_flight, "max_cost": max_cost}
    report = _execute_jobs(
        cfg, run_dir, jobs, options, force_config, progress, backend, ray_address
    )
    _print_report(report, run_dir)
    if report.failed:
        raise typer.Exit(1)


def _execute_jobs(cfg, run_dir, jobs, options, force, progress, backend, ray_address):
    """Run with live progress; turn the runner's refusals into messages and exit codes."""
    from mcu_sim.runner.backends import make_runner
    from mcu_sim.runner.event_loop import run_on_loop
    from mcu_sim.runner.progress import run_with_progress
    from mcu_sim.runner.runner import FingerprintMismatch, RunLocked
    from mcu_sim.runner.write_errors import EXIT_CODE, RunStorageError

    try:
        runner = make_runner(cfg, run_dir, backend=backend, ray_address=ray_address, **options)
        show = progress and console.is_terminal
        return run_on_loop(
            run_with_progress(runner, jobs, console, show, force), cfg.run.event_loop
        )
    except FingerprintMismatch as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    except RunLocked as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(4) from None
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except RunStorageError as exc:  # disk full, quota, read-only: nothing finished is lost
        console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODE) from None
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted: everything finished so far is kept in {run_dir}; "
            f"run `mcu run --resume {run_dir}` to continue.[/yellow]"
        )
        raise typer.Exit(130) from None


def _print_report(report, run_dir: Path) -> None:
    usage = report.usage
    console.print(
        f"finished {len(report.finished)}, skipped (already done) {len(report.skipped)}, "
        f"failed {len(report.failed)} in {report.seconds:.1f}s ({report.backend}); LLM calls "
        f"{usage.calls} ({usage.cached_calls} cached), tokens "
        f"{usage.prompt_tokens}+{usage.completion_tokens}, cost ${usage.cost_usd:.4f}"
    )
    if usage.prompt_tokens:
        share = usage.repeated_prompt_tokens / usage.prompt_tokens
        console.print(
            f"prompt tokens repeating a prefix sent earlier in their episode: "
            f"{usage.repeated_prompt_tokens} ({share:.1%}); served from the endpoint's "
            f"prompt cache: {usage.cached_prompt_tokens}"
        )
    for rule, count in report.run_removals.items():
        console.print(f"run-level filter: {count} {rule} mark(s) (items kept, marked)")
    if report.stopped_for_budget:
        console.print(
            "[yellow]stopped at the --max-cost budget; everything so far is kept. Re-run the "
            f"same command (or `mcu run --resume {run_dir}`) to continue.[/yellow]"
        )
    for episode_id, reason in list(report.failed.items())[:20]:
        console.print(f"[red]failed {episode_id}: {reason[:300]}[/red]")
    if len(report.failed) > 20:
        console.print(f"[red]... and {len(report.failed) - 20} more in {run_dir}/failures[/red]")
    if report.failed:
        console.print(f"retry only those: mcu retry-failed {run_dir}")
    console.print(f"output: {run_dir}")


@app.command("retry-failed")
def retry_failed(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    max_in_flight: Annotated[int | None, typer.Option(min=1)] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop cleanly after this many USD.")
    ] = None,
    force_config: Annotated[bool, typer.Option("--force-config")] = False,
    backend: Annotated[str | None, typer.Option(help="local | ray")] = None,
    ray_address: Annotated[str | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
) -> None:
    """Re-run only the episodes recorded as failed, each from its last checkpoint (with the
    run's own config.yaml unless --config is given)."""
    from mcu_sim.runner.outputs import RunDir
    from mcu_sim.runner.runner import failed_jobs

    run = RunDir(run_dir)
    if run.read_manifest() is None:
        console.print(f"[red]{run_dir} has no manifest.json: not a run directory.[/red]")
        raise typer.Exit(2)
    jobs = failed_jobs(run)
    if not jobs:
        typer.echo("no failed episodes")
        return
    cfg = _load(config or (run.config_file if run.config_file.is_file() else None), overrides)
    options = {"use_cache": not no_cache, "max_in_flight": max_in_flight, "max_cost": max_cost}
    report = _execute_jobs(
        cfg, run_dir, jobs, options, force_config, progress, backend, ray_address
    )
    _print_report(report, run_dir)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def estimate(
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1)] = 1,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    from_run: Annotated[
        Path | None, typer.Option("--from-run", help="Refine with a run's measured usage.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict LLM calls, tokens and cost of N episodes before running them (and under
    each episode.preset: stark, economy)."""
    from mcu_sim.runner.estimate import (
        compare_presets,
        estimate_run,
        format_estimate,
        format_presets,
    )

    cfg = _load(config, overrides)
    try:
        result = estimate_run(cfg, episodes, from_run=from_run)
        presets = compare_presets(cfg, result)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        data = {**result.as_dict(), "presets": {k: v.as_dict() for k, v in presets.items()}}
        typer.echo(json.dumps(data, indent=1))
    else:
        typer.echo(format_estimate(result) + format_presets(presets, cfg.episode.preset))


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="An episode JSON file.")]) -> None:
    """Validate an episode file against the schema."""
    from pydantic import ValidationError

    from mcu_sim.personas.schema import Episode
    from mcu_sim.viewer.load import ViewerError, read_json

    try:
        data = read_json(path)  # missing, not UTF-8, not JSON, too deep: one clear line
    except ViewerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        Episode.model_validate(data)
    except ValidationError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except RecursionError:
        typer.echo(f"error: {path}: nested too deeply to be an episode", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{path}: valid")


index_app = typer.Typer(help="Build image databases for retrieval.", no_args_is_help=True)
app.add_typer(index_app, name="index")
TargetRecallOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Choose the smallest nprobe whose recall@10 (of the 64 candidates a search "
        "rescores) reaches this against exact search; 0 keeps AutoFaiss's 10 ms choice.",
    ),
]


@index_app.command("build")
def index_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Database folder to write.")],
    images: Annotated[Path | None, typer.Option("--images", help="Folder of images.")] = None,
    parquet: Annotated[
        Path | None, typer.Option("--parquet", help="Parquet with image paths and captions.")
    ] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option(
            "--embeddings",
            help="clip-retrieval folder (img_emb/, text_emb/, metadata/): index it as is; "
            "--model/--pretrained name the CLIP model that made it.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="open_clip model name (or local-dir:/hf-hub:); 'none' for captions only."
        ),
    ] = "ViT-L-14-336",
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="CLIP weights: a local file or an open_clip tag (required for a bare name)."
        ),
    ] = None,
    random_weights: Annotated[
        bool,
        typer.Option("--random-weights", help="Build without --pretrained (tests only)."),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    device: Annotated[str, typer.Option(help="cpu | cuda | mps")] = "cpu",
    minilm: Annotated[bool, typer.Option(help="Also embed captions with MiniLM.")] = True,
    target_recall: TargetRecallOpt = 0.95,
) -> None:
    """Embed images (and captions) in batches and build an AutoFaiss index. A bare model
    name needs --pretrained weights; --random-weights opts into random ones (tests only)."""
    from mcu_sim.tools.base import ToolUnavailable
    from mcu_sim.tools.index_build import build_index, check_clip_weights

    if embeddings is not None:
        from mcu_sim.tools.index_embeddings import build_from_embeddings

        try:
            if images or parquet or model is None or model.lower() == "none":
                raise ValueError("--embeddings takes no --images/--parquet and needs --model")
            check_clip_weights(model, pretrained, random_weights)
            summary = build_from_embeddings(
                embeddings,
                out,
                model_name=model,
                pretrained=pretrained,
                target_recall=target_recall or None,
            )
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        typer.echo(json.dumps(summary, default=str))
        return
    try:
        info = build_index(
            images,
            parquet,
            out,
            model_name=None if model is None or model.lower() == "none" else model,
            pretrained=pretrained,
            random_weights=random_weights,
            batch_size=batch_size,
            device=device,
            progress=True,
            minilm=minilm,
            target_recall=target_recall or None,
        )
    except (ValueError, ToolUnavailable, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(info.__dict__ if hasattr(info, "__dict__") else info, default=str))


@index_app.command("tune")
def index_tune(
    db: Annotated[Path, typer.Argument(help="An image database folder (db.json).")],
    target_recall: TargetRecallOpt = 0.95,
) -> None:
    """Re-tune the nprobe of a database's approximate indexes for a target recall (no
    rebuild), and print what was measured."""
    from mcu_sim.tools.index_tune import tune_database

    try:
        report = tune_database(db, target_recall)
    except (FileNotFoundError, ValueError) as exc:  # DatabaseFormatError is a ValueError
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report, default=str))


@app.command("filter")
def filter_run_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    write: Annotated[
        bool, typer.Option(help="Rewrite the episode files with the new marks.")
    ] = True,
) -> None:
    """Recompute the filter marks of a finished run (no LLM call), with the run's own
    config.yaml unless --config is given; e.g.
    ``mcu filter runs/x --set filters.clip_threshold=0.15``."""
    from mcu_sim.dataset.filter_run import refilter
    from mcu_sim.runner.manifest import RunLocked
    from mcu_sim.runner.outputs import RunDir

    run = RunDir(run_dir)
    if not run.episodes.is_dir():
        console.print(f"[red]{run_dir} has no episodes/ folder: not a run directory.[/red]")
        raise typer.Exit(2)
    cfg = _load(config or (run.config_file if run.config_file.is_file() else None), overrides)
    try:
        report = refilter(run_dir, cfg, write=write)
    except RunLocked as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(4) from None
    typer.echo(json.dumps(report, indent=1, sort_keys=True))


def _register_extensions() -> None:
    """Commands that live next to the code they drive (exports, debugger, viewer, report,
    judge)."""
    from mcu_sim.dataset import cli as dataset_cli
    from mcu_sim.dataset.judge import cli as judge_cli
    from mcu_sim.dataset.report import cli as report_cli
    from mcu_sim.debug import cli as debug_cli
    from mcu_sim.runner import augment_cli
    from mcu_sim.viewer import cli as viewer_cli

    dataset_cli.register(app)
    debug_cli.register(app)
    viewer_cli.register(app)
    report_cli.register(app)
    judge_cli.register(app)
    augment_cli.register(app)


_register_extensions()


if __name__ == "__main__":  # pragma: no cover
    app()
