"""``mcu view`` (filled in by the viewer work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the viewer's commands to the ``mcu`` app."""
