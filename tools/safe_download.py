"""Fetch one image from an untrusted URL without being turned against our own network.

Web search results are URLs chosen by strangers. Before any byte is requested:

- only ``http``/``https``, no credentials in the URL;
- the host is resolved once and every address it resolves to must be globally routable
  (no loopback, private, link-local such as 169.254.169.254, multicast, reserved or
  unspecified addresses, also when wrapped in IPv4-mapped IPv6). The connection then goes
  to the checked address itself (the ``Host`` header and TLS name stay the original host),
  so a second DNS answer cannot swap in an internal address. ``allow_loopback`` lets
  127.0.0.1 through, for tests only;
- redirects are followed by hand, each hop checked again, at most ``max_redirects``.

While downloading: status 200, ``Content-Type: image/*`` (not SVG), no compressed
transfer encoding (a gzip bomb would pass a byte cap on the wire), ``Content-Length`` and
the streamed body both capped at ``max_bytes``, and one deadline of ``timeout_s`` for the
whole fetch, redirects included, DNS lookups too (a lookup runs on a small thread pool and
is given up at the deadline; the resolver thread ends on its own timeout).
Afterwards Pillow decodes the bytes fully with a pixel cap (decompression bombs).
Environment proxies are deliberately not used for image downloads.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from mcu_sim.tools.base import InvalidImage, verify_image_bytes

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
LOOPBACK_FOR_TESTS = ipaddress.IPv4Address("127.0.0.1")
CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The URL was refused or failed; ``reason`` says why, in a few words."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class FetchPolicy:
    allow_loopback: bool = False
    max_bytes: int = 10_000_000
    timeout_s: float = 15.0
    max_pixels: int = 40_000_000
    max_redirects: int = 5
    user_agent: str = "Mozilla/5.0 (compatible; mcu-sim image fetcher)"
    ca_certs: str | None = None  # a PEM bundle instead of certifi's (corporate CAs, tests)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.timeout_s <= 0 or self.max_pixels < 1:
            raise ValueError("max_bytes, timeout_s and max_pixels must be positive")


@dataclass(frozen=True)
class FetchedImage:
    url: str
    final_url: str
    data: bytes
    content_type: str
    format: str
    width: int
    height: int
    sha256: str


def address_problem(ip: IPAddress, allow_loopback: bool = False) -> str | None:
    """Why we must not connect to ``ip`` (e.g. ``"private"``), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_loopback and ip == LOOPBACK_FOR_TESTS:
        return None
    checks = (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    )
    for attribute, label in checks:
        if getattr(ip, attribute):
            return label
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and address_problem(embedded, allow_loopback):
            return "tunnels to a non-public address"
    if not ip.is_global:
        return "not globally routable"
    return None


def _target(url: str) -> tuple[str, str, int, str, str]:
    """Validate ``url``; return (scheme, host, port, host header, request path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(url, f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(url, f"only http(s) URLs are fetched, not {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise FetchError(url, "URLs carrying credentials are refused")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError(url, "URL has no host")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise FetchError(url, f"host is not a valid domain name: {exc}") from exc
    default = 443 if scheme == "https" else 80
    port = port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, host_header, path


def _lookup(host: str, port: int, timeout_s: float | None) -> list[Any]:
    """``socket.getaddrinfo`` given up after ``timeout_s`` (the system resolver has no
    timeout of ours: a dead DNS server can hold a lookup for tens of seconds)."""
    if timeout_s is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    lookup = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return lookup.result(timeout=max(timeout_s, 0.0))
    except concurrent.futures.TimeoutError:
        lookup.cancel()  # if still queued; a running lookup ends on the resolver's timeout
        raise TimeoutError from None


@functools.cache
def _resolver() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mcu-dns")


def resolve_public(
    url: str, host: str, port: int, allow_loopback: bool, timeout_s: float | None = None
) -> str:
    """Resolve ``host`` (within ``timeout_s`` when given); every address must pass
    :func:`address_problem`. Returns one to use."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = _lookup(host, port, timeout_s)
        except TimeoutError:
            raise FetchError(url, f"no DNS answer for {host} within {timeout_s:.3g} s") from None
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(url, f"cannot resolve {host}: {exc}") from exc
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise FetchError(url, f"{host} resolves to no address")
    for address in addresses:
        problem = address_problem(address, allow_loopback)
        if problem and str(address) == host:
            raise FetchError(url, f"{host} is a {problem} address")
        if problem:
            raise FetchError(url, f"{host} resolves to {address}, a {problem} address")
    return str(addresses[0])


def _open(url: str, policy: FetchPolicy, deadline: float) -> tuple[Any, Any]:
    """One GET to the checked address, redirects not followed: (pool, urllib3 response)."""
    import urllib3

    scheme, host, port, host_header, path = _target(url)
    address = resolve_public(url, host, port, policy.allow_loopback, deadline - time.monotonic())
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(url, f"took longer than {policy.timeout_s:g} s")
    timeout = urllib3.Timeout(connect=remaining, read=remaining)
    common: dict[str, Any] = {"timeout": timeout, "retries": False, "maxsize": 1}
    if scheme == "https":
        import certifi

        pool: Any = urllib3.HTTPSConnectionPool(
            address,
            port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=policy.ca_certs or certifi.where(),
            server_hostname=host,
            assert_hostname=host,
            **common,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, **common)
    headers = {
        "Host": host_header,
        "User-Agent": policy.user_agent,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    try:
        response = pool.urlopen(
            "GET",
            path,
            headers=headers,
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        pool.close()
        raise FetchError(url, f"network error: {type(exc).__name__}: {exc}") from exc
    return pool, response


def _read_body(url: str, response: Any, policy: FetchPolicy, deadline: float) -> bytes:
    """Read at most ``max_bytes`` before ``deadline``, one socket read at a time.

    Each read waits only for the time left (the socket timeout is reset before every
    read), so a server dripping one byte at a time cannot stretch the fetch.
    """
    import urllib3

    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(url, f"Content-Length {declared} exceeds the {policy.max_bytes} byte cap")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(url, f"compressed body ({encoding}) refused; we asked for identity")
    sock = getattr(response.connection, "sock", None)
    body = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(url, f"took longer than {policy.timeout_s:g} s")
        if sock is not None:
            sock.settimeout(remaining)
        try:
            chunk = response.read1(CHUNK, decode_content=False)
        except urllib3.exceptions.HTTPError as exc:
            if time.monotonic() >= deadline:
                raise FetchError(url, f"took longer than {policy.timeout_s:g} s") from exc
            raise FetchError(url, f"network error: {type(exc).__name__}: {exc}") from exc
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > policy.max_bytes:
            raise FetchError(url, f"body exceeds the {policy.max_bytes} byte cap")


def fetch_image(url: str, policy: FetchPolicy | None = None) -> FetchedImage:
    """Download and verify one image, or raise :class:`FetchError` with the reason."""
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.timeout_s
    current = url
    for _hop in range(policy.max_redirects + 1):
        try:
            pool, response = _open(current, policy, deadline)
        except FetchError as exc:
            if current == url:
                raise
            raise FetchError(url, f"redirected to {current}: {exc.reason}") from exc
        try:
            if response.status in REDIRECT_CODES:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(url, f"HTTP {response.status} redirect without Location")
                current = urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise FetchError(url, f"HTTP {response.status}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not content_type.startswith("image/"):
                raise FetchError(url, f"content-type {content_type or 'missing'} is not image/*")
            if content_type == "image/svg+xml":
                raise FetchError(url, "SVG is not a raster image")
            data = _read_body(url, response, policy, deadline)
        except FetchError as exc:
            if exc.url != url:  # report against the URL the search gave us
                raise FetchError(url, exc.reason) from exc
            raise
        finally:
            response.close()  # never reuse a connection we may have abandoned mid-body
            pool.close()
        try:
            fmt, width, height = verify_image_bytes(data, max_pixels=policy.max_pixels)
        except InvalidImage as exc:
            raise FetchError(url, str(exc)) from exc
        digest = hashlib.sha256(data).hexdigest()
        return FetchedImage(url, current, data, content_type, fmt, width, height, digest)
    raise FetchError(url, f"more than {policy.max_redirects} redirects")
