"""Hostile inputs, one test per class (issue 28): a server on 127.0.0.1 that stalls every
phase of a fetch, PostScript posing as JPEG, configs that leak or explode, episode files and
run folders built to crash or escape the viewer, and ``mcu validate`` on garbage."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcu_sim.config import ConfigError, load_config, render_config
from mcu_sim.redaction import mask_url
from mcu_sim.tools.base import InvalidImage, open_image, verify_image_bytes
from mcu_sim.tools.safe_download import FetchError, FetchPolicy, fetch_image
from mcu_sim.tools.web_search import WebImageSearch

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"

# ------------------------------------------------------------ a hostile server


class HostileServer:
    """Raw sockets on 127.0.0.1; the request path picks how the answer misbehaves."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket, data: bytes, pause: float = 0.1) -> None:
        for byte in data:
            if self.stop.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(pause)

    def _serve(self, conn: socket.socket) -> None:
        ends = time.monotonic() + 20
        try:
            request = conn.recv(65536).decode("latin-1")
            path = request.split(" ", 2)[1] if " " in request else "/"
            if path == "/slow-status.jpg":  # the status line, one byte at a time
                self._drip(conn, b"HTTP/1.1 200 OK\r\n" * 20)
            elif path == "/slow-headers.jpg":  # headers that never end
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n")
                self._drip(conn, b"X-Pad: " + b"a" * 400)
            elif path == "/continue.jpg":  # endless informational answers
                while time.monotonic() < ends and not self.stop.is_set():
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    time.sleep(0.05)
            elif path.startswith("/hop"):  # each redirect answers just in time
                number = int(path[4:].split(".")[0] or 0)
                time.sleep(0.45)
                conn.sendall(
                    f"HTTP/1.1 302 Found\r\nLocation: /hop{number + 1}.jpg\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
            elif path == "/eps.jpg":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(EPS)}\r\n\r\n".encode()
                    + EPS
                )
            elif path.startswith("/search"):  # a result page (Bing's format) of stalls
                links = "".join(
                    '<div class="imgpt"><a class="iusc" m="'
                    + json.dumps({"murl": f"{self.base}{p}"}).replace('"', "&quot;")
                    + '" href="#">x</a></div>'
                    for p in ("/slow-status.jpg", "/continue.jpg", "/slow-headers.jpg")
                )
                body = f"<html><body>{links}</body></html>".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            elif path.startswith("/drip-page"):  # a result page that never finishes
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
                self._drip(conn, b"<html>" + b" " * 400, pause=0.1)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


@pytest.mark.parametrize(
    "path", ["/slow-status.jpg", "/slow-headers.jpg", "/continue.jpg", "/hop0.jpg"]
)
def test_every_phase_of_a_fetch_counts_against_one_deadline(hostile, path) -> None:
    policy = FetchPolicy(allow_loopback=True, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(FetchError, match="took longer than 1 s"):
        fetch_image(hostile.base + path, policy)
    assert time.monotonic() - started < 3


def test_a_search_ends_at_its_crawl_timeout(hostile, tmp_path) -> None:
    for page in ("/search?q={query}&o={offset}", "/drip-page?q={query}&o={offset}"):
        search = WebImageSearch(
            search_url=hostile.base + page,
            allow_loopback=True,
            timeout_s=10,  # each fetch alone could take 10 s; the search may take 1.5
            crawl_timeout_s=1.5,
            threads=2,
        )
        started = time.monotonic()
        found, _refusals = search.search_with_report("a cat", ["cat"], 2, tmp_path / "out")
        assert time.monotonic() - started < 4.5, page
        assert found == []
    time.sleep(0.5)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written after the deadline


# ------------------------------------------------------------ image decoders


def test_postscript_named_jpeg_is_refused_before_any_decoder(hostile, tmp_path, monkeypatch):
    marker = tmp_path / "ghostscript-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    gs = fake_bin / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    with pytest.raises(InvalidImage, match="only JPEG, PNG, GIF, WEBP, BMP"):
        verify_image_bytes(EPS)
    with pytest.raises(FetchError, match="not a decodable image"):
        fetch_image(hostile.base + "/eps.jpg", FetchPolicy(allow_loopback=True, timeout_s=5))
    named = tmp_path / "photo.jpg"
    named.write_bytes(EPS)
    from PIL import UnidentifiedImageError

    with pytest.raises(UnidentifiedImageError):
        open_image(named)
    assert not marker.exists()


# ------------------------------------------------------------ config


SECRET = "planted-hunter2-0123456789"


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


def test_config_errors_never_quote_the_offending_text(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(f"llm:\n  provider:\n    model: x\n    {SECRET}: : [\n")
    assert "line 4" in _error(path=bad) and SECRET not in _error(path=bad)
    bad.write_text(f"llm:\n  provider:\n    model: '{SECRET}\n")
    assert SECRET not in _error(path=bad)
    url = f"http://user:{SECRET}@h/v1"
    for environ in (
        {"MCU__LLM__PROVIDER__BASE_URL": f"{url} : ["},
        {"MCU__LLM__PROVIDER__MAX_ATTEMPTS": SECRET},
        {"MCU__RUN__SEED": f"[{SECRET}"},
    ):
        message = _error(environ=environ)
        assert next(iter(environ)) in message and SECRET not in message
    for override in (
        f"llm.provider.max_attempts={SECRET}",
        f"llm.provider.timeout_s=[{SECRET}",
        f"llm.provider.timeout_s='{SECRET}",
        SECRET,
    ):
        assert SECRET not in _error(overrides=[override], environ={})


def test_masking_survives_spacing_and_odd_passwords_and_keeps_templates() -> None:
    for url in (
        f" http://user:{SECRET}@host/v1",
        f"\thttp://user:{SECRET}@host/v1 ",
        f"HTTP://user:{SECRET}@host/v1",
        f"http://user:{SECRET}#x@host/v1",
        f"http://user:{SECRET}?x@host",
        f"https://host/v1?api-key={SECRET}&x=1",
        f"https://host/v1#access_token={SECRET}",
    ):
        assert SECRET not in mask_url(url), url
    template = f"http://h/s?q={{query}}&first={{offset}}&key={SECRET}"
    assert mask_url(template) == "http://h/s?q={query}&first={offset}&key=***"
    config = load_config(
        overrides=[
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url=' http://u:{SECRET}@h/v1'",
            f"images.web_search.search_url={template}",
        ],
        environ={},
    )
    shown = render_config(config)
    assert SECRET not in shown and "{query}" in shown and "{offset}" in shown


def test_a_masked_url_anywhere_is_refused_on_reload(tmp_path) -> None:
    template = f"http://h/s?q={{query}}&first={{offset}}&key={SECRET}"
    config = load_config(overrides=[f"images.web_search.search_url={template}"], environ={})
    copied = tmp_path / "config.yaml"
    copied.write_text(render_config(config))  # what a run directory holds
    message = _error(path=copied, environ={})
    assert "'images.web_search.search_url' holds masked credentials" in message
    assert "MCU__IMAGES__WEB_SEARCH__SEARCH_URL" in message
    env = {"MCU__IMAGES__WEB_SEARCH__SEARCH_URL": template}
    assert load_config(copied, environ=env).images.web_search.search_url == template


def test_unreadable_config_files_are_config_errors(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"llm:\n  provider: {model: \xff\xfe\xfa}\n")
    assert "not UTF-8" in _error(path=bad)
    for text in ("a: " + "[" * 5000 + "]" * 5000, "a: " + "{b: " * 5000 + "1" + "}" * 5000):
        bad.write_text(text + "\n")
        assert "nested" in _error(path=bad)
    bad.write_text("r: &r [*r]\n")  # an alias inside its own anchor
    assert "nested" in _error(path=bad)


def test_yaml_alias_bombs_are_refused_fast(tmp_path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(lines) + "\n"
    assert len(bomb) < 600
    bad = tmp_path / "c.yaml"
    bad.write_text(bomb)
    started = time.monotonic()
    assert "expands to more than" in _error(path=bad)
    small = "x: &x [1, 2]\nfilters:\n  unsafe_labels: [" + ", ".join(["*x"] * 9) + "]\n"
    bad.write_text(small)  # under the bound: reported with a bounded description
    assert "filters.unsafe_labels" in _error(path=bad)
    env = {"MCU__FILTERS__UNSAFE_LABELS": bomb.replace("\n", " ").replace("a: ", "- ", 1)}
    with pytest.raises(ConfigError):
        load_config(environ=env)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("images.web_search.max_bytes=-5", "images.web_search.max_bytes"),
        ("images.web_search.timeout_s=0", "images.web_search.timeout_s"),
        ("images.face.height=-1", "images.face.height"),
        ("images.qa.nsfw_threshold=7", "images.qa.nsfw_threshold"),
        ("filters.clip_threshold=nan", "filters.clip_threshold"),
        ("run.shard_size=0", "run.shard_size"),
        ("llm.provider.timeout_s=-3", "llm.provider.timeout_s"),
    ],
)
def test_numeric_settings_are_bounded(override, key) -> None:
    assert f"'{key}'" in _error(overrides=[override], environ={})


def test_every_numeric_setting_has_both_bounds() -> None:
    import typing

    import annotated_types
    from pydantic import BaseModel

    from mcu_sim.config import Config

    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            args = typing.get_args(annotation)
            if typing.get_origin(annotation) is dict:
                args, prefix_name = (args[1],), f"{prefix}{name}.<name>"
            else:
                prefix_name = f"{prefix}{name}"
            models = [a for a in (annotation, *args) if isinstance(a, type)]
            nested = [a for a in models if issubclass(a, BaseModel)]
            if nested:
                walk(nested[0], prefix_name + ".")
                continue
            if annotation is bool or not any(a in (int, float) for a in (annotation, *args)):
                continue
            kinds = {type(m) for m in field.metadata}
            low = kinds & {annotated_types.Ge, annotated_types.Gt}
            high = kinds & {annotated_types.Le, annotated_types.Lt}
            if not (low and high):
                missing.append(prefix_name)

    walk(Config, "")
    assert missing == []


# ------------------------------------------------------------ mcu validate


def _cli(*args: str):
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    return CliRunner().invoke(app, list(args))


def test_validate_reports_unreadable_files_without_a_traceback(tmp_path) -> None:
    cases = {
        "bad.json": b"{not json",
        "latin.json": b'{"episode_id": "\xff\xfe"}',
        "deep.json": b"[" * 10_000 + b"]" * 10_000,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "missing.json"]:
        result = _cli("validate", str(tmp_path / name))
        assert result.exit_code == 2, (name, result.output)
        assert isinstance(result.exception, SystemExit), name
        assert "Traceback" not in result.output


# ------------------------------------------------------------ the viewer


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mcu_sim.testing.fake_openai import FakeOpenAIServer
    from mcu_sim.viewer.sample import build_sample_run

    root = tmp_path_factory.mktemp("hardening") / "run"
    server = FakeOpenAIServer().start()
    try:
        build_sample_run(root, server)
    finally:
        server.stop()
    return root


@pytest.fixture
def run_copy(sample_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "deep" / "run"
    shutil.copytree(sample_run, target, ignore=shutil.ignore_patterns("view", "*.sqlite*"))
    return target


def test_the_run_index_survives_deep_files_and_odd_types(run_copy: Path) -> None:
    from mcu_sim.viewer.render import view

    (run_copy / "episodes" / "ep-deep.json").write_text("[" * 10_000 + "]" * 10_000)
    failures = run_copy / "failures"
    (failures / "ep-types.json").write_text(
        json.dumps({"failed_at": 5, "reason": 12345, "error_type": ["x"], "seed": "s"})
    )
    (failures / "ep-list.json").write_text(json.dumps([1, 2, 3]))
    (failures / "ep-deep-failure.json").write_text("{" + '"a":{' * 5000 + "}" * 5001)
    (run_copy / "manifest.json").write_text(json.dumps([1, 2]))
    html = view(run_copy).read_text()
    assert "ep-deep" in html and "nested too deeply" in html
    assert "12345" in html and "ep-list" in html


def test_hostile_episode_ids_cannot_name_files(run_copy: Path, tmp_path: Path) -> None:
    from mcu_sim.viewer.load import ViewerError
    from mcu_sim.viewer.render import page_path, view

    source = json.loads((run_copy / "episodes" / "ep-00000011.json").read_text())
    outside = tmp_path / "escaped"
    hostile_ids = ["../../escaped", str(outside), "..", "a/b", "ep\n", ".hidden"]
    for number, episode_id in enumerate(hostile_ids):
        (run_copy / "episodes" / f"ep-hostile{number}.json").write_text(
            json.dumps({**source, "episode_id": episode_id})
        )
        path = run_copy / "episodes" / f"ep-hostile{number}.json"
        assert _cli("validate", str(path)).exit_code == 1, episode_id
        with pytest.raises(ViewerError):
            page_path(run_copy / "view", episode_id)
    view(run_copy)
    written = {p.name for p in (run_copy / "view").iterdir()}
    assert written == {"index.html", "ep-00000011.html", "ep-00000012.html"}
    assert not list(tmp_path.glob("escaped*")) and not (run_copy.parent / "escaped.html").exists()


def test_serve_gives_only_pages_and_run_images(run_copy: Path, tmp_path: Path) -> None:
    from mcu_sim.viewer.render import view
    from mcu_sim.viewer.serve import make_server, page_url, serve_root

    (run_copy / "secret.txt").write_text("run secret")
    (run_copy / "view").mkdir()
    (run_copy / "view" / "notes.txt").write_text("not a page")
    page = view(run_copy / "episodes" / "ep-00000011.json", tmp_path / "elsewhere" / "p.html")
    root = serve_root(page, run_copy)
    assert root == tmp_path  # the common parent: far wider than what may be served
    (tmp_path / "outside.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    server = make_server(root, page_dir=page.parent, run_root=run_copy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = page_url(server, root, page)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        image = next((run_copy / "images").rglob("*.png")).relative_to(tmp_path).as_posix()
        base = url.rsplit("/elsewhere/", 1)[0]
        with urllib.request.urlopen(f"{base}/{image}", timeout=10) as response:
            assert response.read(4) == b"\x89PNG"
        refused = [
            "/",
            "/elsewhere/",
            "/deep/run/",
            "/deep/run/secret.txt",
            "/deep/run/view/notes.txt",
            "/deep/run/manifest.json",
            "/deep/run/episodes/ep-00000011.json",
            "/outside.png",
            "/../../../../etc/passwd",
            "/etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
        ]
        for path in refused:
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=10)
            assert info.value.code in (403, 404), path
    finally:
        server.shutdown()
        server.server_close()
