"""The ``mcu report`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of episodes.")],
    compare: Annotated[
        list[Path] | None,
        typer.Option("--compare", help="Another run to show side by side (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file (default RUN_DIR/report/).")
    ] = None,
) -> None:
    """Write a self-contained HTML report of a run, next to STARK's published statistics
    (and other runs with --compare), and report.json with every number in it."""
    try:
        from mcu_sim.dataset.report import write_report
    except ImportError as exc:  # pragma: no cover - the [report] extra is missing
        console.print(f"[red]{exc.name} is not installed: pip install 'mcu-sim[report]'[/red]")
        raise typer.Exit(2) from None
    for path in [run_dir, *(compare or [])]:
        if not path.is_dir():
            console.print(f"[red]{path} is not a run directory.[/red]")
            raise typer.Exit(2)
    try:
        files = write_report(run_dir, compare or [], out)
    except ModuleNotFoundError as exc:
        console.print(f"[red]{exc.name} is not installed: pip install 'mcu-sim[report]'[/red]")
        raise typer.Exit(2) from None
    typer.echo(f"wrote {files.html}")
    typer.echo(f"wrote {files.json}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
