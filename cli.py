"""The ``mcu`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from mcu_sim.config import EXAMPLE_CONFIG, Config, ConfigError, load_config, redacted
from rich.console import Console

app = typer.Typer(
    help="mcu-sim: simulate lives and their image-sharing chats.", no_args_is_help=True
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
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1)] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first episode.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LLM cache.")] = False,
    max_in_flight: Annotated[int | None, typer.Option(min=1)] = None,
    max_cost: Annotated[float | None, typer.Option(help="Stop at this many USD.")] = None,
    force_config: Annotated[
        bool, typer.Option("--force-config", help="Resume even if the config changed.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
) -> None:
    """Generate episodes into a run directory (a re-run resumes, never duplicates)."""
    from mcu_sim.graphs.runner import FingerprintMismatch, plan_jobs

    cfg = _load(config, overrides)
    run_dir = resume or out or Path(cfg.run.out_dir)
    jobs = plan_jobs(episodes, cfg.run.seed if seed is None else seed)
    if resume is not None:
        jobs = _jobs_from_manifest(run_dir) or jobs
    try:
        report = asyncio.run(
            _run_jobs(
                cfg, run_dir, jobs, not no_cache, max_in_flight, max_cost, force_config, progress
            )
        )
    except FingerprintMismatch as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    _print_report(report, run_dir)
    if report.failed:
        raise typer.Exit(1)


def _jobs_from_manifest(run_dir: Path) -> list:
    from mcu_sim.graphs.outputs import RunDir
    from mcu_sim.graphs.runner import EpisodeJob, episode_id_for

    manifest = RunDir(run_dir).read_manifest()
    if not manifest:
        console.print(f"[red]{run_dir} has no manifest.json: nothing to resume.[/red]")
        raise typer.Exit(2)
    return [EpisodeJob(episode_id_for(s), s) for s in manifest.get("seeds", [])]


async def _run_jobs(cfg, run_dir, jobs, use_cache, max_in_flight, max_cost, force, progress):
    from mcu_sim.graphs.progress import RunProgress
    from mcu_sim.graphs.runner import EpisodeRunner

    display = RunProgress(console, enabled=progress and sys.stderr.isatty())
    runner = EpisodeRunner(
        cfg,
        run_dir,
        use_cache=use_cache,
        max_in_flight=max_in_flight,
        max_cost=max_cost,
        on_event=display.handle,
    )
    display.bind(runner)
    with display:
        return await runner.run_jobs(jobs, force_config=force)


def _print_report(report, run_dir: Path) -> None:
    usage = report.usage
    console.print(
        f"finished {len(report.finished)}, skipped (already done) {len(report.skipped)}, "
        f"failed {len(report.failed)} in {report.seconds:.1f}s; LLM calls {usage.calls} "
        f"({usage.cached_calls} cached), tokens {usage.prompt_tokens}+{usage.completion_tokens},"
        f" cost ${usage.cost_usd:.4f}"
    )
    if report.stopped_for_budget:
        console.print("[yellow]stopped at the --max-cost budget; re-run to continue.[/yellow]")
    for episode_id, reason in report.failed.items():
        console.print(f"[red]failed {episode_id}: {reason}[/red]")
    console.print(f"output: {run_dir}")


@app.command("retry-failed")
def retry_failed(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
) -> None:
    """Re-run only the episodes recorded as failed (from their last checkpoint)."""
    from mcu_sim.graphs.outputs import RunDir
    from mcu_sim.graphs.runner import failed_jobs

    cfg = _load(config, overrides)
    jobs = failed_jobs(RunDir(run_dir))
    if not jobs:
        typer.echo("no failed episodes")
        return
    report = asyncio.run(_run_jobs(cfg, run_dir, jobs, not no_cache, None, None, False, True))
    _print_report(report, run_dir)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    format: Annotated[str, typer.Option("--format", "-f", help="stark | jsonl")] = "stark",
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
) -> None:
    """Export finished episodes (STARK's released layout, or one JSONL file)."""
    from mcu_sim.graphs.export import export_run

    try:
        path = export_run(run_dir, format, out)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="An episode JSON file.")]) -> None:
    """Validate an episode file against the schema."""
    from mcu_sim.personas.schema import Episode
    from pydantic import ValidationError

    try:
        Episode.model_validate(json.loads(path.read_text()))
    except ValidationError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"{path}: valid")


index_app = typer.Typer(help="Build image databases for retrieval.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Database folder to write.")],
    images: Annotated[Path | None, typer.Option("--images", help="Folder of images.")] = None,
    parquet: Annotated[
        Path | None, typer.Option("--parquet", help="Parquet with image paths and captions.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="open_clip model name; omit for captions only.")
    ] = "ViT-L-14-336",
    pretrained: Annotated[str | None, typer.Option(help="Local CLIP weights file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    device: Annotated[str, typer.Option(help="cpu | cuda | mps")] = "cpu",
    minilm: Annotated[bool, typer.Option(help="Also embed captions with MiniLM.")] = True,
) -> None:
    """Embed images (and captions) in batches and build an AutoFaiss index."""
    from mcu_sim.tools.base import ToolUnavailable
    from mcu_sim.tools.index_build import build_index

    try:
        info = build_index(
            images,
            parquet,
            out,
            model_name=model,
            pretrained=pretrained,
            batch_size=batch_size,
            device=device,
            progress=True,
            minilm=minilm,
        )
    except (ValueError, ToolUnavailable, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(info.__dict__ if hasattr(info, "__dict__") else info, default=str))


@app.command("filter")
def filter_run_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    write: Annotated[
        bool, typer.Option(help="Rewrite the episode files with the new marks.")
    ] = True,
) -> None:
    """Recompute the filter marks of a finished run (no LLM call); e.g.
    ``mcu filter runs/x --set filters.clip_threshold=0.15``."""
    from mcu_sim.graphs.filter_run import refilter

    cfg = _load(config, overrides)
    report = refilter(run_dir, cfg, write=write)
    typer.echo(json.dumps(report, indent=1, sort_keys=True))


def _register_extensions() -> None:
    """Commands that live next to the code they drive (debugger, viewer)."""
    from mcu_sim.graphs import debug_cli
    from mcu_sim.viewer import cli as viewer_cli

    debug_cli.register(app)
    viewer_cli.register(app)


_register_extensions()


if __name__ == "__main__":  # pragma: no cover
    app()
