"""A run folder that cannot be written stops the run cleanly (issue 28, defect 16).

For real: ``mcu run`` into a tmpfs of a few hundred KB or 2 MB fills it (checkpoints,
episode files, shards). The run must end with one message naming the path and what to do,
exit code 5, no traceback, every finished episode intact; a read-only remount gives the
same; after the file system is made bigger the same command resumes, and every planned
episode is then there exactly once (episode files, index, shards), none corrupt.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mcu_sim.runner.write_errors import EXIT_CODE, storage_failure
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from tests.conftest import remount

EPISODES = 16


def _mcu(server: FakeOpenAIServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    settings = [
        "--set=images.enabled=false",
        "--set=llm.provider.kind=openai_compatible",
        f"--set=llm.provider.base_url={server.url}",
        "--set=llm.provider.model=fake-model",
        f"--set=llm.cache.path={tmp_path / 'cache.sqlite'}",  # on a disk with room
        "--set=run.shard_size=5",
    ]
    command = [sys.executable, "-m", "mcu_sim.cli", "run", "--no-progress", *args, *settings]
    return subprocess.run(command, capture_output=True, timeout=600, check=False)


def _assert_stopped_cleanly(done: subprocess.CompletedProcess, run: Path, hint: str) -> None:
    message = done.stderr.decode()
    assert done.returncode == EXIT_CODE, message
    assert "Traceback" not in message and "Errno" not in message, message
    assert message.count("cannot write to") == 1 and str(run) in message
    assert hint in message and f"mcu run --resume {run}" in message
    for episode in (run / "episodes").glob("*.json"):  # whatever finished is whole
        assert json.loads(episode.read_text())["episode_id"] == episode.stem
    assert list((run / "failures").glob("*")) == []  # a full disk is no episode's failure


@pytest.mark.parametrize("tiny_disk", ["300k", "2m"], indirect=True)
def test_a_full_disk_stops_the_run_and_a_rerun_resumes_it(
    fake_openai: FakeOpenAIServer, tmp_path: Path, tiny_disk: Path
) -> None:
    run = tiny_disk / "run"
    done = _mcu(fake_openai, tmp_path, "-n", str(EPISODES), "-o", str(run))
    _assert_stopped_cleanly(done, run, "Free some space")
    finished_before = {p.stem for p in (run / "episodes").glob("*.json")}
    assert len(finished_before) < EPISODES  # the disk really filled up
    kept = {p.stem: p.read_bytes() for p in (run / "episodes").glob("*.json")}

    remount(tiny_disk, "ro")  # a read-only run folder: the same clean stop
    _assert_stopped_cleanly(
        _mcu(fake_openai, tmp_path, "--resume", str(run)), run, "Make it writable"
    )

    remount(tiny_disk, "rw,size=64m")
    again = _mcu(fake_openai, tmp_path, "--resume", str(run))
    assert again.returncode == 0, again.stderr.decode()
    planned = {f"ep-{seed:08d}" for seed in range(EPISODES)}
    episodes = {p.stem: json.loads(p.read_text()) for p in (run / "episodes").glob("*.json")}
    assert set(episodes) == planned and all(e["episode_id"] == i for i, e in episodes.items())
    for episode_id, data in kept.items():  # finished before the stop: never redone
        assert (run / "episodes" / f"{episode_id}.json").read_bytes() == data
    index = [json.loads(line)["episode_id"] for line in (run / "index.jsonl").open()]
    assert sorted(index) == sorted(planned)  # each once
    state = json.loads((run / "shards" / "shards.json").read_text())
    in_shards = [
        json.loads(line)["episode_id"]
        for item in state["shards"]
        for line in (run / "shards" / item["file"]).open()
    ]
    assert sorted(in_shards) == sorted(planned)
    assert list((run / "failures").glob("*")) == [] and list(run.rglob(".*.tmp")) == []
    with sqlite3.connect(run / "checkpoints.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["episodes_finished"] == EPISODES


def test_storage_errors_are_told_from_episode_errors() -> None:
    """ENOSPC, EDQUOT, EFBIG, EROFS, EIO and SQLite's full/I/O/read-only codes, however
    deep in a chain or a group; any other error is an episode's own."""
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO):
        error = OSError(code, os.strerror(code), "/run/x.json")
        assert storage_failure(error) is error
        try:
            try:
                raise error
            except OSError as inner:
                raise RuntimeError("while writing a checkpoint") from inner
        except RuntimeError as outer:
            assert storage_failure(ExceptionGroup("tasks", [ValueError(), outer])) is error
    full = sqlite3.OperationalError("database or disk is full")
    assert storage_failure(full) is full
    for other in (OSError(errno.ENOENT, "missing"), ValueError("bad"), sqlite3.IntegrityError()):
        assert storage_failure(other) is None


@pytest.mark.images
@pytest.mark.parametrize("tiny_disk", ["64k"], indirect=True)
def test_a_full_disk_while_an_image_is_saved_stops_the_step_not_records_it_unaligned(
    fake_openai: FakeOpenAIServer, tmp_path: Path, tiny_disk: Path
) -> None:
    """The aligner records a tool's error as a failed try; a full disk is let through (the
    runner then stops the run, and a resume aligns the image), never an "unaligned" image.
    Here the web search's download workers meet it while saving the image they fetched."""
    from mcu_sim.testing.aligner_run import align_requests, images_settings, sharing_request
    from mcu_sim.testing.image_site import serve_image_site
    from mcu_sim.testing.scripted import scripted_answer
    from mcu_sim.tools.toolbox import ImageToolbox

    run = tmp_path / "run"
    run.mkdir()
    (run / "images").symlink_to(tiny_disk)  # the images land on the tiny disk
    filler = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(filler, b"\0" * 4096)
    finally:
        os.close(filler)
    assert full.value.errno == errno.ENOSPC
    fake_openai.handler = scripted_answer
    unused = {"base": tmp_path / "none", "ckpt": tmp_path / "none.bin"}
    request = sharing_request("s1-t2", "the latest news photo of the city marathon")
    with serve_image_site() as site:
        toolbox = ImageToolbox(images_settings(unused, site.search_url))
        with pytest.raises(Exception) as stopped:
            align_requests(fake_openai, run, toolbox, [request], None)
        assert site.queries, "the search really ran"
    failure = storage_failure(stopped.value)
    assert failure is not None and failure.errno == errno.ENOSPC, stopped.value
