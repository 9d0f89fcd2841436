"""``mcu debug``, ``mcu history``, ``mcu show``, ``mcu fork``, ``mcu replay``.

Thin wrappers: the logic lives in ``graphs.debugger`` and ``graphs.timetravel``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

EpisodeArg = Annotated[
    str, typer.Argument(help="RUN_DIR/EPISODE_ID, e.g. runs/default/ep-00000011.")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
ConfigSetOpt = Annotated[
    list[str] | None, typer.Option("--config-set", help="Override a config key: section.key=value.")
]
AtOpt = Annotated[
    str | None, typer.Option("--at", help="Checkpoint: a # from `mcu history` or an id.")
]

err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _ref(text: str) -> Any:
    from mcu_sim.debug.timetravel import TimeTravelError, parse_episode_ref

    try:
        return parse_episode_ref(text)
    except TimeTravelError as exc:
        raise _fail(str(exc)) from None


def _run(coro: Any) -> Any:
    from mcu_sim.config import ConfigError
    from mcu_sim.debug.state import StateEditError
    from mcu_sim.debug.timetravel import TimeTravelError

    try:
        return asyncio.run(coro)
    except (TimeTravelError, StateEditError, ConfigError) as exc:
        raise _fail(str(exc)) from None


def debug(
    seed: Annotated[int | None, typer.Option(help="Debug the episode of this seed.")] = None,
    episode: Annotated[
        str | None, typer.Option("--episode", help="RUN_DIR/EPISODE_ID to continue debugging.")
    ] = None,
    breaks: Annotated[
        str | None,
        typer.Option("--break", help="Stop only before these nodes (comma-separated)."),
    ] = None,
    config: ConfigOpt = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    force_config: Annotated[
        bool, typer.Option("--force-config", help="Debug even if the run's config differs.")
    ] = False,
) -> None:
    """Run one episode step by step: stop before each node, show, edit, re-run, go back, fork."""
    from mcu_sim.config import ConfigError, load_config
    from mcu_sim.debug.debugger import debug_episode
    from mcu_sim.debug.timetravel import load_run_config
    from mcu_sim.runner.manifest import FingerprintMismatch, RunLocked
    from mcu_sim.runner.outputs import RunDir
    from mcu_sim.runner.runner import episode_id_for

    if seed is not None and episode is not None:
        raise _fail("give --seed or --episode, not both")
    try:
        if episode is not None:
            ref = _ref(episode)
            run, episode_id = ref.run, ref.episode_id
            cfg = load_run_config(run, config, overrides or [])
        else:
            cfg = load_config(config, overrides or [])
            seed = cfg.run.seed if seed is None else seed
            run, episode_id = RunDir(out or cfg.run.out_dir), episode_id_for(seed)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    names = [n.strip() for n in breaks.split(",") if n.strip()] if breaks else None
    console = Console(highlight=False)
    session = debug_episode(
        run,
        cfg,
        episode_id,
        seed=seed,
        breakpoints=names,
        console=console,
        force_config=force_config,
    )
    try:
        _run(session)
    except (FingerprintMismatch, RunLocked) as exc:
        raise _fail(str(exc), 3) from None
    except ValueError as exc:  # unknown breakpoint names
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print("\ninterrupted; the episode stays resumable from its last checkpoint")
        raise typer.Exit(130) from None


def history(
    episode: EpisodeArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List an episode's checkpoints: #, id, step, node that wrote it, next node, time, tokens."""
    from mcu_sim.debug.timetravel import history as list_history
    from mcu_sim.debug.view import history_table

    found = _run(list_history(_ref(episode)))
    if as_json:
        for row in found:
            typer.echo(json.dumps(row.as_dict(), ensure_ascii=False))
    else:
        Console(highlight=False).print(history_table(found))


def show(
    episode: EpisodeArg,
    at: AtOpt = None,
    field: Annotated[
        str | None, typer.Option("--field", "-f", help="Dotted path: persona.0.sentence")
    ] = None,
) -> None:
    """Print the state at a checkpoint (default: the latest) as JSON."""
    from mcu_sim.debug.timetravel import show as show_state

    value = _run(show_state(_ref(episode), at, field))
    typer.echo(json.dumps(value, indent=1, ensure_ascii=False, default=str))


def fork(
    episode: EpisodeArg,
    at: AtOpt = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Change the state: PATH=VALUE (JSON/YAML value)."),
    ] = None,
    new_id: Annotated[str | None, typer.Option("--as", help="Id of the new episode.")] = None,
) -> None:
    """Copy the state at a checkpoint into a new episode, optionally changed (then: mcu replay,
    or `mcu run --resume RUN_DIR`, which continues every unfinished fork)."""
    from mcu_sim.debug.state import StateEditError, parse_assignment
    from mcu_sim.debug.timetravel import fork as fork_episode

    ref = _ref(episode)
    if at is None:
        raise _fail("--at CHECKPOINT is required (see `mcu history`)")
    try:
        changes = dict(parse_assignment(item) for item in sets or [])
    except StateEditError as exc:
        raise _fail(str(exc)) from None
    from mcu_sim.runner.manifest import RunLocked

    try:
        result = _run(fork_episode(ref, at, changes, new_id))
    except RunLocked as exc:
        raise _fail(str(exc), 3) from None
    typer.echo(
        json.dumps(
            {
                "episode_id": result.episode_id,
                "checkpoint_id": result.checkpoint_id,
                "next": list(result.next),
                "replay": f"mcu replay {ref.run.root / result.episode_id}",
            }
        )
    )


def replay(
    episode: EpisodeArg,
    from_: Annotated[
        str | None, typer.Option("--from", help="Checkpoint to continue from (default: latest).")
    ] = None,
    config: ConfigOpt = None,
    overrides: ConfigSetOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LLM cache.")] = False,
) -> None:
    """Continue an episode from a checkpoint to the end and write its episode file."""
    from mcu_sim.debug.timetravel import load_run_config
    from mcu_sim.debug.timetravel import replay as replay_episode

    ref = _ref(episode)

    async def go() -> Any:
        cfg = load_run_config(ref.run, config, overrides or [])
        return await replay_episode(
            ref,
            from_,
            config=cfg,
            use_cache=not no_cache,
            on_node=lambda node, _: err.print(f"ran {node}", highlight=False),
        )

    from mcu_sim.runner.manifest import RunLocked

    try:
        result = _run(go())
    except RunLocked as exc:
        raise _fail(str(exc), 3) from None
    if result.path is None:
        raise _fail(f"{ref} stopped before the end (next: {', '.join(result.next)})", 1)
    typer.echo(json.dumps({"episode_id": result.episode_id, "file": str(result.path)}))


def register(app: typer.Typer) -> None:
    """Add the debugging commands to the ``mcu`` app."""
    app.command("debug")(debug)
    app.command("history")(history)
    app.command("show")(show)
    app.command("fork")(fork)
    app.command("replay")(replay)
