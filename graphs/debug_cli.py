"""``mcu debug``, ``mcu history``, ``mcu show``, ``mcu fork``, ``mcu replay``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the debugging commands to the ``mcu`` app."""
