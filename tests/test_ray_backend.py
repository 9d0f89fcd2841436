"""The Ray backend on a local Ray instance with 2 CPUs: episodes as Ray tasks give the same
episodes as the local backend for the same seeds (cache on), image tools served by a Ray
actor (web search against a page on 127.0.0.1) with QA scoring (the bundled open_nsfw)
batched across episodes, and the budget stop with a resume that redoes nothing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.config import Config, load_config
from mcu_sim.runner.backends import make_runner
from mcu_sim.runner.outputs import RunDir
from mcu_sim.runner.ray_backend import RayEpisodeRunner
from mcu_sim.runner.ray_tools import BatchingScorer
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import FakeOpenAIServer, schema_name
from mcu_sim.testing.image_site import serve_image_site
from mcu_sim.testing.scripted import scripted_answer

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def image_site() -> Iterator[str]:
    """A Bing-format result page linking one JPEG, served on 127.0.0.1."""
    with serve_image_site(colors=((200, 60, 20),)) as site:
        yield site.search_url


def _config(server: FakeOpenAIServer, tmp_path: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={server.url}",
            "llm.provider.model=fake-model",
            f"llm.cache.path={tmp_path / 'llm-cache.sqlite'}",
            "episode.sessions_min=1",
            "episode.sessions_max=2",
            *extra,
        ],
    )


def _episodes(run: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for episode_id in RunDir(run).finished_ids():
        episode = RunDir(run).read_episode(episode_id)
        episode.pop("usage")  # the second backend's calls are cache hits
        out[episode_id] = episode
    return out


def test_ray_tasks_give_the_same_episodes_as_the_local_backend(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false", "run.shard_size=2")
    jobs = plan_jobs(4, 60)
    local = asyncio.run(EpisodeRunner(config, tmp_path / "local").run_jobs(jobs))
    calls = len(fake_openai.chat_requests)
    runner = make_runner(config, tmp_path / "ray", backend="ray", max_in_flight=4)
    assert isinstance(runner, RayEpisodeRunner)
    report = asyncio.run(runner.run_jobs(jobs))
    assert report.failed == {} and sorted(report.finished) == sorted(local.finished)
    assert len(fake_openai.chat_requests) == calls  # every call was a cache hit
    assert report.usage.cached_calls == local.usage.calls > 0
    assert _episodes(tmp_path / "ray") == _episodes(tmp_path / "local")
    assert report.executions == local.executions  # counted in the workers, summed here
    manifest = RunDir(tmp_path / "ray").read_manifest()
    assert manifest["backend"] == "ray" and manifest["episodes_finished"] == 4
    assert manifest["shards"] == 2
    again = asyncio.run(make_runner(config, tmp_path / "ray", backend="ray").run_jobs(jobs))
    assert again.finished == [] and len(again.skipped) == 4


def test_image_tools_served_by_a_ray_actor(
    local_ray: Any, fake_openai: FakeOpenAIServer, image_site: str, tmp_path: Path
) -> None:
    fake_openai.handler = scripted_answer
    images = [
        "images.face.enabled=false",
        "images.photomaker.enabled=false",
        "images.retrieval.enabled=false",
        "images.web_search.enabled=true",
        "images.web_search.allow_loopback=true",
        f"images.web_search.search_url={image_site}",
        "images.web_search.top_k=1",
        "images.qa.scorers=[nsfw]",  # the bundled open_nsfw: no weights to configure
    ]
    config = _config(fake_openai, tmp_path, *images)
    jobs = plan_jobs(2, 70)
    runner = RayEpisodeRunner(config, tmp_path / "ray")
    report = asyncio.run(runner.run_jobs(jobs))
    assert report.failed == {} and len(report.finished) == 2
    episodes = _episodes(tmp_path / "ray")
    aligned = [
        r for e in episodes.values() for r in e["image_requests"] if r["status"] == "aligned"
    ]
    assert len(aligned) >= 2 * 5  # at least the album photos of both episodes
    for request in aligned:
        assert request["module"] == "web_search"
        assert request["image"]["source_url"].endswith("/img0.jpg")
        assert (tmp_path / "ray" / request["image"]["path"]).is_file()
        assert 0.0 <= float(request["image"]["scores"]["nsfw"]) <= 1.0  # QA ran
    # the actor merged concurrent QA requests (several episodes' images) into model calls
    batches = runner.qa_batches["nsfw"]
    assert max(batches) > 1 and len(batches) < sum(batches), batches
    # the local backend with an in-process toolbox makes the same episodes
    local = asyncio.run(EpisodeRunner(config, tmp_path / "local").run_jobs(jobs))
    assert local.failed == {}
    assert _without_scores(_episodes(tmp_path / "local")) == _without_scores(episodes)
    local_scores = _nsfw_scores(_episodes(tmp_path / "local"))
    assert local_scores.keys() == _nsfw_scores(episodes).keys()
    for key, value in _nsfw_scores(episodes).items():  # batched or not, the same model
        assert value == pytest.approx(local_scores[key], abs=1e-4)


def _nsfw_scores(episodes: dict[str, dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {
        (episode_id, r["id"]): float(r["image"]["scores"]["nsfw"])
        for episode_id, e in episodes.items()
        for r in e["image_requests"]
        if r.get("image")
    }


def _without_scores(episodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    text = json.dumps(episodes, sort_keys=True)
    data = json.loads(text)
    for episode in data.values():
        for request in episode["image_requests"]:
            if request.get("image"):
                request["image"]["scores"].pop("nsfw", None)
    return data


def test_ray_budget_stop_and_resume_redo_nothing(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The monitor actor stops every task after the step that crossed --max-cost; the next
    run continues the stopped episode from its checkpoint and starts the others."""
    fake_openai.handler = scripted_answer
    price = "llm.provider.prices={fake-model: {input: 200, output: 200}}"  # USD per M tokens
    config = _config(
        fake_openai, tmp_path, "images.enabled=false", "llm.cache.enabled=false", price
    )
    out = tmp_path / "ray"
    jobs = plan_jobs(3, 90)
    first = RayEpisodeRunner(config, out, max_in_flight=1, max_cost=1.0)
    report = asyncio.run(first.run_jobs(jobs))
    assert report.stopped_for_budget and len(report.finished) < 3 and report.failed == {}
    assert report.usage.cost_usd >= 1.0
    manifest = RunDir(out).read_manifest()
    assert manifest["state"] == "stopped_for_budget" and manifest["backend"] == "ray"
    assert manifest["usage_total"]["cost_usd"] == pytest.approx(report.usage.cost_usd)
    started = first.executions["demographics"]
    assert started > len(report.finished)  # one episode was stopped part-way

    second = RayEpisodeRunner(config, out, max_in_flight=2)
    again = asyncio.run(second.run_jobs(jobs))
    assert not again.stopped_for_budget and again.failed == {}
    assert len(report.finished) + len(again.finished) == 3
    total = first.executions + second.executions
    for node in ("demographics", "face", "persona", "commonsense", "narrative", "events"):
        assert total[node] == 3, (node, first.executions, second.executions)
    assert total["filter"] == 3
    asked = sum(1 for r in fake_openai.chat_requests if schema_name(r.body) == "PersonaOutput")
    assert asked == 3  # nothing was asked twice (the cache is off)


class _SizeScorer:
    """A real scorer of the QA interface: the score of an image is its file size."""

    name = "size"
    needs_texts = True

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    async def score(self, images: list[str], texts: list[str] | None = None) -> list[Any]:
        self.calls.append((list(images), list(texts or [])))
        return [(Path(i).stat().st_size, t) for i, t in zip(images, texts or [], strict=True)]


def test_batching_scorer_merges_concurrent_requests(tmp_path: Path) -> None:
    files = []
    for n in range(5):
        path = tmp_path / f"{n}.bin"
        path.write_bytes(b"x" * (n + 1))
        files.append(str(path))
    scorer = _SizeScorer()
    batched = BatchingScorer(scorer, window_s=0.05, max_images=100)

    async def three_episodes() -> list[list[Any]]:
        return await asyncio.gather(
            batched.score(files[:2], ["a", "a"]),
            batched.score(files[2:3], ["b"]),
            batched.score(files[3:], ["c", "c"]),
        )

    results = asyncio.run(three_episodes())
    assert len(scorer.calls) == 1 and batched.batches == [5]  # one model call for all
    assert results == [[(1, "a"), (2, "a")], [(3, "b")], [(4, "c"), (5, "c")]]
    assert batched.needs_texts and batched.name == "size"

    small = BatchingScorer(_SizeScorer(), window_s=10.0, max_images=2)

    async def full_batch() -> list[Any]:  # a full batch goes at once, without the window
        return await asyncio.wait_for(small.score(files[:2], ["x", "y"]), timeout=5)

    assert asyncio.run(full_batch()) == [(1, "x"), (2, "y")]


# ---------------------------------------------------------------- a worker's kept session


def _task_payload(config: Config, run_root: Path, episode_id: str, seed: int) -> dict[str, Any]:
    RunDir(run_root).create()
    return {
        "config": config.model_dump(mode="json"),
        "run_root": str(run_root),
        "use_cache": False,
        "monitor": None,
        "tool_actors": None,
        "tool_info": None,
        "job": [episode_id, seed],
        "thread_id": episode_id,
    }


@pytest.fixture
def fresh_worker() -> Iterator[Any]:
    from mcu_sim.runner import ray_worker

    ray_worker.close_worker_session()
    try:
        yield ray_worker
    finally:
        ray_worker.close_worker_session()


def test_a_worker_keeps_its_session_between_tasks_and_reports_each_tasks_own_usage(
    fake_openai: FakeOpenAIServer, tmp_path: Path, fresh_worker: Any
) -> None:
    import sqlite3

    from mcu_sim.runner.ray_worker import run_episode_task

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false")
    run_root = tmp_path / "run"
    results, sessions = [], []
    for n in range(3):
        before = len(fake_openai.chat_requests)
        result = run_episode_task(_task_payload(config, run_root, f"ep-{n}", 100 + n))
        assert "episode" in result, result
        # the client is shared, the usage reported is this task's alone
        assert result["usage"]["calls"] == len(fake_openai.chat_requests) - before > 0
        results.append(result)
        sessions.append(fresh_worker._current)
    assert sessions[0] is sessions[1] is sessions[2] and sessions[0].tasks_run == 3
    for result in results:  # counted per task, not across the session
        sessions_run = len(result["episode"]["sessions"])
        assert result["executions"]["demographics"] == 1
        assert result["executions"]["session"] == sessions_run
    # what each task wrote is committed when its result goes back: another reader sees
    # every checkpoint the session's saver lists
    with sqlite3.connect(RunDir(run_root).checkpoints) as reader:
        rows = reader.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id")
        seen = dict(rows)

    async def listed() -> Counter:
        saver = sessions[0].saver
        return Counter([c.config["configurable"]["thread_id"] async for c in saver.alist(None)])

    assert seen == dict(sessions[0].run(listed())) and set(seen) == {"ep-0", "ep-1", "ep-2"}
    # another run directory gets a session of its own; the old one is closed
    other = run_episode_task(_task_payload(config, tmp_path / "other", "ep-9", 9))
    assert "episode" in other and fresh_worker._current is not sessions[0]
    assert sessions[0].runner._loop is None  # closed


def test_a_task_that_breaks_closes_the_workers_session(
    fake_openai: FakeOpenAIServer, tmp_path: Path, fresh_worker: Any
) -> None:
    from mcu_sim.runner.ray_worker import run_episode_task

    class _BrokenMonitor:  # its actor handle fails, as when the monitor actor died
        class report:  # the shape of a Ray actor method: monitor.report.remote(...)
            @staticmethod
            def remote(*_: Any) -> Any:
                raise RuntimeError("monitor actor died")

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false")
    payload = _task_payload(config, tmp_path / "run", "ep-0", 1)
    assert "episode" in run_episode_task(payload)
    assert fresh_worker._current is not None
    with pytest.raises(RuntimeError, match="monitor actor died"):
        run_episode_task(
            {**payload, "job": ["ep-1", 2], "thread_id": "ep-1", "monitor": _BrokenMonitor()}
        )
    assert fresh_worker._current is None  # the next task builds fresh parts
    assert "episode" in run_episode_task({**payload, "job": ["ep-2", 3], "thread_id": "ep-2"})


def test_a_worker_leaves_a_finished_episodes_checkpoints_to_the_driver(
    fake_openai: FakeOpenAIServer, tmp_path: Path, fresh_worker: Any
) -> None:
    """With keep_checkpoints=last the thread goes only once the driver has written the
    episode file: a task that finished never deletes it (its result may yet be lost)."""
    import sqlite3

    from mcu_sim.runner.ray_worker import run_episode_task

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false", "run.keep_checkpoints=last")
    run_root = tmp_path / "run"
    result = run_episode_task(_task_payload(config, run_root, "ep-0", 5))
    assert "episode" in result
    with sqlite3.connect(RunDir(run_root).checkpoints) as reader:
        rows = dict(reader.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY 1"))
    assert set(rows) == {"ep-0"} and rows["ep-0"] > 1


def test_the_ray_driver_deletes_each_written_episodes_thread_with_keep_last(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    import sqlite3

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false", "run.keep_checkpoints=last")
    jobs = plan_jobs(2, 40)
    report = asyncio.run(make_runner(config, tmp_path / "ray", backend="ray").run_jobs(jobs))
    assert sorted(report.finished) == [job.episode_id for job in jobs]
    with sqlite3.connect(RunDir(tmp_path / "ray").checkpoints) as reader:
        assert reader.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)
    again = asyncio.run(make_runner(config, tmp_path / "ray", backend="ray").run_jobs(jobs))
    assert again.finished == [] and len(again.skipped) == 2


@pytest.mark.parametrize("tiny_disk", ["300k"], indirect=True)
def test_a_full_disk_stops_a_ray_run_and_a_rerun_resumes_it(
    local_ray: Any, fake_openai: FakeOpenAIServer, tmp_path: Path, tiny_disk: Path
) -> None:
    """Workers that cannot write their checkpoints report it as a storage error, not as the
    episode's failure: the driver starts nothing more, stops those in flight and raises
    one error; with room again the same run finishes every episode exactly once."""
    from mcu_sim.runner.write_errors import RunStorageError
    from tests.conftest import remount

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false", "llm.cache.enabled=false")
    out, jobs = tiny_disk / "run", plan_jobs(12, 0)
    with pytest.raises(RunStorageError) as stopped:
        asyncio.run(RayEpisodeRunner(config, out, max_in_flight=2).run_jobs(jobs))
    assert str(out) in str(stopped.value) and "--resume" in str(stopped.value)
    before = set(RunDir(out).finished_ids())
    assert len(before) < len(jobs)  # the disk really filled up
    assert list((out / "failures").glob("*")) == []  # no episode is blamed for it
    asked = sum(1 for r in fake_openai.chat_requests if schema_name(r.body) == "PersonaOutput")
    assert asked < len(jobs)  # the driver stopped starting episodes

    remount(tiny_disk, "rw,size=64m")
    again = asyncio.run(RayEpisodeRunner(config, out, max_in_flight=2).run_jobs(jobs))
    assert again.failed == {} and set(again.finished).isdisjoint(before)
    assert sorted(RunDir(out).finished_ids()) == sorted(j.episode_id for j in jobs)
    assert RunDir(out).read_manifest()["state"] == "complete"


@pytest.mark.parametrize("tiny_disk", ["2m"], indirect=True)
def test_a_worker_reports_a_full_disk_as_a_storage_error_not_a_failure(
    fake_openai: FakeOpenAIServer, tmp_path: Path, fresh_worker: Any, tiny_disk: Path
) -> None:
    import errno
    import os

    from mcu_sim.runner.ray_worker import run_episode_task

    fake_openai.handler = scripted_answer
    config = _config(fake_openai, tmp_path, "images.enabled=false")
    payload = _task_payload(config, tiny_disk / "run", "ep-0", 1)
    assert "episode" in run_episode_task(payload)  # the session is set up, with room
    filler = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(filler, b"\0" * 65536)
    finally:
        os.close(filler)
    result = run_episode_task({**payload, "job": ["ep-1", 2], "thread_id": "ep-1"})
    assert "failure" not in result and "episode" not in result, result
    error = result["storage"]
    assert getattr(error, "errno", None) == errno.ENOSPC or "full" in str(error), error
