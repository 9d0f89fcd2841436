"""The episode viewer without a browser: page structure, escaping of model output, relative
links and embedded images, the run index (incl. failed and unreadable episodes), the CLI and
``--serve``. Episodes come from the real graph against the fake endpoint (once per module)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import pytest
from typer.testing import CliRunner

from mcu_sim.personas.schema import ASSISTANT, Episode
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.load import ViewerError
from mcu_sim.viewer.render import view
from mcu_sim.viewer.sample import HOSTILE, build_sample_run, edit_episode
from mcu_sim.viewer.timeline import timeline_svg

EP = "ep-00000011"


class Element:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.classes = set(attrs.get("class", "").split())
        self.text = ""


class Page(HTMLParser):
    """Every start tag with its attributes, and the text inside each element still open."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in {"img", "meta", "br", "input", "link", "path", "circle", "line"}:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
        ]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("viewer") / "run"
    server = FakeOpenAIServer().start()
    try:
        build_sample_run(root, server)
    finally:
        server.stop()
    yield root


@pytest.fixture
def run_copy(sample_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(sample_run, target, ignore=shutil.ignore_patterns("view", "*.sqlite*"))
    return target


def episode_of(run: Path, episode_id: str = EP) -> Episode:
    return Episode.model_validate_json((run / "episodes" / f"{episode_id}.json").read_text())


def test_episode_page_shows_sessions_bubbles_and_pictures(run_copy: Path) -> None:
    page_file = view(run_copy / "episodes" / f"{EP}.json")
    assert page_file == run_copy / "view" / f"{EP}.html"
    episode = episode_of(run_copy)
    page = Page(page_file.read_text())
    sessions = page.find("section", "session")
    assert [s.attrs["data-session"] for s in sessions] == ["1", "2", "3"]
    turns = [t for s in episode.sessions for t in s.turns]
    assert len(page.find("div", "bubble")) == len(turns)
    assert len(page.find("div", "assistant")) == sum(t.speaker == ASSISTANT for t in turns)
    # each sharing moment shows its request: a picture when aligned, else the reason
    shared = page.find("figure", "shared")
    assert len(shared) == sum(1 for t in turns if t.sharing)
    requests = {r.id: r for r in episode.image_requests}
    for figure in shared:
        request = requests[figure.attrs["data-request"]]
        assert f"module: {request.module or 'none'}" in figure.attrs["title"]
        if request.status == "aligned":
            assert "QA scores: aesthetic=5.200, clip=" in figure.attrs["title"]
            assert "rationale: " in figure.attrs["title"]
        else:
            assert "no image" in figure.text and request.reason in figure.text
    aligned = [r for r in episode.image_requests if r.status == "aligned"]
    assert aligned and len({f.attrs["data-request"] for f in shared} & {r.id for r in aligned})
    # the face, the album and the alternatives are pictures too
    (face,) = page.find("figure", "face")
    assert episode.face.prompt in face.text and "module: face-sdxl" in face.attrs["title"]
    assert len(page.find("div", "album-item")) == len(episode.device_images)
    assert len(page.find("figure", "alternative")) == 2
    # the real filter marked one image; the page marks that figure and lists the mark
    (mark,) = episode.removals
    marked = [f for f in shared if "removed" in f.classes]
    assert [f.attrs["data-request"] for f in marked] == [mark.target.removeprefix("image:")]
    assert "misaligned_image" in marked[0].text
    # gaps between sessions are computed from the dates
    meta = [e.text for e in page.find("p", "session-meta")]
    assert "first session" in meta[0] and "after session 1" in meta[1]
    # the timeline has one node per event and one arc per causal edge
    edges = sum(1 for e in episode.events.events if e.caused_by)
    assert len(page.find("g", "event")) == len(episode.events.events)
    assert len(page.find("g", "edge")) == edges


def test_model_output_is_escaped_everywhere(run_copy: Path) -> None:
    def poison(data: dict[str, Any]) -> None:
        data["sessions"][0]["turns"][0]["utterance"] = HOSTILE
        data["persona"][0]["sentence"] = HOSTILE
        data["events"]["events"][0]["event"] = HOSTILE
        data["narrative"]["narrative"] = HOSTILE
        data["demographics"]["name"] = '<b id="x">Bo"b</b>'
        for session in data["sessions"]:
            for turn in session["turns"]:
                if turn["speaker"] != ASSISTANT:
                    turn["speaker"] = data["demographics"]["name"]
        data["image_requests"][0]["description"] = '"><script>alert(1)</script>'

    edit_episode(run_copy, EP, poison)
    html = (view(run_copy / "episodes" / f"{EP}.json")).read_text()
    assert "<script" not in html.lower()  # an episode page needs no script at all
    assert "<b id=" not in html and "onerror=" not in html.replace("onerror=&#34;", "")
    assert html.count("&lt;script&gt;window.__pwned = 1&lt;/script&gt;") >= 4
    page = Page(html)
    bubble = page.find("div", "bubble")[0]
    assert HOSTILE in bubble.text  # shown as text, exactly as the model wrote it
    index = view(run_copy).read_text()
    assert index.lower().count("<script") == 1 and "&lt;b id=&#34;x&#34;&gt;" in index


def test_timeline_svg_is_wellformed_xml_with_escaped_text(run_copy: Path) -> None:
    episode = edit_episode(
        run_copy, EP, lambda d: d["events"]["events"][0].update(event="R&D <b>& co</b>")
    )
    svg = ET.fromstring(str(timeline_svg(episode.events, {1: 1})))
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text or "" for t in svg.iter(f"{ns}title")]
    assert any("R&D <b>& co</b>" in t for t in titles)
    assert len(list(svg.iter(f"{ns}circle"))) == len(episode.events.events)
    links = [a.get("href") for a in svg.iter(f"{ns}a")]
    assert "#session-1" in links


def assert_relative_and_present(page_file: Path) -> int:
    page = Page(page_file.read_text())
    checked = 0
    for element in page.find():
        for attr in ("src", "href"):
            value = element.attrs.get(attr)
            if not value or value.startswith("#") or value == "data:,":  # "data:," no favicon
                continue
            parsed = urlparse(value)
            assert not parsed.scheme and not parsed.netloc and not value.startswith("/"), value
            assert (page_file.parent / unquote(parsed.path)).is_file(), value
            checked += 1
    return checked


def test_links_are_relative_and_survive_moving_the_run(run_copy: Path, tmp_path: Path) -> None:
    index = view(run_copy)
    assert index == run_copy / "view" / "index.html"
    assert assert_relative_and_present(index) >= 3
    episode_page = run_copy / "view" / f"{EP}.html"
    assert assert_relative_and_present(episode_page) >= 8
    moved = tmp_path / "elsewhere" / "moved-run"
    shutil.move(run_copy, moved)
    assert assert_relative_and_present(moved / "view" / f"{EP}.html") >= 8
    # a page written outside the run still points at the run's images
    outside = view(moved / "episodes" / f"{EP}.json", tmp_path / "out" / "one.html")
    assert assert_relative_and_present(outside) >= 8


def test_embed_inlines_every_image_as_data_uri(run_copy: Path, tmp_path: Path) -> None:
    page_file = view(run_copy / "episodes" / f"{EP}.json", tmp_path / "x.html", embed=True)
    episode = episode_of(run_copy)
    records = {r.image.sha256 for r in episode.image_requests if r.image}
    records |= {a.sha256 for r in episode.image_requests for a in r.alternatives}
    records.add(episode.face.image.sha256)
    images = Page(page_file.read_text()).find("img")
    assert images
    seen = set()
    for img in images:
        head, _, data = img.attrs["src"].partition(",")
        assert head == "data:image/png;base64"
        seen.add(hashlib.sha256(base64.b64decode(data)).hexdigest())
    assert seen == records


def test_missing_or_escaping_image_paths_become_placeholders(run_copy: Path) -> None:
    episode = episode_of(run_copy)
    gone = next(r for r in episode.image_requests if r.origin == "sharing" and r.image)
    (run_copy / gone.image.path).unlink()

    def outside(data: dict[str, Any]) -> None:
        data["face"]["image"]["path"] = "../../etc/passwd"

    edit_episode(run_copy, EP, outside)
    page = Page(view(run_copy / "episodes" / f"{EP}.json").read_text())
    (figure,) = [f for f in page.find("figure", "shared") if f.attrs["data-request"] == gone.id]
    assert f"image file {gone.image.path} is missing" in figure.text
    assert "points outside the run directory" in page.find("figure", "face")[0].text
    assert all("passwd" not in img.attrs["src"] for img in page.find("img"))


def test_run_index_lists_every_episode_including_failed_and_invalid(run_copy: Path) -> None:
    (run_copy / "episodes" / "ep-broken.json").write_text('{"episode_id": "ep-broken"}')
    index = view(run_copy)
    page = Page(index.read_text())
    cards = {c.attrs["data-status"]: c for c in page.find("article", "episode-card")}
    assert sorted(cards) == ["complete", "failed", "filtered", "invalid"]
    failure = json.loads((run_copy / "failures" / "ep-00000013.json").read_text())
    assert "ep-00000013" in cards["failed"].text and "LLMOutputError" in cards["failed"].text
    assert failure["reason"][:40] in cards["failed"].text
    assert "not a valid episode" in cards["invalid"].text
    links = [a.attrs["href"] for a in page.find("a") if a.attrs.get("href", "").endswith(".html")]
    assert sorted(links) == [f"{EP}.html", "ep-00000012.html"]
    filters = [b.attrs["data-filter"] for b in page.find("button", "filter")]
    assert filters == ["all", "complete", "filtered", "failed", "invalid"]
    assert episode_of(run_copy, "ep-00000012").demographics.name in cards["filtered"].text
    filtered_page = (run_copy / "view" / "ep-00000012.html").read_text()
    assert "This episode is filtered out of exports" in filtered_page


def test_cli_view_writes_pages_and_reports_bad_targets(run_copy: Path, tmp_path: Path) -> None:
    from mcu_sim.cli import app

    runner = CliRunner()
    out = tmp_path / "pages" / "all.html"
    result = runner.invoke(app, ["view", str(run_copy), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert (out.parent / f"{EP}.html").is_file()
    by_id = runner.invoke(app, ["view", str(run_copy / EP), "-o", str(tmp_path / "one.html")])
    assert by_id.exit_code == 0 and (tmp_path / "one.html").is_file()
    missing = runner.invoke(app, ["view", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "neither an episode JSON file nor a run directory" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"episode_id": "x"}))
    invalid = runner.invoke(app, ["view", str(bad)])
    assert invalid.exit_code == 2 and "not a valid episode" in invalid.output
    with pytest.raises(ViewerError, match="is a folder"):
        view(run_copy, tmp_path)


def test_serve_root_serves_page_and_images(run_copy: Path) -> None:
    from mcu_sim.viewer.serve import make_server, page_url, serve_root

    page_file = view(run_copy / "episodes" / f"{EP}.json")
    root = serve_root(page_file, run_copy)
    assert root == run_copy.resolve()
    server = make_server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = page_url(server, root, page_file)
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/view/{EP}.html")
        with urllib.request.urlopen(url, timeout=10) as response:
            html = response.read().decode()
        src = next(i.attrs["src"] for i in Page(html).find("img"))
        with urllib.request.urlopen(urljoin(url, src), timeout=10) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        server.shutdown()
        server.server_close()


def test_viewer_imports_stay_light() -> None:
    code = (
        "import sys, mcu_sim.viewer.cli, mcu_sim.viewer.render, mcu_sim.viewer.sample;"
        "print(sorted(m for m in ('torch', 'diffusers', 'open_clip', 'faiss', 'PIL') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
