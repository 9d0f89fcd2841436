"""The viewer's pages in a real browser: headless Debian chromium driven by Playwright opens
them from disk (file://) and over ``--serve``; the tests assert on the DOM, on every image's
decoded size, on the absence of console errors and network requests, and save screenshots.

Needs /usr/bin/chromium (``scripts/ensure_chromium.sh`` installs it; tried here when root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.personas.schema import Episode
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.render import view
from mcu_sim.viewer.sample import HOSTILE, build_sample_run, edit_episode

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ENSURE = Path(__file__).resolve().parent.parent / "scripts" / "ensure_chromium.sh"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EP = "ep-00000011"


def chromium_or_skip() -> Path:
    """/usr/bin/chromium, installing it with apt-get first when missing and we are root."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(ENSURE)], check=False, timeout=1200)
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing and could not be installed; run scripts/ensure_chromium.sh "
            "(or `apt-get install chromium`) as root"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the dev extra: pip install playwright"
    )
    executable = chromium_or_skip()
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(executable), args=ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("viewer-browser") / "run"
    server = FakeOpenAIServer().start()
    try:
        build_sample_run(root, server)
    finally:
        server.stop()
    # model output that tries to run code: it must show up as text and never execute
    edit_episode(root, EP, lambda data: data["sessions"][0]["turns"][0].update(utterance=HOSTILE))
    return root


@dataclass
class Watched:
    """A page plus everything suspicious it did: console errors, exceptions, requests."""

    page: Any
    allowed: tuple[str, ...]
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"requests outside {self.allowed}: {self.foreign}"


def open_page(browser: Any, url: str, allowed: tuple[str, ...] = ("file://", "data:")) -> Watched:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(20_000)
    watched = Watched(page, allowed)
    page.on(
        "console",
        lambda m: (
            watched.errors.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
    page.on("requestfailed", lambda r: watched.errors.append(f"request failed: {r.url}"))
    page.on(
        "request",
        lambda r: None if r.url.startswith(allowed) else watched.foreign.append(r.url),
    )
    page.goto(url, wait_until="load")
    page.wait_for_function("Array.from(document.images).every(img => img.complete)")
    return watched


IMAGES_JS = """Array.from(document.images).map(img => ({
    natural: img.naturalWidth, naturalHeight: img.naturalHeight,
    declared: img.getAttribute('width'), src: img.getAttribute('src')}))"""


def assert_images_loaded(page: Any) -> list[dict[str, Any]]:
    images = page.evaluate(IMAGES_JS)
    for image in images:
        assert image["natural"] > 0 and image["naturalHeight"] > 0, image
        if image["declared"]:  # decoded size matches the size recorded in the episode
            assert image["natural"] == int(image["declared"]), image
    return images


def screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_episode_page_from_disk(browser: Any, sample_run: Path, tmp_path: Path) -> None:
    page_file = view(sample_run / "episodes" / f"{EP}.json")
    episode = Episode.model_validate_json((sample_run / "episodes" / f"{EP}.json").read_text())
    watched = open_page(browser, page_file.as_uri())
    page = watched.page

    assert page.locator("section.session").count() == len(episode.sessions)
    turns = [t for s in episode.sessions for t in s.turns]
    assert page.locator(".chat .bubble").count() == len(turns)
    assert page.locator(".bubble.user").count() == sum(
        t.speaker == episode.demographics.name for t in turns
    )
    for session in episode.sessions:
        section = page.locator(f"#session-{session.index}")
        assert section.locator(".bubble").count() == len(session.turns)
        assert session.date.strftime("%Y.%m.%d") in section.locator("h2").inner_text()

    aligned_sharing = {
        t.request_id
        for s in episode.sessions
        for t in s.turns
        if t.request_id
        and next(r for r in episode.image_requests if r.id == t.request_id).status == "aligned"
    }
    aligned_album = [r for r in episode.image_requests if r.origin == "album" and r.image]
    alternatives = sum(len(r.alternatives) for r in episode.image_requests)
    images = assert_images_loaded(page)
    shared_imgs = page.locator(".bubble figure.shared > img").count()
    assert shared_imgs == sum(1 for t in turns if t.request_id in aligned_sharing), (
        "every aligned sharing moment shows its image inline"
    )
    assert len(images) == 1 + len(aligned_album) + shared_imgs + alternatives

    unaligned = page.locator(".bubble figure.status-unaligned .placeholder")
    assert unaligned.count() == sum(1 for t in turns if t.sharing) - shared_imgs
    assert "no image" in unaligned.first.inner_text()

    # the hostile utterance is text on the page, and none of it ran
    assert page.evaluate("typeof window.__pwned") == "undefined"
    first = page.locator("#session-1 .bubble").first.locator(".utterance")
    assert first.inner_text() == HOSTILE

    # QA scores and rationale are in the hover text; the filtered image is marked
    (mark,) = episode.removals
    marked = page.locator(f'figure[data-request="{mark.target.removeprefix("image:")}"]').first
    assert "removed" in (marked.get_attribute("class") or "")
    assert "clip=0.050" in marked.get_attribute("title")
    assert "rationale: " in marked.get_attribute("title")
    assert marked.locator(".mark").inner_text().startswith("filtered · misaligned_image")

    timeline = page.locator("svg.timeline")
    assert timeline.locator("g.event").count() == len(episode.events.events)
    assert timeline.locator("g.edge").count() == sum(
        1 for e in episode.events.events if e.caused_by
    )
    box = timeline.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100

    screenshot(page, tmp_path / "episode.png")
    watched.check()
    page.close()


def visible_cards(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "article.episode-card", "cards => cards.filter(c => !c.hidden).map(c => c.dataset.status)"
    )


def test_run_index_from_disk(browser: Any, sample_run: Path, tmp_path: Path) -> None:
    index = view(sample_run)
    watched = open_page(browser, index.as_uri())
    page = watched.page
    assert sorted(visible_cards(page)) == ["complete", "failed", "filtered"]
    assert page.locator("article.episode-card:visible").count() == 3
    assert len(assert_images_loaded(page)) == 1  # the one generated face
    screenshot(page, tmp_path / "index.png")

    page.click('button[data-filter="failed"]')
    assert visible_cards(page) == ["failed"]
    assert page.locator("article.episode-card:visible").count() == 1
    assert "LLMOutputError" in page.locator("article.episode-card:visible").inner_text()
    assert page.get_attribute('button[data-filter="failed"]', "aria-pressed") == "true"
    screenshot(page, tmp_path / "index-failed.png")

    page.click('button[data-filter="complete"]')
    assert visible_cards(page) == ["complete"]
    page.click('button[data-filter="all"]')
    assert len(visible_cards(page)) == 3
    assert page.locator('button[data-filter="invalid"]').is_disabled()

    name = Episode.model_validate_json(
        (sample_run / "episodes" / "ep-00000012.json").read_text()
    ).demographics.name
    page.fill("#search", name.lower()[:4])
    assert "filtered" in visible_cards(page) and "failed" not in visible_cards(page)
    page.fill("#search", "")

    page.click('article[data-status="complete"] h2 a')
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/view/{EP}.html")
    assert page.locator("section.session").count() == 3
    assert_images_loaded(page)
    page.click("a.back")
    page.wait_for_load_state("load")
    assert page.url.endswith("/view/index.html")
    watched.check()
    page.close()


def test_served_page_loads_everything_from_localhost(browser: Any, sample_run: Path) -> None:
    from mcu_sim.viewer.serve import make_server, page_url, serve_root

    page_file = view(sample_run / "episodes" / f"{EP}.json")
    root = serve_root(page_file, sample_run)
    server = make_server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = page_url(server, root, page_file)
        origin = url.split("/view/")[0] + "/"
        watched = open_page(browser, url, allowed=(origin, "data:"))
        images = assert_images_loaded(watched.page)
        assert len(images) > 5
        watched.check()
        watched.page.close()
    finally:
        server.shutdown()
        server.server_close()


SAMPLE_DIALOGUES = Path(__file__).resolve().parent.parent / "data/samples/dialogues/plain.jsonl"


def test_augmented_run_in_the_browser(browser: Any, tmp_path: Path) -> None:
    """`mcu augment --mode dialogcc` on the shipped sample dialogues and image database,
    then `mcu view`: each page shows the "Source dialogue" card instead of a persona, every
    retrieved image decodes, and nothing errs or reaches outside the run."""
    pytest.importorskip("faiss")
    import sys

    from mcu_sim.runner.outputs import RunDir

    run = tmp_path / "run"
    server = FakeOpenAIServer().start()
    try:
        options = [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={server.url}",
            "llm.provider.model=fake-model",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
            "images.qa.scorers=[]",
            "images.qa.clip_threshold=-1",
        ]
        args = ["augment", str(SAMPLE_DIALOGUES), "--mode", "dialogcc", "--out", str(run)]
        args += ["--no-progress", *[x for o in options for x in ("--set", o)]]
        # the CLI in its own process: Playwright's sync API holds this thread's event loop
        cli = [sys.executable, "-m", "mcu_sim.cli"]
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    viewed = subprocess.run([*cli, "view", str(run)], capture_output=True, text=True, timeout=120)
    assert viewed.returncode == 0, viewed.stderr[-3000:]
    rundir = RunDir(run)
    episodes = [Episode.model_validate(rundir.read_episode(i)) for i in rundir.finished_ids()]
    assert len(episodes) == 4  # the four sample dialogues
    shown = 0
    for episode in episodes:
        watched = open_page(browser, (run / "view" / f"{episode.episode_id}.html").as_uri())
        page = watched.page
        card = page.locator("section#source.card")
        assert card.is_visible() and card.locator("h2").inner_text().startswith("Source dialogue")
        assert "(dialogcc)" in card.locator("h2").inner_text()
        assert episode.source.source_id in card.inner_text()
        assert page.locator("section#persona").count() == 0
        assert page.locator("section.session").count() == len(episode.sessions)
        turns = [t for s in episode.sessions for t in s.turns]
        assert page.locator(".chat .bubble").count() == len(turns)
        aligned = [r for r in episode.image_requests if r.status == "aligned"]
        assert page.locator(".bubble figure.shared > img").count() == len(aligned)
        shown += len(assert_images_loaded(page))
        if episode.episode_id == episodes[0].episode_id:
            screenshot(page, tmp_path / "augmented.png")
        watched.check()
        page.close()
    assert shown > 0  # the sample's cued turns got database images, and they decoded
