"""Live progress for a run: episodes done/failed/in flight, nodes, calls/s, tokens, cost."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

NODES_PER_EPISODE = 14  # rough: 7 fixed nodes + ~5 sessions + align + finalize


class RunProgress:
    """Consumes runner events; shows rich bars when enabled, stays silent otherwise."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = console
        self.runner: Any = None
        self.started = time.monotonic()
        self.in_flight = 0
        self.failed = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
        )
        self.episodes = self.progress.add_task("episodes", total=None, stats="")
        self.nodes = self.progress.add_task("nodes", total=None, stats="")

    def bind(self, runner: Any) -> None:
        self.runner = runner

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _stats(self) -> str:
        llm = getattr(self.runner, "llm", None)
        if llm is None:
            return ""
        usage = llm.usage
        rate = usage.calls / max(time.monotonic() - self.started, 1e-6)
        return (
            f"in flight {self.in_flight} failed {self.failed} | {rate:.1f} calls/s "
            f"{usage.total_tokens} tok ${usage.cost_usd:.4f}"
        )

    def handle(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "plan":
            todo = data["total"] - data["skipped"]
            self.progress.update(self.episodes, total=data["total"], completed=data["skipped"])
            self.progress.update(self.nodes, total=todo * NODES_PER_EPISODE)
        elif kind == "start":
            self.in_flight += 1
        elif kind == "node":
            self.progress.update(self.nodes, advance=1, description=f"nodes ({data['node']})")
        elif kind in {"done", "failed"}:
            self.in_flight -= 1
            self.failed += kind == "failed"
            self.progress.update(self.episodes, advance=1)
        self.progress.update(self.episodes, stats=self._stats())
