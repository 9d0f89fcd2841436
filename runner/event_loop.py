"""Which event loop a run uses (``run.event_loop``).

uvloop implements the loop's callbacks, tasks and sockets in C; the runner spends much of
its CPU there (LangGraph makes several tasks per step, every LLM call is a socket round
trip). Measured with ``bench/throughput.py``'s process, framework CPU per LLM call was
7-10 % lower on uvloop. ``auto`` takes it when it is installed (it is a dependency on
Linux and macOS), else asyncio's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from mcu_sim.config import ConfigError

T = TypeVar("T")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for ``asyncio.Runner``; None means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "run.event_loop is uvloop, but uvloop is not installed: pip install uvloop "
                "(Linux and macOS), or set run.event_loop to auto or asyncio."
            ) from None
        return None
    return uvloop.new_event_loop


def run_on_loop(coroutine: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(coroutine)`` on the chosen loop (Ctrl-C handling as asyncio.run's)."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        coroutine.close()  # never awaited: say so quietly, not as a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)
