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
the streamed body both capped at ``max_bytes``.

One deadline, ``timeout_s`` (or the caller's earlier one), holds for the whole fetch: DNS,
connect, TLS, the status line, headers (also sent a byte at a time, or as endless
``100 Continue`` lines), every redirect and the body. httpx applies its own per-phase
timeouts and the event loop cancels the whole exchange at the deadline (``asyncio.timeout``),
whatever phase it is in. A DNS lookup runs on a small thread pool and is given up at the
deadline (the resolver thread ends on its own timeout).
Afterwards Pillow decodes the bytes fully with a pixel cap (decompression bombs), as one
of the formats we accept only. Environment proxies are deliberately not used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

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


def describe_problem(problem: str) -> str:
    """``"loopback"`` -> ``"a loopback address"``; reads right for every label below."""
    if problem.startswith("not "):  # "not globally routable"
        return f"an address that is {problem}"
    if " " in problem:  # "tunnels to a non-public address"
        return f"an address that {problem}"
    article = "an" if problem[0] in "aeiou" else "a"
    return f"{article} {problem} address"


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


@functools.cache
def _resolver() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mcu-dns")


async def resolve_public(url: str, host: str, port: int, allow_loopback: bool) -> str:
    """Resolve ``host``; every address must pass :func:`address_problem`. Returns one to
    use. The lookup runs on our own small pool, so a caller's deadline can abandon it."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        lookup = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wrap_future(lookup)
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
            raise FetchError(url, f"{host} is {describe_problem(problem)}")
        if problem:
            raise FetchError(url, f"{host} resolves to {address}, {describe_problem(problem)}")
    return str(addresses[0])


def _client(policy: FetchPolicy, remaining: float) -> httpx.AsyncClient:
    import certifi

    context = ssl.create_default_context(cafile=policy.ca_certs or certifi.where())
    return httpx.AsyncClient(
        verify=context,
        trust_env=False,  # no environment proxies for strangers' URLs
        follow_redirects=False,  # each hop is checked by us
        timeout=httpx.Timeout(remaining),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


async def _read_body(url: str, response: httpx.Response, policy: FetchPolicy) -> bytes:
    """At most ``max_bytes`` as sent (no decoding), refusing compressed bodies."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(url, f"Content-Length {declared} exceeds the {policy.max_bytes} byte cap")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(url, f"compressed body ({encoding}) refused; we asked for identity")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > policy.max_bytes:
            raise FetchError(url, f"body exceeds the {policy.max_bytes} byte cap")
    return bytes(body)


async def _hop(
    client: httpx.AsyncClient, current: str, policy: FetchPolicy, phase: list[str]
) -> tuple[str | None, str, bytes]:
    """One checked GET: (redirect target or None, content type, body)."""
    scheme, host, port, host_header, path = _target(current)
    phase[:] = ["dns", host]
    address = await resolve_public(current, host, port, policy.allow_loopback)
    phase[:] = ["http", host]
    literal = f"[{address}]" if ":" in address else address
    headers = {
        "Host": host_header,
        "User-Agent": policy.user_agent,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    request = client.build_request(
        "GET", f"{scheme}://{literal}:{port}{path}", headers=headers, extensions=extensions
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise FetchError(current, f"network error: {type(exc).__name__}: {exc}") from exc
    try:
        if response.status_code in REDIRECT_CODES:
            location = response.headers.get("Location")
            if not location:
                raise FetchError(current, f"HTTP {response.status_code} redirect without Location")
            return urljoin(current, location.strip()), "", b""
        if response.status_code != 200:
            raise FetchError(current, f"HTTP {response.status_code}")
        content_type = _content_type(response)
        if not content_type.startswith("image/"):
            raise FetchError(current, f"content-type {content_type or 'missing'} is not image/*")
        if content_type == "image/svg+xml":
            raise FetchError(current, "SVG is not a raster image")
        try:
            return None, content_type, await _read_body(current, response, policy)
        except httpx.HTTPError as exc:
            raise FetchError(current, f"network error: {type(exc).__name__}: {exc}") from exc
    finally:
        await response.aclose()


async def fetch_image_async(
    url: str, policy: FetchPolicy | None = None, deadline: float | None = None
) -> FetchedImage:
    """Download and verify one image, or raise :class:`FetchError` with the reason.

    ``deadline`` (``time.monotonic()`` time) can end the fetch before ``timeout_s`` does,
    e.g. the end of a whole search.
    """
    policy = policy or FetchPolicy()
    started = time.monotonic()
    limit = (
        started + policy.timeout_s
        if deadline is None
        else min(deadline, started + policy.timeout_s)
    )
    phase = ["start", ""]
    current = url
    try:
        async with asyncio.timeout(max(limit - started, 0.0)):
            async with _client(policy, max(limit - started, 0.001)) as client:
                for _hop_number in range(policy.max_redirects + 1):
                    try:
                        target, content_type, data = await _hop(client, current, policy, phase)
                    except FetchError as exc:
                        if current == url:
                            raise FetchError(url, exc.reason) from exc
                        raise FetchError(url, f"redirected to {current}: {exc.reason}") from exc
                    if target is None:
                        break
                    current = target
                else:
                    raise FetchError(url, f"more than {policy.max_redirects} redirects")
    except TimeoutError:
        waited = max(limit - started, 0.0)
        if phase[0] == "dns":
            raise FetchError(url, f"no DNS answer for {phase[1]} within {waited:.3g} s") from None
        raise FetchError(url, f"took longer than {waited:g} s") from None
    try:
        fmt, width, height = verify_image_bytes(data, max_pixels=policy.max_pixels)
    except InvalidImage as exc:
        raise FetchError(url, str(exc)) from exc
    digest = hashlib.sha256(data).hexdigest()
    return FetchedImage(url, current, data, content_type, fmt, width, height, digest)


def fetch_image(
    url: str, policy: FetchPolicy | None = None, deadline: float | None = None
) -> FetchedImage:
    """Blocking :func:`fetch_image_async` on an event loop of its own (for the crawler's
    threads); from async code await :func:`fetch_image_async` instead."""
    return asyncio.run(fetch_image_async(url, policy, deadline))
