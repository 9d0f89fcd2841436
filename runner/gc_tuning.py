"""Garbage-collector settings for the length of a run (``run.gc_tuning``).

A run's process holds a few hundred thousand long-lived objects before its first episode
starts (LangGraph, pydantic, the compiled graph, the config), and every few dozen young
collections CPython promotes its way to a full collection that walks all of them again.
Measured in ``bench/throughput.py``'s process, collections took 3-14 % of the framework's
CPU; with the objects that exist at the start frozen (:func:`gc.freeze`: never scanned,
never freed) and the young generation collected every 10,000 allocations instead of 700,
about 1 %. Every 50,000 instead of 10,000 cuts that by a further 40-60 % (timed with
``gc.callbacks`` over 600-episode bench runs: 0.018-0.020 -> 0.008-0.011 ms per LLM call,
under 1 % of the framework's CPU; peak RSS unchanged). The young collections cost about
the same in all (100-114 -> 73-97 ms); the saving is the middle generation, collected
after 20 young collections and so five times less often: at 10,000 those 600 episodes
had one, a 62-67 ms pause of the event loop, and at 50,000 none. Cyclic garbage is still
collected, only in larger batches.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

RUN_THRESHOLDS = (50_000, 20, 20)  # young, middle, old generation


@contextlib.contextmanager
def tuned_gc(enabled: bool = True) -> Iterator[None]:
    """Freeze what exists and collect less often inside the block; on leaving it, the
    previous thresholds come back and the frozen objects are collectable again, so a
    process that runs the runner in-process is left as it was."""
    if not enabled:
        yield
        return
    before = gc.get_threshold()
    # No gc.collect() first: on a large heap it costs a tenth of a second, and garbage
    # frozen here is freed anyway once the block ends and unfreezes it.
    gc.freeze()
    gc.set_threshold(*RUN_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
