"""``mcu view EPISODE|RUN_DIR [-o FILE] [--embed] [--serve]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the viewer's commands to the ``mcu`` app."""
    app.command("view")(view_command)


def view_command(
    target: Annotated[
        Path,
        typer.Argument(help="An episode JSON file (or RUN_DIR/<episode id>), or a run directory."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="HTML file to write (default: RUN_DIR/view/index.html, "
            "RUN_DIR/view/<id>.html for an episode). Episode pages of a run go beside it.",
        ),
    ] = None,
    embed: Annotated[
        bool,
        typer.Option("--embed", help="Embed images as data: URIs (one portable file)."),
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the pages on 127.0.0.1 and print the URL.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve (0: any free port).")] = 0,
) -> None:
    """Write a self-contained HTML view of an episode or a run (works offline, from disk)."""
    from mcu_sim.viewer.load import ViewerError, is_run_dir, resolve_episode, run_root_of
    from mcu_sim.viewer.render import view

    try:
        page = view(target, out, embed=embed)
        root = target if is_run_dir(target) else run_root_of(resolve_episode(target))
    except ViewerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {page}")
    if serve:
        _serve(page, root, port)


def _serve(page: Path, run_root: Path, port: int) -> None:
    from mcu_sim.viewer.serve import make_server, page_url, serve_root

    root = serve_root(page, run_root)
    try:
        server = make_server(root, port, page_dir=page.resolve().parent, run_root=run_root)
    except OSError as exc:
        typer.echo(f"error: cannot listen on 127.0.0.1:{port} ({exc}); try --port 0", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving {root} at {page_url(server, root, page)} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
