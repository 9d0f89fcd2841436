"""Episode files are written on a worker thread, secrets masked, full shards reported."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from mcu_sim.runner.episode_store import EpisodeWriter
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.scrub import Scrubber
from mcu_sim.runner.shards import ShardWriter


class ThreadNotingRun(RunDir):
    """A real run directory that also notes which thread wrote each episode."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writers: list[int] = []

    def write_episode(self, episode: dict[str, Any]) -> Path:
        self.writers.append(threading.get_ident())
        return super().write_episode(episode)


def _episode(number: int) -> dict[str, Any]:
    return {
        "episode_id": f"ep-{number:08d}",
        "seed": number,
        "demographics": {"name": "Ada", "note": "key-1234567890"},
    }


def _writer(tmp_path: Path, shard_size: int) -> tuple[EpisodeWriter, ThreadNotingRun]:
    run = ThreadNotingRun(tmp_path / "run")
    run.create()
    shards = ShardWriter(run, shard_size)
    shards.load()
    return EpisodeWriter(run, shards, Scrubber(["key-1234567890"])), run


def test_episodes_are_written_off_the_loop_masked_and_sharded(tmp_path: Path) -> None:
    writer, run = _writer(tmp_path, shard_size=3)

    async def write_all() -> tuple[int, list[list[Path]]]:
        return threading.get_ident(), [await writer.write(_episode(n)) for n in range(1, 5)]

    loop_thread, written = asyncio.run(write_all())
    assert [len(paths) for paths in written] == [0, 0, 1, 0]  # the third filled shard 0
    assert all(ident != loop_thread for ident in run.writers)
    assert run.finished_ids() == [f"ep-{n:08d}" for n in range(1, 5)]
    assert "key-1234567890" not in (run.episodes / "ep-00000001.json").read_text()
    assert written[2][0].read_text().count("\n") == 3
