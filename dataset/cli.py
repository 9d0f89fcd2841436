"""``mcu export`` and ``mcu import``: finished runs out to the dataset layouts, released STARK
data in (registered on the ``mcu`` app by :func:`register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="hf | parquet | stark-hf | stark-json | flat-jsonl | jsonl | llava | "
            "sharegpt (docs/stark_layouts.md says which layout is which)",
        ),
    ] = "stark-hf",
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    include_filtered: Annotated[
        bool, typer.Option(help="Keep episodes the filters marked as removed.")
    ] = False,
    keep_marked: Annotated[
        bool,
        typer.Option(
            "--keep-marked",
            help="Keep the sessions and images the filters marked (flagged in 'removals').",
        ),
    ] = False,
    unit: Annotated[
        str,
        typer.Option(
            help="llava/sharegpt: one record per 'session' (earlier ones as "
            "context) or per 'episode'."
        ),
    ] = "session",
    model_speaker: Annotated[
        str,
        typer.Option(
            help="llava/sharegpt: the speaker the model learns to be: 'assistant' or 'user'."
        ),
    ] = "assistant",
) -> None:
    """Export finished episodes: a Hugging Face dataset folder, Parquet, a released STARK
    layout (stark-hf, stark-json), our flat JSONL, one JSONL file of whole episodes, or a
    training format (llava, sharegpt). Items the filters marked are left out unless
    --keep-marked."""
    from mcu_sim.dataset.export import export_run

    try:
        path = export_run(
            run_dir,
            format,
            out,
            include_filtered=include_filtered,
            keep_marked=keep_marked,
            unit=unit,
            model_speaker=model_speaker,
        )
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


def import_cmd(
    source: Annotated[Path, typer.Argument(help="A released STARK file or folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help="stark-hf | stark-json")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
) -> None:
    """Import released STARK records into a run directory (validated; refusals reported)."""
    from mcu_sim.dataset.importer import import_stark

    try:
        report = import_stark(format, source, out)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for position, reason in report.refused:
        console.print(
            f"refused {reason}" if reason.startswith(position) else f"refused {position}: {reason}",
            markup=False,
            highlight=False,
        )
    typer.echo(
        f"imported {len(report.imported)} episode(s) into {out}; refused {len(report.refused)}"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_cmd)
