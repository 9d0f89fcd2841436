"""A keep-alive HTTP/1.1 client on asyncio's transports (``http_client: direct``).

With the SDK out of the way, aiohttp's client was the largest share of the framework's CPU
per LLM call left: timers, tracing hooks, cookie jar and connector bookkeeping on every
request. A Chat Completions call needs none of it: one POST of a JSON body, one answer
framed by ``Content-Length`` or chunked encoding, on a connection kept for the next call.
That is all this module does. It sends ``Accept-Encoding: identity`` so answers come
uncompressed, refuses header values that would break the request's framing, and caps what
a server may send. Proxies are not spoken here: :mod:`mcu_sim.agents.llm.client.direct_http` sends a
proxied URL through aiohttp.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

KEEPALIVE_S = 15.0  # an idle connection older than this is closed, not reused
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class HTTPResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class ProtocolError(ConnectionError):
    """The server's answer broke HTTP/1.1 framing (or a size cap)."""


class _Stale(ConnectionError):
    """A reused connection closed before any byte of the answer: safe to send again."""


class _Head(NamedTuple):
    status: int
    headers: dict[str, str]
    length: int | None
    chunked: bool
    keep_alive: bool


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    status = int(code)
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None
    if status in NO_BODY_STATUSES or 100 <= status < 200:
        length = 0
    elif not chunked and "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError(f"bad Content-Length: {headers['content-length']!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise ProtocolError(f"Content-Length {length} is out of bounds")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    if length is None and not chunked:
        keep_alive = False  # the body ends when the server closes
    return _Head(status, headers, length, chunked, keep_alive)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self.closed = False
        self._buffer = bytearray()
        self._answer: asyncio.Future[HTTPResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: _Head | None = None
        self._chunks: list[bytes] = []
        self._body_bytes = 0  # of the chunks so far
        self._received = 0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection's framing is lost
            return
        self._buffer += data
        self._received += len(data)
        try:
            self._advance(eof=False)
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._finish_at_close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish_at_close(exc)

    # -- requests
    def send(self, request: bytes, deadline: float) -> asyncio.Future[HTTPResponse]:
        """Write ``request``; the answer, or ``TimeoutError`` at ``deadline`` (loop time).

        One timer on the loop per request: ``asyncio.timeout`` around the await cost
        several times as much (a context manager, the current task, a reschedule)."""
        assert self.transport is not None and self._loop is not None
        answer = self._answer = self._loop.create_future()
        self._head, self._chunks, self._body_bytes, self._received = None, [], 0, 0
        self._buffer.clear()
        self._timer = self._loop.call_at(deadline, self._time_out)
        self.transport.write(request)
        return answer

    def _time_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("no answer in time"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.abort()

    def _finish_at_close(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        try:
            self._advance(eof=True)
        except ProtocolError as error:
            self._fail(error)
            return
        if self._answer.done():
            return
        if self._received == 0:
            self._fail(_Stale("the server closed the connection before answering"))
        else:
            why = f": {exc}" if exc else ""
            self._fail(ProtocolError(f"the server closed the connection mid-answer{why}"))

    def _advance(self, eof: bool) -> None:
        """Parse what has arrived; resolve the answer once it is complete."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError("the answer's headers exceed 64 KiB")
                return
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        head = self._head
        if head.length is not None:
            if len(self._buffer) > head.length:
                self.close()  # more than the answer: do not reuse a desynchronised stream
            if len(self._buffer) >= head.length:
                self._resolve(bytes(self._buffer[: head.length]))
        elif head.chunked:
            if self._read_chunks():
                self._resolve(b"".join(self._chunks))
        elif eof:
            self._resolve(bytes(self._buffer))
        elif len(self._buffer) > MAX_BODY_BYTES:
            raise ProtocolError("the answer exceeds 64 MiB")

    def _read_chunks(self) -> bool:
        """Move complete chunks out of the buffer; True once the last chunk is in."""
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size_text = bytes(self._buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from None
            if size == 0:  # the last chunk, then optional trailers, then an empty line
                end = self._buffer.find(b"\r\n\r\n", line_end)
                if 0 <= end < len(self._buffer) - 4:
                    self.close()  # bytes after the answer: do not reuse this stream
                return end >= 0
            if len(self._buffer) < line_end + 2 + size + 2:
                return False
            start = line_end + 2
            self._chunks.append(bytes(self._buffer[start : start + size]))
            del self._buffer[: start + size + 2]
            self._body_bytes += size
            if self._body_bytes > MAX_BODY_BYTES:
                raise ProtocolError("the answer exceeds 64 MiB")

    def _resolve(self, body: bytes) -> None:
        head = self._head
        assert head is not None and self._answer is not None
        self._stop_timer()
        if not head.keep_alive:
            self.close()
        self._answer.set_result(HTTPResponse(head.status, head.headers, body))


@functools.lru_cache(maxsize=64)
def _route(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(pool key, Host header, request target) of ``url``, worked out once per URL: a
    client posts to the same one on every call."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6
    if port != default_port:
        host = f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), host, target


def _request_bytes(target: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    """A POST of ``body``; the framing headers are ours, whatever ``headers`` says."""
    head = _request_head(target, host, tuple(headers.items()))
    return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


@functools.lru_cache(maxsize=64)
def _request_head(target: str, host: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The request line and every header but ``Content-Length``, checked once: an LLM
    client sends the same ones on every call."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}"]
    fixed = {"accept-encoding": "identity", "connection": "keep-alive"}
    given = {name.lower(): (name, value) for name, value in headers}
    given.pop("content-length", None)  # ours, added per request
    for key, value in fixed.items():
        given[key] = (key.title(), value)
    given.setdefault("user-agent", ("User-Agent", "mcu-sim"))
    for name, value in given.values():
        if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
            # the value may be a credential: name the header, never print the value
            raise ValueError(f"the {name.strip()!r} header holds a line break or colon")
        if not (name.isascii() and value.isascii()):
            raise ValueError(f"the {name.strip()!r} header holds a character outside ASCII")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class Http11Client:
    """A pool of keep-alive connections per (scheme, host, port). ``timeout_s`` bounds a
    whole request: connecting, sending and reading the answer."""

    def __init__(self, timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout_s = timeout_s
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self.connections_made = 0  # for tests and benchmarks: how often the pool connected

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HTTPResponse:
        key, host, target = _route(url)
        request = _request_bytes(target, host, headers, body)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        return await self._exchange(key, request, deadline)

    async def _exchange(
        self, key: tuple[str, str, int], request: bytes, deadline: float
    ) -> HTTPResponse:
        while True:
            connection = self._take_idle(key)
            reused = connection is not None
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect(key)
            try:
                answer = await connection.send(request, deadline)
            except _Stale:
                self._open.discard(connection)
                if reused:
                    continue  # the server dropped an idle connection: send on a new one
                raise
            except BaseException:  # a timeout or cancel leaves the connection mid-answer
                connection.abort()
                self._open.discard(connection)
                raise
            if connection.closed:
                self._open.discard(connection)
            else:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(key, deque()).append(connection)
            return answer

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: least likely to be dropped
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, hostname, port = key
        context = None
        if scheme == "https":
            if self._ssl_context is None:  # built once: loading the CA store costs milliseconds
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, hostname, port, ssl=context, server_hostname=hostname if context else None
        )
        self._open.add(connection)
        self.connections_made += 1
        return connection

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
