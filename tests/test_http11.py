"""The direct transport's HTTP/1.1 client against a raw asyncio server on 127.0.0.1 that
answers with scripted bytes: framing (length, chunked, until close), keep-alive reuse, a
dropped idle connection, timeouts, broken answers and unsafe headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from mcu_sim.agents.llm.client.http11 import Http11Client, ProtocolError

BODY = b'{"ok": true}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n" + BODY


@dataclass
class Script:
    """What the server answers, one entry per request: bytes to send, then whether to
    close the connection; a float instead waits that long without answering."""

    answers: list[tuple[bytes, bool] | float] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def client() -> AsyncIterator[Http11Client]:
    """A pool with a 5 s request timeout, closed after the test."""
    pool = Http11Client(timeout_s=5)
    yield pool
    await pool.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        script.writers.append(writer)
        while (request := await _read_request(reader)) is not None:
            script.requests.append(request)
            answer = script.answers.pop(0)
            if isinstance(answer, float):
                await asyncio.sleep(answer)
                break
            data, close = answer
            writer.write(data)
            await writer.drain()
            if close:
                break
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1/chat/completions?x=1", script
    for writer in script.writers:
        writer.close()
    listener.close()
    await listener.wait_closed()


async def test_keep_alive_reuses_one_connection_and_frames_every_body(server, client) -> None:
    url, script = server
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n5\r\n: 1}\n\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    script.answers = [(OK, False), (chunked, False), (OK, False)]
    first = await client.post(url, {"Authorization": "Bearer k"}, b'{"q": 1}')
    second = await client.post(url, {}, b"{}")
    third = await client.post(url, {}, b"{}")
    assert (first.status, first.body) == (200, b'{"ok": true}')
    assert first.headers["content-type"] == "application/json"
    assert second.body == b'{"a": 1}\n' and third.body == first.body
    assert script.connections == 1 and client.connections_made == 1
    sent = script.requests[0].decode()
    assert sent.startswith("POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in sent and "\r\nContent-Length: 8\r\n" in sent
    assert "\r\nAuthorization: Bearer k\r\n" in sent and sent.endswith('\r\n\r\n{"q": 1}')


async def test_an_idle_connection_the_server_dropped_is_replaced(server, client) -> None:
    url, script = server
    script.answers = [(OK, True), (OK, False)]  # the server closes after its first answer
    closing = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    await client.post(url, {}, b"{}")
    await asyncio.sleep(0.05)
    again = await client.post(url, {}, b"{}")  # on a new connection, not an error
    script.answers = [(closing, False), (OK, False)]
    await client.post(url, {}, b"{}")  # "Connection: close": this one is not kept
    await client.post(url, {}, b"{}")
    assert again.status == 200
    assert script.connections == client.connections_made == 3


async def test_a_body_read_until_the_server_closes(server, client) -> None:
    url, script = server
    script.answers = [(b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\n\r\nslow down", True)]
    answer = await client.post(url, {}, b"{}")
    assert (answer.status, answer.body, answer.headers["retry-after"]) == (503, b"slow down", "2")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SMTP ready\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "mid-answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "out of bounds"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    ],
)
async def test_a_broken_answer_is_a_protocol_error(
    server, answer: bytes, message: str, client
) -> None:
    url, script = server
    script.answers = [(answer, True)]
    with pytest.raises(ProtocolError, match=message):
        await client.post(url, {}, b"{}")


async def test_a_timeout_drops_the_connection_and_the_next_call_works(server, client) -> None:
    url, script = server
    script.answers = [1.0, (OK, False)]
    client.timeout_s = 0.2
    with pytest.raises(TimeoutError):
        await client.post(url, {}, b"{}")
    answer = await client.post(url, {}, b"{}")
    assert answer.status == 200 and client.connections_made == 2


async def test_an_answered_request_leaves_no_timer_on_the_loop(server, client) -> None:
    """The per-request timer goes when the answer comes: a kept connection holds none, and
    an answer slower than the old deadline's distance is not cut by a stale timer."""
    url, script = server
    script.answers = [(OK, False), (OK, False)]
    client.timeout_s = 0.25
    assert (await client.post(url, {}, b"{}")).status == 200
    (connection,) = [c for idle in client._idle.values() for c in idle]
    assert connection._timer is None
    await asyncio.sleep(0.3)  # past the first request's deadline: a stale timer would cut it
    assert (await client.post(url, {}, b"{}")).status == 200
    assert client.connections_made == 1


async def test_a_header_that_would_break_the_request_is_refused_without_its_value(
    client,
) -> None:
    secret = "Bearer not-a-real-key\r\nX-Injected: 1"
    with pytest.raises(ValueError, match="'Authorization' header holds a line break") as info:
        await client.post("http://127.0.0.1:9/v1", {"Authorization": secret}, b"{}")
    assert "not-a-real-key" not in str(info.value)
    with pytest.raises(ValueError, match="not an http"):
        await client.post("ftp://127.0.0.1/v1", {}, b"{}")


async def test_a_connection_that_sent_more_than_its_answer_is_not_reused(server, client) -> None:
    url, script = server
    script.answers = [(OK + b"junk", False), (OK, False)]
    first = await client.post(url, {}, b"{}")
    second = await client.post(url, {}, b"{}")
    assert first.body == second.body == BODY
    assert client.connections_made == 2


async def test_a_proxied_url_goes_through_the_proxy(server, monkeypatch) -> None:
    """With a proxy in the environment the direct transport sends through aiohttp to it
    (here the scripted server plays the proxy and answers itself)."""
    from mcu_sim.agents.llm.client import direct_http

    proxy, script = server
    monkeypatch.setenv("HTTP_PROXY", proxy.split("/v1")[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    direct_http.proxy_for.cache_clear()
    script.answers = [(OK, False)]
    session = direct_http.new_session(5)
    try:
        answer = await direct_http.post_json(session, "http://api.invalid/v1/x", {}, {"q": 1})
    finally:
        await session.close()
        direct_http.proxy_for.cache_clear()
    assert answer == {"ok": True}
    assert script.requests[0].startswith(b"POST http://api.invalid/v1/x HTTP/1.1\r\n")
    assert session.pool.connections_made == 0


async def test_https_checks_the_certificate_against_the_trusted_store(
    tmp_path, monkeypatch, client
) -> None:
    """TLS through the default context: a server whose certificate the store trusts
    (SSL_CERT_FILE, as users point at a private CA) answers; an untrusted one is refused."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl") or pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *request, *names, *files], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            writer.write(OK)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read at the first https connect
        first = await client.post(url, {}, b"{}")
        second = await client.post(url, {}, b"{}")
        assert first.body == second.body == BODY and client.connections_made == 1
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusting = Http11Client(timeout_s=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.post(url, {}, b"{}")
        await untrusting.close()
    finally:
        listener.close()
        await listener.wait_closed()
