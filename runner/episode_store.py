"""Writing finished episodes: on the event loop while the disk answers quickly, else on a
worker thread.

An episode's file write (a temp file, fsync, rename, its index line) takes well under a
millisecond on a local disk. Handed to a thread, the hand-off and the GIL passing back and
forth around each system call cost about as much again, a few percent of the framework's
CPU. A slow disk (a network file system, a busy volume) must not hold up
every episode in flight: once a write has taken longer than :data:`INLINE_LIMIT_S`, every
later one goes to a thread, and so does any write that completes a shard (a thousand
episodes in one file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.scrub import Scrubber
from mcu_sim.runner.shards import ShardWriter

log = logging.getLogger(__name__)

INLINE_LIMIT_S = 0.01


class EpisodeWriter:
    """Stores finished episodes of one run: the file, its index line, full shards."""

    def __init__(self, run: RunDir, shards: ShardWriter, scrubber: Scrubber) -> None:
        self.run = run
        self.shards = shards
        self.scrubber = scrubber
        self.inline = True  # until a write is slow

    async def write(self, episode: dict[str, Any]) -> list[Path]:
        """Write ``episode`` (secrets masked); return the shard files it completed."""
        if not self.inline or self.shards.fills_a_shard():
            return await asyncio.to_thread(self.write_now, episode)
        started = time.perf_counter()
        written = self.write_now(episode)
        spent = time.perf_counter() - started
        if spent > INLINE_LIMIT_S:
            self.inline = False
            log.info(
                "an episode file took %.0f ms to write; episodes are written on a thread "
                "for the rest of the run",
                1000 * spent,
            )
        return written

    def write_now(self, episode: dict[str, Any]) -> list[Path]:
        self.run.write_episode(self.scrubber.data(episode))
        return self.shards.add(episode["episode_id"])
