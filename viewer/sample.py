"""A realistic run directory for the viewer's tests and demos, without any real model.

The episodes come from the real episode graph talking to the fake OpenAI-compatible
endpoint (``mcu_sim.testing``); images are real small PNG files written with Pillow and
attached to some image requests as the aligner would; removal marks come from the real
filters. Every edited episode is validated by the schema before it is written back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mcu_sim.personas.schema import Episode
from mcu_sim.runner.outputs import RunDir, atomic_write_json

HOSTILE = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'


def generate_run(
    run_dir: Path, server: Any, seeds: Iterable[int], *, sessions: int = 3
) -> dict[str, str]:
    """Run the real graph for ``seeds`` against ``server`` (a started ``FakeOpenAIServer``
    whose ``handler`` is already set). Returns failures by episode id."""
    from mcu_sim.config import load_config
    from mcu_sim.runner.runner import EpisodeJob, EpisodeRunner, episode_id_for
    from mcu_sim.testing.fake_openai import client_for

    cache = run_dir.parent / f"{run_dir.name}-llm-cache.sqlite"
    config = load_config(
        None,
        [
            f"episode.sessions_min={sessions}",
            f"episode.sessions_max={sessions}",
            "episode.sharing_more_than=1",  # two moments a session: a small, stable sample
            "episode.preset=economy",
            "images.enabled=false",
            f"llm.cache.path={cache}",
        ],
    )
    runner = EpisodeRunner(config, run_dir, llm=client_for(server, cache))
    jobs = [EpisodeJob(episode_id_for(seed), seed) for seed in seeds]
    # A thread of its own: callers may already run an event loop (Playwright's sync API does).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        report = pool.submit(asyncio.run, runner.run_jobs(jobs)).result()
    return dict(report.failed)


def write_png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> dict[str, Any]:
    """A small real PNG (a colour block with a stripe); returns its record fields."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle(
        (0, size[1] // 3, size[0], size[1] // 2), fill=(255 - color[0], 255, 255 - color[2])
    )
    image.save(path, format="PNG")
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "width": size[0],
        "height": size[1],
    }


def edit_episode(
    run_dir: Path, episode_id: str, change: Callable[[dict[str, Any]], None]
) -> Episode:
    """Apply ``change`` to the episode's JSON, validate, write it back, refresh the index."""
    run = RunDir(run_dir)
    path = run.episode_path(episode_id)
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    episode = Episode.model_validate(data)
    atomic_write_json(path, episode.model_dump(mode="json"))
    run.rebuild_index()
    return episode


def _record(run_dir: Path, episode_id: str, name: str, n: int, module: str) -> dict[str, Any]:
    relative = f"images/{episode_id}/{name}.png"
    color = ((40 + n * 67) % 256, (90 + n * 131) % 256, (140 + n * 199) % 256)
    fields = write_png(run_dir / relative, (64 + 8 * (n % 4), 48), color)
    return {"path": relative, "module": module, "seed": n, **fields}


def show_album_photo(data: dict[str, Any], request: dict[str, Any], photo: int) -> None:
    """Make the sharing moment of ``request`` show album photo ``photo`` from the phone."""
    request["device_image_id"] = photo
    for session in data["sessions"]:
        for turn in session["turns"]:
            if turn.get("request_id") == request["id"]:
                turn["sharing"].update(image_source="mobile", image_id_from_mobile=photo)


def attach_images(run_dir: Path, episode_id: str, *, low_clip: bool = True) -> Episode:
    """Give the face, the first two album photos and every other sharing moment a real
    image; the second sharing moment shows album photo 2 again (whatever the scripted
    dialogue chose), one sharing image gets two alternatives, one (``low_clip``) a CLIP
    score below the filter threshold. Then recompute the removal marks with the real
    filters."""
    from mcu_sim.graphs.filters import FilterSettings, filter_episode

    def change(data: dict[str, Any]) -> None:
        moments = [r for r in data["image_requests"] if r["origin"] == "sharing"]
        if len(moments) > 1 and len(data["device_images"]) > 1:
            show_album_photo(data, moments[1], data["device_images"][1]["id"])
        data["face"].update(
            status="generated",
            reason=None,
            image=_record(run_dir, episode_id, "face", 0, "face-sdxl"),
        )
        album = [r for r in data["image_requests"] if r["origin"] == "album"][:2]
        sharing = [r for r in data["image_requests"] if r["origin"] == "sharing"][::2]
        for n, request in enumerate([*album, *sharing], start=1):
            module = "retrieval" if request["origin"] == "album" else "web_search"
            record = _record(run_dir, episode_id, request["id"], n, module)
            record["scores"] = {"clip": 0.31, "aesthetic": 5.2, "nsfw": 0.01}
            request.update(status="aligned", reason=None, module=module, image=record)
        by_id = {r["id"]: r for r in data["image_requests"]}
        for request in data["image_requests"]:  # as the aligner's link_album step does
            ref = request.get("device_image_id")
            source = by_id.get(f"album-{ref}") if request["origin"] == "sharing" else None
            if source and source["status"] == "aligned" and request["status"] != "aligned":
                request.update(
                    status="aligned", reason=None, module=source["module"], image=source["image"]
                )
        if sharing:
            first = sharing[0]
            first["alternatives"] = [
                _record(run_dir, episode_id, f"{first['id']}-alt{k}", 40 + k, "web_search")
                for k in (1, 2)
            ]
            if low_clip:
                sharing[-1]["image"]["scores"]["clip"] = 0.05

    edit_episode(run_dir, episode_id, change)
    settings = FilterSettings(min_sessions=1, max_sessions=20)
    episode = Episode.model_validate_json(RunDir(run_dir).episode_path(episode_id).read_text())
    marked = filter_episode(episode, settings)
    return edit_episode(
        run_dir,
        episode_id,
        lambda data: data.update(
            removals=[r.model_dump(mode="json") for r in marked.removals], status=marked.status
        ),
    )


def build_sample_run(run_dir: Path, server: Any, *, sessions: int = 3) -> dict[str, Any]:
    """Two finished episodes (the first with images and removal marks, the second marked
    filtered as a whole) and one failed episode. ``server`` is a started fake endpoint."""
    from mcu_sim.testing.fake_openai import schema_name
    from mcu_sim.testing.scripted import scripted_answer, scripted_object

    server.handler = scripted_answer
    failed = generate_run(run_dir, server, [11, 12], sessions=sessions)
    if failed:
        raise RuntimeError(f"sample episodes failed: {failed}")
    episode = attach_images(run_dir, "ep-00000011")
    whole = edit_episode(
        run_dir,
        "ep-00000012",
        lambda data: data.update(
            status="filtered",
            removals=[
                {
                    "rule": "session_count",
                    "target": "episode",
                    "reason": f"{sessions} sessions, outside 4-8",
                    "scores": {"sessions": sessions},
                    "threshold": "4-8",
                }
            ],
        ),
    )

    def broken_events(body: dict[str, Any]) -> Any:
        if schema_name(body) != "EventsOutput":
            return scripted_answer(body)
        answer = scripted_object(body)
        answer["events"][-1]["caused_by"] = 99  # a cause that does not exist
        return json.dumps(answer)

    server.handler = broken_events
    failures = generate_run(run_dir, server, [13], sessions=sessions)
    server.handler = scripted_answer
    return {"episodes": [episode, whole], "failed": failures}
