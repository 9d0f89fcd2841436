"""The interactive step debugger behind ``mcu debug``.

It drives the episode graph on the run's durable checkpointer (SQLite in the run directory,
or the configured Postgres, opened as the batch runner opens it) and stops before every
node (or before the breakpoint nodes), using LangGraph's ``interrupt_before`` at
invocation time. Every command maps onto LangGraph's checkpoint API: stepping invokes
from the current checkpoint config, edits are ``aupdate_state(as_node=<writer>)``, re-runs
and ``goto`` invoke from an earlier checkpoint (LangGraph branches the thread there), and
``fork`` copies a checkpoint into a new thread. Nothing is kept in memory that the
checkpoints do not hold, so quitting at any point leaves the episode resumable.

Input is plain line input (``input()``), so the debugger can be driven through a pty.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from mcu_sim.config import Config
from mcu_sim.debug import view as view
from mcu_sim.debug.state import (
    StateEditError,
    diff,
    edit_in_editor,
    edit_update,
    get_path,
    node_reads,
    parse_assignment,
    parse_value,
    step_overrides,
)
from mcu_sim.debug.timetravel import (
    History,
    RunGraph,
    TimeTravelError,
    checkpoint_id_of,
    fork_snapshot,
    make_context,
    open_graph,
    resolve,
    run_from,
    write_if_finished,
    writer_node,
)
from mcu_sim.graphs.context import EpisodeContext
from mcu_sim.runner.outputs import RunDir

HELP = """\
commands:
  s, step                  run the next node(s), show what they wrote, stop
  c, continue              run to the next breakpoint (or to the end)
  p, show [PATH]           the state's fields, or one of them: show persona.0.sentence
  e, edit PATH [VALUE]     set a field to a JSON/YAML value; without VALUE, edit its JSON in
                           $EDITOR. Checked against the episode schema before it is accepted
  r, rerun [--set KEY=VALUE ...]
                           run the node that wrote this state again (cache bypassed); e.g.
                           rerun --set temperature=0.2 changes its sampling for this run
  b, back, history         list the checkpoints (# and id)
  goto CHECKPOINT          go to a checkpoint (# or id); the next step branches from there
  fork [NEW_ID]            copy this checkpoint into a new episode id and continue there
  break [NODE,...|all|none] show or set the breakpoints used by continue
  h, help                  this text
  q, quit                  leave; the episode stays resumable (mcu run --resume RUN_DIR)"""


class Debugger:
    """One debugging session on one episode thread (which ``fork`` may switch)."""

    def __init__(
        self,
        opened: RunGraph,
        run: RunDir,
        config: Config,
        episode_id: str,
        *,
        llm: Any,
        tools: Any = None,
        breakpoints: list[str] | None = None,
        console: Console | None = None,
        read_line: Callable[[str], str] = input,
    ) -> None:
        from mcu_sim.graphs.episode import build_episode_graph

        builder = build_episode_graph()
        self.opened = opened
        self.graph = opened.graph
        self.run = run
        self.config = config
        self.episode_id = episode_id
        self.llm = llm
        self.tools = tools
        self.nodes = [n for n in builder.nodes if not n.startswith("__")]
        self.reads = {name: node_reads(builder, name) for name in self.nodes}
        self.breakpoints = self._check_nodes(breakpoints) if breakpoints else list(self.nodes)
        self.console = console or Console()
        self.read_line = read_line
        self.position: dict[str, Any] | None = None
        self.executions: Counter = Counter()
        self.written: set[str] = set()

    # ------------------------------------------------------------ plumbing

    @property
    def thread(self) -> dict[str, Any]:
        return self.opened.thread(self.episode_id)

    def _check_nodes(self, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in self.nodes]
        if unknown:
            raise ValueError(f"unknown node {', '.join(unknown)}; nodes: {', '.join(self.nodes)}")
        return list(names)

    def context(self, use_cache: bool = True, overrides: dict | None = None) -> EpisodeContext:
        return make_context(
            self.config,
            self.run,
            llm=self.llm,
            tools=self.tools,
            use_cache=use_cache,
            executions=self.executions,
            step_overrides=overrides,
        )

    async def current(self) -> Any:
        return await self.graph.aget_state(self.position or self.thread)

    async def history(self) -> History:
        return await self.opened.history(self.episode_id)

    def say(self, text: str) -> None:
        self.console.print(text)

    async def show_stop(self, snapshot: Any | None = None) -> None:
        snapshot = snapshot or await self.current()
        history = await self.history()
        checkpoint = checkpoint_id_of(snapshot)
        index = next(r.index for r in history.rows if r.checkpoint_id == checkpoint)
        where = f"#{index} {checkpoint}"
        view.render_stop(self.console, tuple(snapshot.next), self.reads, where, snapshot.values)
        if not snapshot.next:
            path = write_if_finished(self.run, snapshot, self.config.run.shard_size)
            if path:
                self.written.add(self.episode_id)
                self.say(f"episode file written: {path}")

    async def advance(
        self,
        config: dict[str, Any],
        interrupt_before: Any,
        *,
        payload: dict[str, Any] | None = None,
        context: EpisodeContext | None = None,
        compare_to: dict[str, Any] | None = None,
    ) -> None:
        """Invoke the graph from ``config`` until it stops; show what ran and what changed."""
        before = (await self.graph.aget_state(config)).values if compare_to is None else compare_to
        ran: list[str] = []
        try:
            ran = await run_from(
                self.graph,
                config,
                context or self.context(),
                payload=payload,
                interrupt_before=interrupt_before,
                on_node=lambda node, _: ran.append(node),
            )
        except Exception as exc:  # a failing node must not end the session
            self.say(f"[red]node failed: {escape(type(exc).__name__)}: {escape(str(exc))}[/red]")
            self.say("the state is as it was before that node: edit it, rerun, or goto")
        head = await self.graph.aget_state(self.thread)
        self.position = head.config
        if ran:
            self.say(f"[bold]ran {escape(', '.join(dict.fromkeys(ran)))}[/bold]; state changes:")
            view.render_diff(self.console, diff(dict(before), dict(head.values)))
        await self.show_stop(head)

    # ------------------------------------------------------------ session

    async def start(self, seed: int | None) -> None:
        head = await self.graph.aget_state(self.thread)
        if head.values or head.next:
            self.position = head.config
            self.say(f"episode {self.episode_id}: continuing from its latest checkpoint")
            await self.show_stop(head)
            return
        if seed is None:
            raise TimeTravelError(f"episode {self.episode_id} has no checkpoints; give --seed")
        self.say(f"episode {self.episode_id}: new, seed {seed}")
        payload = {"episode_id": self.episode_id, "seed": seed}
        await self.advance(self.thread, self.breakpoints, payload=payload, compare_to={})

    async def loop(self) -> None:
        self.say("type h for help")
        while True:
            try:
                line = self.read_line(f"mcu-debug {self.episode_id}> ").strip()
            except EOFError:
                line = "quit"
            if not line:
                continue
            command, _, rest = line.partition(" ")
            handler = COMMANDS.get(command.lower())
            if handler is None:
                self.say(f"unknown command '{escape(command)}'; h for help")
                continue
            try:
                if await handler(self, rest.strip()) is False:
                    return
            except (StateEditError, TimeTravelError, ValueError) as exc:
                self.say(f"[red]{escape(str(exc))}[/red]")

    # ------------------------------------------------------------ commands

    async def cmd_step(self, _: str) -> None:
        snapshot = await self.current()
        if not snapshot.next:
            self.say("the episode is finished here; goto an earlier checkpoint or fork")
            return
        await self.advance(snapshot.config, "*")

    async def cmd_continue(self, _: str) -> None:
        snapshot = await self.current()
        if not snapshot.next:
            self.say("the episode is finished here; goto an earlier checkpoint or fork")
            return
        await self.advance(snapshot.config, self.breakpoints or None)

    async def cmd_show(self, path: str) -> None:
        values = dict((await self.current()).values)
        if not path:
            view.render_fields(self.console, values)
        else:
            view.print_json(self.console, get_path(values, path))

    async def cmd_edit(self, rest: str) -> None:
        path, _, raw = rest.partition(" ")
        if not path:
            raise StateEditError("usage: edit PATH [VALUE], e.g. edit demographics.age 34")
        snapshot = await self.current()
        if snapshot.metadata.get("source") == "input":
            raise StateEditError("nothing to edit before the first step; step once first")
        values = dict(snapshot.values)
        new = parse_value(raw) if raw.strip() else edit_in_editor(get_path(values, path))
        try:
            update = edit_update(values, path, new)
        except StateEditError as exc:
            self.say(f"[red]refused: {escape(str(exc))}[/red]")
            self.say("the state is unchanged")
            return
        as_node = writer_node(await self.history(), snapshot)
        metadata = {"mcu_note": f"edit {path}", "mcu_as_node": as_node}
        config = await self.graph.aupdate_state(
            {**snapshot.config, "metadata": metadata}, update, as_node=as_node
        )
        self.position = config
        edited = await self.graph.aget_state(config)
        self.say(f"[green]accepted[/green] edit of {escape(path)}:")
        view.render_diff(self.console, diff(values, dict(edited.values)))
        await self.show_stop(edited)

    async def cmd_rerun(self, rest: str) -> None:
        words = [word for word in shlex.split(rest) if word != "--set"]
        settings = dict(parse_assignment(word) for word in words)
        history = await self.history()
        snapshot = await self.current()
        while snapshot.metadata.get("source") in ("update", "fork") and snapshot.parent_config:
            snapshot = history.by_id(snapshot.parent_config["configurable"]["checkpoint_id"])
        parent = snapshot.parent_config
        before = history.by_id(parent["configurable"]["checkpoint_id"]) if parent else None
        nodes = sorted({t.name for t in before.tasks}) if before is not None else []
        if not nodes or nodes == ["__start__"]:
            raise StateEditError("no node has run before this checkpoint; step first")
        overrides = step_overrides(nodes, settings)
        label = ", ".join(nodes) + (f" with {' '.join(words)}" if words else "")
        self.say(f"re-running {escape(label)} from #{history.snapshots.index(before)}")
        config = {**before.config, "metadata": {"mcu_note": f"rerun {label}"}}
        current = dict((await self.current()).values)
        context = self.context(use_cache=False, overrides=overrides)
        await self.advance(config, "*", context=context, compare_to=current)

    async def cmd_history(self, _: str) -> None:
        history = await self.history()
        current = checkpoint_id_of(await self.current())
        self.console.print(view.history_table(history.rows, current))
        self.say("goto # or id to go back; fork to branch into a new episode")

    async def cmd_goto(self, target: str) -> None:
        if not target:
            raise TimeTravelError("usage: goto CHECKPOINT (a # or id from history)")
        snapshot = resolve(await self.history(), target)
        self.position = snapshot.config
        await self.show_stop(snapshot)

    async def cmd_fork(self, new_id: str) -> None:
        history = await self.history()
        snapshot = resolve(history, checkpoint_id_of(await self.current()))
        result = await fork_snapshot(
            self.opened, history, snapshot, new_id or None, source_episode=self.episode_id
        )
        old = self.episode_id
        self.episode_id = result.episode_id
        self.position = result.config
        self.say(
            f"[green]forked[/green] {old}@{checkpoint_id_of(snapshot)} into episode "
            f"{result.episode_id}; now debugging {result.episode_id} ({old} is unchanged)"
        )
        await self.show_stop()

    async def cmd_break(self, rest: str) -> None:
        if rest:
            names = [n.strip() for n in rest.replace(",", " ").split() if n.strip()]
            if names == ["all"]:
                self.breakpoints = list(self.nodes)
            elif names == ["none"]:
                self.breakpoints = []
            else:
                self.breakpoints = self._check_nodes(names)
        self.say(f"breakpoints: {', '.join(self.breakpoints) or 'none (continue runs to the end)'}")

    async def cmd_help(self, _: str) -> None:
        self.console.print(HELP, markup=False, highlight=False)

    async def cmd_quit(self, _: str) -> bool:
        where = "the Postgres checkpoints" if self.opened.shared else self.run.checkpoints
        self.say(
            f"left {self.episode_id}; its checkpoints are in {where}. Resume with "
            f"`mcu debug --episode {self.run.root / self.episode_id}`, "
            f"`mcu replay {self.run.root / self.episode_id}` or `mcu run --resume {self.run.root}`"
        )
        return False


COMMANDS: dict[str, Callable[[Debugger, str], Any]] = {}
for _names, _handler in (
    (("s", "step", "n", "next"), Debugger.cmd_step),
    (("c", "continue", "cont"), Debugger.cmd_continue),
    (("p", "show", "print"), Debugger.cmd_show),
    (("e", "edit"), Debugger.cmd_edit),
    (("r", "rerun"), Debugger.cmd_rerun),
    (("b", "back", "history", "hist"), Debugger.cmd_history),
    (("goto", "g"), Debugger.cmd_goto),
    (("fork", "f"), Debugger.cmd_fork),
    (("break", "bp"), Debugger.cmd_break),
    (("h", "help", "?"), Debugger.cmd_help),
    (("q", "quit", "exit"), Debugger.cmd_quit),
):
    for _name in _names:
        COMMANDS[_name] = _handler


async def debug_episode(
    run: RunDir,
    config: Config,
    episode_id: str,
    *,
    seed: int | None = None,
    breakpoints: list[str] | None = None,
    console: Console | None = None,
    read_line: Callable[[str], str] = input,
    llm: Any = None,
    tools: Any = None,
    force_config: bool = False,
) -> str:
    """Run the debugger until quit; return the episode id it ended on (forks switch it).

    Like the batch runner it holds the run directory's lock (no ``mcu run`` on the same
    directory meanwhile), checks the config fingerprint against the manifest and records
    the seed there, so ``mcu run --resume`` continues the episode later.
    """
    from mcu_sim.agents.llm.client import build_run_client
    from mcu_sim.runner.manifest import finish_manifest, run_lock, start_manifest
    from mcu_sim.runner.runner import RunReport, build_toolbox
    from mcu_sim.runner.scrub import Scrubber, scrubbed_logging

    own_llm = llm is None
    llm = llm if llm is not None else build_run_client(config)
    tools = tools if tools is not None else build_toolbox(config)
    run.create()
    report = RunReport(backend="debug")
    started, usage_before = time.monotonic(), llm.usage
    try:
        with run_lock(run), scrubbed_logging(Scrubber.for_config(config)):
            seeds = [seed] if seed is not None else []
            manifest = start_manifest(run, config, seeds, force_config, "debug")
            try:
                async with open_graph(run, config) as opened:
                    debugger = Debugger(
                        opened,
                        run,
                        config,
                        episode_id,
                        llm=llm,
                        tools=tools,
                        breakpoints=breakpoints,
                        console=console,
                        read_line=read_line,
                    )
                    await debugger.start(seed)
                    await debugger.loop()
                    report.finished = sorted(debugger.written)
                    return debugger.episode_id
            finally:
                report.usage = llm.usage - usage_before
                report.seconds = time.monotonic() - started
                finish_manifest(run, manifest, report, int(manifest.get("shards") or 0))
    finally:
        if own_llm:
            await llm.aclose()
