"""Rich rendering for the debugger and ``mcu history``: stops, diffs, tables, JSON."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mcu_sim.debug.history import CheckpointRow, format_time
from mcu_sim.debug.state import Change

MAX_VALUE_CHARS = 110
MAX_READ_CHARS = 90  # a field's preview at a stop
MAX_DIFF_LINES = 40


def short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """Compact JSON, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_diff(console: Console, changes: list[Change], limit: int = MAX_DIFF_LINES) -> None:
    if not changes:
        console.print("  (no state change)")
        return
    for change in changes[:limit]:
        path = escape(change.path)
        if change.kind == "added":
            console.print(f"  [green]+ {path} = {escape(short(change.new))}[/green]")
        elif change.kind == "removed":
            console.print(f"  [red]- {path}[/red] (was {escape(short(change.old, 60))})")
        else:
            old, new = escape(short(change.old, 50)), escape(short(change.new, 80))
            console.print(f"  [yellow]~ {path}: {old} → {new}[/yellow]")
    if len(changes) > limit:
        console.print(f"  … {len(changes) - limit} more changes (use `show PATH` to see them)")


def render_stop(
    console: Console,
    next_nodes: tuple[str, ...],
    reads: dict[str, tuple[str, ...]],
    where: str,
    values: dict[str, Any] | None = None,
) -> None:
    """``stop before persona`` with the fields it will read and (given ``values``, the
    state) a short preview of each: ``seed = 7``, ``demographics = {"age": 34, …}``."""
    if not next_nodes:
        console.print(f"[bold]episode finished[/bold] at {where}")
        return
    names = sorted(set(next_nodes), key=next_nodes.index)
    label = ", ".join(
        f"{n} ×{next_nodes.count(n)}" if next_nodes.count(n) > 1 else n for n in names
    )
    console.print(f"[bold cyan]stop before {escape(label)}[/bold cyan] at {where}")
    shown: set[str] = set()
    for name in names:
        fields = reads.get(name, ())
        console.print(f"  {escape(name)} reads: {escape(', '.join(fields) or '?')}")
        if values is None or "*" in fields:
            continue
        for field in fields:
            if field in shown:
                continue
            shown.add(field)
            value = short(values[field], MAX_READ_CHARS) if field in values else "(not set yet)"
            console.print(f"    [dim]{escape(field)} =[/dim] {escape(value)}")


def history_table(rows: list[CheckpointRow], current: str | None = None) -> Table:
    table = Table(title="checkpoints (oldest first)", show_lines=False, expand=False)
    for column in ("#", "checkpoint", "step", "wrote", "next", "time", "tokens"):
        table.add_column(column, overflow="fold")
    for row in rows:
        marker = " ◀" if row.checkpoint_id == current else ""
        table.add_row(
            f"{row.index}{marker}",
            row.checkpoint_id,
            str(row.step),
            escape(row.wrote),
            escape(", ".join(sorted(set(row.next), key=row.next.index)) or "END"),
            format_time(row.created_at),
            str(row.tokens),
        )
    return table


def render_fields(console: Console, values: dict[str, Any]) -> None:
    """One line per top-level field: its name and a short preview."""
    for name, value in values.items():
        size = f" [{len(value)}]" if isinstance(value, list | dict) else ""
        console.print(f"  {escape(name)}{size}: {escape(short(value, 90))}")


def print_json(console: Console, value: Any) -> None:
    console.print_json(json.dumps(value, ensure_ascii=False, default=str))
