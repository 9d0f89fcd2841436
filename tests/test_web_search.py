"""Web image search against a real HTTP server on 127.0.0.1 serving a Bing-style result page.

The page links to good images and to hostile ones; the hardened downloader must keep the
first and refuse the others with a reason, without ever connecting to private addresses.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import ipaddress
import json
import re
import ssl
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.safe_download import FetchError, FetchPolicy, address_problem, fetch_image
from mcu_sim.tools.web_search import WebImageSearch

BIG_BODY = 50_000_000
MAX_BYTES = 1_000_000


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


GOOD_1 = _jpeg((200, 30, 30))
GOOD_2 = _jpeg((30, 200, 30))
GOOD_3 = _jpeg((30, 30, 200), size=(80, 80))


class Site:
    """What the fake search engine and image hosts serve, and what they were asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.base = ""
        self.result_paths: list[str] = []
        self.stop = threading.Event()

    def page(self) -> bytes:
        divs = []
        for link in self.result_paths:
            url = link if "://" in link else f"{self.base}{link}"
            meta = html.escape(
                json.dumps({"murl": url, "turl": url}, separators=(",", ":")), quote=True
            )
            divs.append(f'<div class="imgpt"><a class="iusc" m="{meta}" href="#">x</a></div>')
        return f"<html><body>{''.join(divs)}</body></html>".encode()


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, ctype: str | None, body: bytes, length: bool = True) -> None:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _stream_zeros(self, declare: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if declare:
                self.send_header("Content-Length", str(BIG_BODY))
            self.end_headers()
            block = b"\xff\xd8" + b"\x00" * (64 * 1024 - 2)
            try:
                for _ in range(BIG_BODY // len(block)):  # generated, never held in memory
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(100):  # one byte every 0.2 s: 20 s if nobody hangs up
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    site.stop.wait(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _gzip(self) -> None:
            body = gzip.compress(GOOD_1)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with site.lock:
                site.requests.append(self.path)
            path = self.path.split("?", 1)[0]
            routes = {
                "/good1.jpg": lambda: self._send(200, "image/jpeg", GOOD_1),
                "/good2.jpg": lambda: self._send(200, "image/jpeg", GOOD_2),
                "/good3.jpg": lambda: self._send(200, "image/jpeg; charset=binary", GOOD_3),
                "/dup.jpg": lambda: self._send(200, "image/jpeg", GOOD_1),
                "/fake.jpg": lambda: self._send(200, "image/jpeg", b"<html>not a jpeg</html>"),
                "/page.jpg": lambda: self._send(200, "text/html", b"<html>hello</html>"),
                "/huge.jpg": lambda: self._stream_zeros(declare=False),
                "/huge_declared.jpg": lambda: self._stream_zeros(declare=True),
                "/bomb.jpg": lambda: self._send(200, "image/png", _png_claiming(50_000, 50_000)),
                "/toolarge.jpg": lambda: self._send(200, "image/png", _png_claiming(8000, 6000)),
                "/to_private.jpg": lambda: self._redirect("http://10.0.0.1/secret.jpg"),
                "/to_metadata.jpg": lambda: self._redirect("http://169.254.169.254/latest.jpg"),
                "/to_good2.jpg": lambda: self._redirect("/good2.jpg"),
                "/missing.jpg": lambda: self._send(404, "text/plain", b"no"),
                "/slow.jpg": self._drip,
                "/gzipped.jpg": self._gzip,
            }
            if path == "/search":
                self._send(200, "text/html; charset=utf-8", site.page())
            elif path in routes:
                routes[path]()
            else:
                self._send(404, "text/plain", b"unknown")

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


def _self_signed(folder: Path) -> Path:
    """A PEM file holding a throwaway certificate for 127.0.0.1 and its key."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcu-sim test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = folder / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[tuple[Site, Path]]:
    pem = _self_signed(tmp_path)
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, pem
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


HOSTILE = {
    "/fake.jpg": "not a decodable image",
    "/page.jpg": "content-type text/html is not image/*",
    "/huge.jpg": f"body exceeds the {MAX_BYTES} byte cap",
    "/huge_declared.jpg": f"Content-Length {BIG_BODY} exceeds",
    "/bomb.jpg": "decompression bomb",
    "/toolarge.jpg": "exceeds the 40000000 pixel limit",
    "/to_private.jpg": "10.0.0.1 is a private address",
    "/to_metadata.jpg": "169.254.169.254 is a link-local address",
    "/missing.jpg": "HTTP 404",
    "/dup.jpg": "duplicate of",
}


def _searcher(site: Site, **kw: object) -> WebImageSearch:
    options: dict[str, object] = {
        "allow_loopback": True,
        "max_bytes": MAX_BYTES,
        "timeout_s": 10,
        "search_url": f"{site.base}/search?q={{query}}&first={{offset}}",
    }
    options.update(kw)
    return WebImageSearch(**options)  # type: ignore[arg-type]


async def test_good_images_arrive_and_hostile_ones_are_refused(site: Site, tmp_path: Path) -> None:
    site.result_paths = [
        "/good1.jpg",
        *[p for p in HOSTILE if p != "/dup.jpg"],
        "/dup.jpg",
        "ftp://127.0.0.1/file.jpg",
        f"http://127.0.0.2:{site.base.rsplit(':', 1)[1]}/other.jpg",
        "/to_good2.jpg",
        "/good3.jpg",
    ]
    search = _searcher(site)
    found = await search.search("a sunny beach", ["sunny", "beach & sea"], k=10, out_dir=tmp_path)

    assert [c.source_url for c in found] == [
        f"{site.base}/good1.jpg",
        f"{site.base}/to_good2.jpg",
        f"{site.base}/good3.jpg",
    ]
    for candidate, payload in zip(found, (GOOD_1, GOOD_2, GOOD_3), strict=True):
        assert candidate.module == "web_search"
        assert candidate.path.parent == tmp_path
        assert candidate.path.read_bytes() == payload
        assert candidate.path.name.startswith(f"web_{hashlib.sha256(payload).hexdigest()[:16]}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.path.name for c in found)

    reasons = dict(search.last_refusals)
    for path, expected in HOSTILE.items():
        assert expected in reasons[f"{site.base}{path}"], (path, reasons)
    assert "only http(s)" in reasons["ftp://127.0.0.1/file.jpg"]
    assert "loopback" in next(r for u, r in reasons.items() if "127.0.0.2" in u)
    assert len(reasons) == len(HOSTILE) + 2
    # the query reached the result page, URL-encoded; no file was requested twice
    assert any(r.startswith("/search?q=sunny+beach+%26+sea") for r in site.requests)
    assert site.requests.count("/good1.jpg") == 1


async def test_stops_after_k_images(site: Site, tmp_path: Path) -> None:
    site.result_paths = ["/good1.jpg", "/good2.jpg", "/good3.jpg"]
    found = await _searcher(site, threads=1).search("colours", [], k=2, out_dir=tmp_path)
    assert [c.path.read_bytes() for c in found] == [GOOD_1, GOOD_2]


async def test_unreachable_search_page_is_unavailable(tmp_path: Path) -> None:
    search = WebImageSearch(search_url="http://127.0.0.1:9/search?q={query}", allow_loopback=True)
    with pytest.raises(ToolUnavailable, match="search page unreachable"):
        await search.search("a cat", ["cat"], k=1, out_dir=tmp_path)


def test_loopback_refused_without_the_test_flag(site: Site) -> None:
    with pytest.raises(FetchError, match=r"127\.0\.0\.1 is a loopback address"):
        fetch_image(f"{site.base}/good1.jpg", FetchPolicy())
    assert site.requests == []  # refused before connecting
    fetched = fetch_image(f"{site.base}/good1.jpg", FetchPolicy(allow_loopback=True))
    assert (fetched.format, fetched.width, fetched.height) == ("JPEG", 64, 48)


def test_slow_and_compressed_bodies_are_refused(site: Site) -> None:
    policy = FetchPolicy(allow_loopback=True, timeout_s=1)
    with pytest.raises(FetchError, match="took longer than 1 s"):
        fetch_image(f"{site.base}/slow.jpg", policy)
    with pytest.raises(FetchError, match=r"compressed body \(gzip\) refused"):
        fetch_image(f"{site.base}/gzipped.jpg", policy)


def test_a_dns_lookup_that_hangs_ends_at_the_fetch_deadline(site: Site, monkeypatch) -> None:
    """The system resolver has no timeout of ours: a lookup that never answers (a dead DNS
    server, simulated here by the resolver call itself) must not outlive the fetch limit."""
    import socket
    import time

    real = socket.getaddrinfo
    release = threading.Event()

    def stuck(host, *args, **kwargs):
        if host == "images.example":
            release.wait(5)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    started = time.monotonic()
    try:
        with pytest.raises(
            FetchError, match=r"no DNS answer for images\.example within 0\.[0-9]+ s"
        ):
            fetch_image("http://images.example/good1.jpg", FetchPolicy(timeout_s=0.4))
        assert time.monotonic() - started < 2
    finally:
        release.set()
    port = site.base.rsplit(":", 1)[1]  # an answering resolver: the fetch goes through
    fetched = fetch_image(f"http://localhost:{port}/good1.jpg", FetchPolicy(allow_loopback=True))
    assert fetched.data == GOOD_1 and site.requests


def test_https_verifies_the_certificate(tls_site: tuple[Site, Path]) -> None:
    site, pem = tls_site
    trusted = FetchPolicy(allow_loopback=True, ca_certs=str(pem), timeout_s=5)
    fetched = fetch_image(f"{site.base}/good1.jpg", trusted)
    assert fetched.data == GOOD_1 and fetched.final_url == f"{site.base}/good1.jpg"
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_image(f"{site.base}/good2.jpg", FetchPolicy(allow_loopback=True, timeout_s=5))
    assert "/good2.jpg" not in site.requests


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:0a00:0001::1", "tunnels to a non-public address"),
    ],
)
def test_address_policy(address: str, problem: str | None) -> None:
    ip = ipaddress.ip_address(address)
    result = address_problem(ip)
    assert result == problem or (problem is not None and result is not None and problem in result)


def test_test_flag_allows_only_127_0_0_1() -> None:
    assert address_problem(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert address_problem(ipaddress.ip_address("127.0.0.2"), allow_loopback=True) == "loopback"
    assert address_problem(ipaddress.ip_address("::1"), allow_loopback=True) == "loopback"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http(s)"),
        ("gopher://example.com/x", "only http(s)"),
        ("http://user:pw@example.com/a.jpg", "credentials"),
        ("http://[::1]:80/a.jpg", "loopback"),
        ("http://10.0.0.1/a.jpg", "private"),
        ("http:///a.jpg", "no host"),
    ],
)
def test_bad_urls_are_refused_before_any_connection(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=re.escape(reason)):
        fetch_image(url, FetchPolicy(timeout_s=1))


def test_unknown_crawler_is_unavailable() -> None:
    ok, why = WebImageSearch(crawler="nonexistent.module:Nope").available()
    assert not ok and "crawler 'nonexistent.module:Nope' not found" in why
    assert WebImageSearch().available() == (True, "")
