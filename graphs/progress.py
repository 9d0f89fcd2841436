"""Live progress of a run: episodes done/failed/in flight, LLM calls/s, tokens, cost, ETA.

:class:`RunProgress` consumes the runner's events (``plan``, ``start``, ``node``, ``done``,
``failed``, ``stopped``, ``budget``, ``shard``). On a terminal it draws a rich live bar; in
a log file (no terminal) it prints one plain line every ``log_every`` seconds instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


@dataclass
class Counts:
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    steps: int = 0
    shards: int = 0


def eta_seconds(finished_now: int, remaining: int, elapsed: float) -> float | None:
    """Remaining time at this invocation's episode rate (None until one episode ended)."""
    if finished_now <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / finished_now


def compact(number: float) -> str:
    """12,345 -> 12.3k; 4,500,000 -> 4.5M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{number / limit:.1f}{suffix}"
    return f"{number:.0f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class RunProgress:
    """Consumes runner events; shows rich bars on a terminal, log lines otherwise."""

    def __init__(self, console: Console, enabled: bool = True, log_every: float = 30.0) -> None:
        self.console = console
        self.live = enabled
        self.log_every = log_every
        self.runner: Any = None
        self.counts = Counts()
        self.started = time.monotonic()
        self._last_log = self.started
        self.budget_note = ""
        self.progress = Progress(
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("episodes", total=None, stats="")

    def bind(self, runner: Any) -> None:
        """The runner whose ``usage`` (calls, tokens, cost of this invocation) is shown."""
        self.runner = runner

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def stats(self) -> str:
        """One line: in flight, failed, calls/s, tokens, cost, ETA."""
        c = self.counts
        elapsed = max(time.monotonic() - self.started, 1e-6)
        usage = getattr(self.runner, "usage", None)
        calls = usage.calls if usage else 0
        tokens = usage.total_tokens if usage else 0
        cost = usage.cost_usd if usage else 0.0
        remaining = max(c.total - c.skipped - c.done - c.failed, 0)
        eta = eta_seconds(c.done + c.failed, remaining, elapsed)
        text = (
            f"done {c.done} failed {c.failed} in flight {c.in_flight} | "
            f"{calls / elapsed:.1f} calls/s {compact(tokens)} tok ${cost:.4f} | "
            f"ETA {format_duration(eta)}"
        )
        return text + (f" | {self.budget_note}" if self.budget_note else "")

    def handle(self, kind: str, data: dict[str, Any]) -> None:
        c = self.counts
        if kind == "plan":
            c.total, c.skipped = data["total"], data["skipped"]
            self.progress.update(self.task, total=c.total, completed=c.skipped)
        elif kind == "start":
            c.in_flight += 1
        elif kind == "node":
            c.steps += 1
        elif kind in {"done", "failed", "stopped"}:
            c.in_flight = max(c.in_flight - 1, 0)
            c.done += kind == "done"
            c.failed += kind == "failed"
            if kind != "stopped":
                self.progress.update(self.task, advance=1)
        elif kind == "budget":
            self.budget_note = f"budget ${data['max_cost']:.4f} reached: finishing steps"
        elif kind == "shard":
            c.shards += 1
        self._refresh()

    def _refresh(self) -> None:
        if self.live:
            self.progress.update(self.task, stats=self.stats())
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            c = self.counts
            self.console.print(f"[{c.skipped + c.done + c.failed}/{c.total}] {self.stats()}")


async def run_with_progress(
    runner: Any, jobs: list[Any], console: Console, live: bool, force_config: bool = False
) -> Any:
    """``runner.run_jobs(jobs)`` with the display attached; SIGTERM stops it like Ctrl-C
    (finished steps are kept, the manifest records the interruption)."""
    import asyncio
    import signal

    display = RunProgress(console, enabled=live)
    previous = runner.on_event

    def on_event(kind: str, data: dict[str, Any]) -> None:
        display.handle(kind, data)
        previous(kind, data)

    runner.on_event = on_event
    display.bind(runner)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        with display:
            return await runner.run_jobs(jobs, force_config=force_config)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
