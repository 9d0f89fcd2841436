"""Live progress of a run: episodes done/failed/in flight, LLM calls/s, tokens, cost, ETA,
and a bar per node of the graph.

:class:`RunProgress` consumes the runner's events (``plan``, ``start``, ``node``, ``done``,
``failed``, ``stopped``, ``budget``, ``shard``) and is refreshed on a timer between them. On
a terminal it draws rich live bars; in a log file (no terminal) it prints plain lines every
``log_every`` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

REFRESH_S = 0.5  # figures are recomputed this often, events or not


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


@functools.cache
def _graph_order() -> dict[str, int]:
    """Node -> position in the episode graph (imported on first use: the graph is heavy)."""
    from mcu_sim.graphs.episode import NODE_ORDER

    return {name: i for i, name in enumerate(NODE_ORDER)}


class RunProgress:
    """Consumes runner events; shows rich bars on a terminal, log lines otherwise.

    On a terminal: one bar for the episodes (done/total, failed, in flight, calls/s,
    tokens, cost, ETA), then one bar per node of the graph, added as each node first runs:
    the episodes of this invocation that have passed it, how many times it ran, and how
    many in-flight episodes have it as their last finished step (they are running the step
    after it). :meth:`tick` (called
    on a timer by :func:`run_with_progress`) refreshes the figures between events, so
    calls/s and the ETA keep moving during a long LLM call.
    """

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
            TextColumn("{task.description:>13}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not enabled,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("episodes", total=None, stats="")
        self.node_runs: Counter[str] = Counter()  # node -> times it finished
        self.node_episodes: Counter[str] = Counter()  # node -> episodes past it
        self._node_tasks: dict[str, Any] = {}
        self._seen: dict[str, set[str]] = {}  # in-flight episode -> nodes it ran
        self._last_node: dict[str, str] = {}  # in-flight episode -> its last finished node
        self._started_episodes = 0

    def bind(self, runner: Any) -> None:
        """The runner whose ``usage`` (calls, tokens, cost of this invocation) is shown."""
        self.runner = runner

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tick()
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

    def node_line(self) -> str:
        """Node runs and where the in-flight episodes are, in graph order (log form)."""
        at = Counter(self._last_node.values())
        parts = [
            f"{node} {self.node_runs[node]}" + (f" ({at[node]} now)" if at[node] else "")
            for node in self._node_order()
        ]
        return "nodes: " + (" · ".join(parts) if parts else "none yet")

    def _node_order(self) -> list[str]:
        order = _graph_order()
        return sorted(self.node_runs, key=lambda n: (order.get(n, len(order)), n))

    def handle(self, kind: str, data: dict[str, Any]) -> None:
        c = self.counts
        if kind == "plan":
            c.total, c.skipped = data["total"], data["skipped"]
            self.progress.update(self.task, total=c.total, completed=c.skipped)
        elif kind == "start":
            c.in_flight += 1
            self._started_episodes += 1
            self._seen[data["episode_id"]] = set()
        elif kind == "node":
            c.steps += 1
            self._node_done(data["episode_id"], data["node"])
        elif kind in {"done", "failed", "stopped"}:
            c.in_flight = max(c.in_flight - 1, 0)
            c.done += kind == "done"
            c.failed += kind == "failed"
            self._seen.pop(data.get("episode_id", ""), None)
            self._last_node.pop(data.get("episode_id", ""), None)
            if kind != "stopped":
                self.progress.update(self.task, advance=1)
        elif kind == "budget":
            self.budget_note = f"budget ${data['max_cost']:.4f} reached: finishing steps"
        elif kind == "shard":
            c.shards += 1
        self._refresh()

    def _node_done(self, episode_id: str, node: str) -> None:
        self.node_runs[node] += 1
        seen = self._seen.setdefault(episode_id, set())
        if node not in seen:
            seen.add(node)
            self.node_episodes[node] += 1
        self._last_node[episode_id] = node
        if self.live and node not in self._node_tasks:
            self._add_node_tasks(node)

    def _add_node_tasks(self, node: str) -> None:
        """A bar for ``node``; rich draws bars in the order they were added, so the rows
        after it (in graph order) are re-added below it."""
        later = [n for n in self._node_order() if n in self._node_tasks and n != node]
        order = self._node_order()
        moved = [n for n in later if order.index(n) > order.index(node)]
        for name in moved:
            self.progress.remove_task(self._node_tasks.pop(name))
        for name in [node, *moved]:
            self._node_tasks[name] = self.progress.add_task(name, total=None, stats="")

    def tick(self) -> None:
        """Recompute every figure now (between events too)."""
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        if self.live:
            self.progress.update(self.task, stats=self.stats())
            at = Counter(self._last_node.values())
            total = max(self._started_episodes, 1)
            for node, task in self._node_tasks.items():
                now = f", {at[node]} in flight after it" if at[node] else ""
                self.progress.update(
                    task,
                    total=total,
                    completed=self.node_episodes[node],
                    stats=f"{self.node_runs[node]} runs{now}",
                )
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            c = self.counts
            self.console.print(f"[{c.skipped + c.done + c.failed}/{c.total}] {self.stats()}")
            if self.node_runs:
                self.console.print(f"  {self.node_line()}")


async def run_with_progress(
    runner: Any,
    jobs: list[Any],
    console: Console,
    live: bool,
    force_config: bool = False,
    refresh_s: float = REFRESH_S,
    log_every: float = 30.0,
) -> Any:
    """``runner.run_jobs(jobs)`` with the display attached and refreshed every
    ``refresh_s``; SIGTERM stops it like Ctrl-C (finished steps are kept, the manifest
    records the interruption)."""
    import signal

    display = RunProgress(console, enabled=live, log_every=log_every)
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
    ticker = asyncio.create_task(_tick(display, refresh_s))
    try:
        with display:
            return await runner.run_jobs(jobs, force_config=force_config)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        loop.remove_signal_handler(signal.SIGTERM)


async def _tick(display: RunProgress, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        display.tick()
