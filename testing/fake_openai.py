"""A real HTTP, OpenAI-compatible fake endpoint on 127.0.0.1, with scripted answers and faults.

Tests and benchmarks talk to it through the real openai SDK over a real socket::

    with FakeOpenAIServer(ScriptedHandler([Fault.status(429, retry_after=0.2), {"a": 1}])) as s:
        client = client_for(s)              # an LLMClient pointed at s.url
        ...
        s.chat_requests                     # what arrived: bodies, headers, arrival times

Handlers, replies and faults live in :mod:`mcu_sim.testing.fake_handlers` (re-exported
here): ``handler(body) -> Reply | Fault | str | dict | list``. Run standalone for benchmarks with
``python -m mcu_sim.testing.fake_openai --port 8000 --latency 0.05 --capacity 32``; it then
answers every schema request with a minimal valid instance of that schema.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mcu_sim.testing.fake_handlers import (
    STRING_FORMATS,
    Fault,
    Handler,
    Outcome,
    Reply,
    ScriptedHandler,
    as_reply,
    example_for_schema,
    request_schema,
    route_by_schema,
    schema_example_handler,
    schema_name,
    system_prompt,
)

__all__ = [
    "STRING_FORMATS",
    "FakeOpenAIServer",
    "Fault",
    "Handler",
    "Outcome",
    "RecordedRequest",
    "Reply",
    "ScriptedHandler",
    "as_reply",
    "client_for",
    "example_for_schema",
    "main",
    "request_schema",
    "route_by_schema",
    "schema_example_handler",
    "schema_name",
    "system_prompt",
]

HIDDEN_HEADERS = frozenset({"authorization", "api-key"})


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    arrived: float  # time.monotonic() when the request was read
    # set just before the answer's bytes go out, so a client that has read the answer
    # always finds it recorded (None: no answer was sent)
    finished: float | None = None
    status: int | None = None
    auth_sha256: str | None = None  # of the Authorization (or api-key) header: not readable


@dataclass
class _State:
    handler: Handler
    latency: float
    capacity: threading.BoundedSemaphore | None
    model: str
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RecordedRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    ids: itertools.count = field(default_factory=itertools.count)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # benchmarks open ~100 connections at once
    state: _State


def _word_count(value: Any) -> int:
    if isinstance(value, list):  # content parts
        return sum(_word_count(part.get("text", "")) for part in value if isinstance(part, dict))
    return len(str(value or "").split())


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    # Buffered writes, flushed once per answer (``_send``): the head and the body go out in
    # one send, as HTTP servers commonly send a short answer. Unbuffered, the two went out
    # apart and a client's event loop often woke twice per answer, once for each.
    wbufsize = 64 * 1024
    server: _HTTPServer
    _current: RecordedRequest  # the request being answered

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.state.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing
    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self._done(self._current, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = "rate_limit_error" if status == 429 else "server_error"
        kind = "invalid_request_error" if 400 <= status < 500 and status != 429 else kind
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self._send(status, json.dumps(body).encode(), headers)

    def _record(self, body: Any) -> RecordedRequest:
        state = self.server.state
        headers = {k.lower(): v for k, v in self.headers.items()}
        headers = {k: v for k, v in headers.items() if k not in HIDDEN_HEADERS}
        record = RecordedRequest(self.command, self.path, headers, body, time.monotonic())
        self._current = record
        auth = self.headers.get("Authorization") or self.headers.get("api-key")  # Azure: api-key
        if auth:
            record.auth_sha256 = hashlib.sha256(auth.encode()).hexdigest()
        with state.lock:
            state.requests.append(record)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        return record

    def _done(self, record: RecordedRequest, status: int | None) -> None:
        """Mark ``record`` answered (once: the first call wins)."""
        state = self.server.state
        with state.lock:
            if record.finished is not None:
                return
            state.in_flight -= 1
            record.finished, record.status = time.monotonic(), status

    # -- routes
    def do_GET(self) -> None:
        record = self._record(None)
        if self.path.split("?")[0].rstrip("/").endswith("/models"):
            model = {"id": self.server.state.model, "object": "model", "owned_by": "fake"}
            self._send(200, json.dumps({"object": "list", "data": [model]}).encode())
            self._done(record, 200)
        else:
            self._error(404, f"no route GET {self.path}")
            self._done(record, 404)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        record = self._record(body)
        status: int | None = None
        try:
            if not self.path.split("?")[0].rstrip("/").endswith("/chat/completions"):
                status = 404
                self._error(404, f"no route POST {self.path}")
            elif not isinstance(body, dict):
                status = 400
                self._error(400, "request body is not a JSON object")
            else:
                status = self._serve_chat(body)
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True
        finally:
            self._done(record, status)

    def _serve_chat(self, body: dict[str, Any]) -> int | None:
        state = self.server.state
        if state.capacity is not None:
            state.capacity.acquire()
        try:
            if state.latency:
                state.stopping.wait(state.latency)
            try:
                outcome = as_reply(state.handler(body))
            except Exception as exc:  # a bug in a test's handler: make it visible
                state.errors.append(f"{type(exc).__name__}: {exc}")
                self._error(500, f"fake handler raised {type(exc).__name__}: {exc}")
                return 500
            return self._deliver(outcome, body)
        finally:
            if state.capacity is not None:
                state.capacity.release()

    def _deliver(self, outcome: Reply | Fault, body: dict[str, Any]) -> int | None:
        if isinstance(outcome, Fault):
            if outcome.kind == "status":
                headers = {}
                if outcome.retry_after is not None:
                    headers["Retry-After"] = str(outcome.retry_after)
                message = outcome.message or f"injected HTTP {outcome.status_code}"
                self._error(outcome.status_code, message, headers)
                return outcome.status_code
            if outcome.kind == "malformed":
                self._send(200, b'{"id": "chatcmpl-broken", "choices": [ this is not JSON')
                return 200
            if outcome.kind == "disconnect":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            self.server.state.stopping.wait(outcome.seconds)
            outcome = outcome.then or Reply("late answer")
        text = outcome.text
        prompt = outcome.prompt_tokens
        if prompt is None:
            prompt = sum(_word_count(m.get("content")) for m in body.get("messages") or [])
        completion = outcome.completion_tokens
        completion = _word_count(text) if completion is None else completion
        payload = {
            "id": f"chatcmpl-fake-{next(self.server.state.ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.server.state.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": outcome.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": outcome.usage(prompt, completion),
        }
        self._send(200, json.dumps(payload).encode())
        return 200


class FakeOpenAIServer:
    """The fake endpoint. ``start()``/``stop()`` or use it as a context manager.

    ``latency`` is added to every chat request; ``capacity`` caps how many are served at
    once (the others wait their turn, as on a saturated real server).
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        capacity: int | None = None,
        model: str = "fake-model",
    ) -> None:
        semaphore = threading.BoundedSemaphore(capacity) if capacity else None
        self._state = _State(handler or schema_example_handler, latency, semaphore, model)
        self._httpd = _HTTPServer((host, port), _RequestHandler, bind_and_activate=True)
        self._httpd.state = self._state
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FakeOpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        state = self._state
        state.stopping.set()  # wakes delayed answers
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with state.lock:
            connections = list(state.connections)
        for conn in connections:  # unblock keep-alive handler threads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration and observations
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    @property
    def handler(self) -> Handler:
        return self._state.handler

    @handler.setter
    def handler(self, handler: Handler) -> None:
        self._state.handler = handler

    def script(self, *outcomes: Outcome, default: Handler | None = None) -> ScriptedHandler:
        """Install a :class:`ScriptedHandler` with ``outcomes`` and return it."""
        scripted = ScriptedHandler(outcomes, default)
        self.handler = scripted
        return scripted

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.path.split("?")[0].rstrip("/").endswith("/chat/completions")
        ]

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    @property
    def handler_errors(self) -> list[str]:
        return list(self._state.errors)

    def reset(self) -> None:
        """Forget recorded requests and the in-flight maximum."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.errors.clear()
            self._state.max_in_flight = self._state.in_flight


def client_for(
    server: FakeOpenAIServer,
    cache_path: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    repair_turns: int = 2,
    retry_initial_s: float = 0.01,
    retry_max_wait_s: float = 1.0,
    **provider: Any,
) -> Any:
    """An :class:`~mcu_sim.agents.llm.client.LLMClient` (openai_compatible) pointed at ``server``.

    ``provider`` overrides ``llm.provider`` keys (e.g. ``max_attempts=3``); without a
    ``cache_path`` the client has no cache.
    """
    from mcu_sim.agents.llm.adapters import make_adapter
    from mcu_sim.agents.llm.cache import ResponseCache
    from mcu_sim.agents.llm.client import LLMClient
    from mcu_sim.config import LLMConfig

    settings = {"kind": "openai_compatible", "base_url": server.url, "model": "fake-model"}
    config = LLMConfig.model_validate(
        {
            "provider": {**settings, "timeout_s": 10.0, **provider},
            "repair_turns": repair_turns,
            "cache": {"enabled": cache_path is not None, "path": str(cache_path or "unused")},
        }
    )
    cache = ResponseCache(cache_path) if cache_path is not None else None
    adapter = make_adapter(config.provider, environ)
    return LLMClient(config, adapter, cache, retry_initial_s, retry_max_wait_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--capacity", type=int, default=0, help="max served at once; 0 = no cap")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)
    from mcu_sim.testing.scripted import scripted_answer  # answers every role validly

    def answer(body: dict[str, Any]) -> Outcome:
        try:
            return scripted_answer(body)
        except KeyError:  # not one of our roles: a minimal instance of its schema
            return schema_example_handler(body)

    server = FakeOpenAIServer(
        answer,
        host=args.host,
        port=args.port,
        latency=args.latency,
        capacity=args.capacity or None,
        model=args.model,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"fake OpenAI endpoint listening on {server.url}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
