"""Writing finished episodes: the file (secrets masked), its index line, and the shards it
completes, on a worker thread so a slow disk (a network file system, a busy volume) never
holds up the episodes in flight on the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.scrub import Scrubber
from mcu_sim.runner.shards import ShardWriter


class EpisodeWriter:
    """Stores finished episodes of one run: the file, its index line, full shards."""

    def __init__(self, run: RunDir, shards: ShardWriter, scrubber: Scrubber) -> None:
        self.run = run
        self.shards = shards
        self.scrubber = scrubber

    async def write(self, episode: dict[str, Any]) -> list[Path]:
        """Write ``episode`` (secrets masked); return the shard files it completed."""
        return await asyncio.to_thread(self.write_now, episode)

    def write_now(self, episode: dict[str, Any]) -> list[Path]:
        self.run.write_episode(self.scrubber.data(episode))
        return self.shards.add(episode["episode_id"])
