"""An OpenAI-compatible fake endpoint for the runner benchmarks: real HTTP on 127.0.0.1,
latency L per request, at most C requests served at once, every role answered with
schema-valid JSON (``mcu_sim.testing.scripted``), and optional injected faults.

    python bench/endpoint.py --latency 0.05 --capacity 32            # serves until Ctrl-C
    python bench/endpoint.py --latency 0.05 --capacity 8 --fault-rate 0.2

The first line printed is JSON with the URL; on SIGTERM/Ctrl-C the last line is JSON with
what was served (requests, most served at once, faults by kind). With ``--fault-rate p``
a fraction p of the requests fail, in turn: HTTP 429 with Retry-After, HTTP 500, a hang
past the client's timeout, a body that is not JSON, and an answer that is not valid JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import sys
import threading
from collections import Counter
from typing import Any

FAULT_KINDS = ("429", "500", "timeout", "malformed_body", "malformed_answer")


class FaultyScripted:
    """``scripted_answer`` for most requests, an injected fault for a fraction of them."""

    def __init__(self, rate: float, seed: int, hang_s: float, retry_after: float = 0.05) -> None:
        self.rate = rate
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter = Counter()
        self.requests = 0
        self._turn = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        from mcu_sim.testing.fake_openai import Fault, Reply
        from mcu_sim.testing.scripted import scripted_answer

        with self.lock:
            self.requests += 1
            kind = None
            if self.rate and self.random.random() < self.rate:
                kind = FAULT_KINDS[self._turn % len(FAULT_KINDS)]
                self._turn += 1
                self.faults[kind] += 1
        if kind == "429":
            return Fault.status(429, retry_after=self.retry_after, message="slow down")
        if kind == "500":
            return Fault.status(500, message="injected server error")
        if kind == "timeout":
            return Fault.delay(self.hang_s, then=scripted_answer(body))
        if kind == "malformed_body":
            return Fault.malformed()
        if kind == "malformed_answer":
            return Reply('{"this answer": "stops in the middle of')
        return Reply(scripted_answer(body))


def ask_once(url: str) -> dict[str, Any]:
    """One chat request (a judge verdict) over HTTP; returns the parsed answer."""
    import urllib.request

    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Is this dialogue safe?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "JudgeVerdict"}},
    }
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        reply = json.loads(response.read())
    return json.loads(reply["choices"][0]["message"]["content"])


def main(argv: list[str] | None = None) -> None:
    from mcu_sim.testing.fake_openai import FakeOpenAIServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request (L)")
    parser.add_argument("--capacity", type=int, default=32, help="served at once (C)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction that fail")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault choice")
    parser.add_argument("--hang-s", type=float, default=3.0, help="length of a 'timeout'")
    parser.add_argument("--smoke", action="store_true", help="answer one request, then exit")
    args = parser.parse_args(argv)
    handler = FaultyScripted(args.fault_rate, args.seed, args.hang_s)
    server = FakeOpenAIServer(
        handler, host=args.host, port=args.port, latency=args.latency, capacity=args.capacity
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    hello = {"url": server.url, "latency": args.latency, "capacity": args.capacity}
    print(json.dumps(hello))
    sys.stdout.flush()
    if args.smoke:
        print(json.dumps({"smoke_answer": ask_once(server.url)}))
    else:
        stop.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "requests": handler.requests,
        "max_in_flight": server.max_in_flight,
        "faults": dict(handler.faults),
    }
    server.stop()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
