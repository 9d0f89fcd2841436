"""A small client for the Chat Completions wire protocol (``http_client: direct``).

The openai SDK re-types every request body and response and routes them through httpx
and anyio; at a few hundred calls per second that is most of the framework's CPU
(``bench/throughput.py``). This client only posts JSON and reads JSON, over
:mod:`mcu_sim.agents.llm.client.http11`'s keep-alive connections, or through aiohttp when the
environment names a proxy for the URL. Retries stay where they are for every transport
(tenacity in :mod:`mcu_sim.agents.llm.client`): this module turns each failure into an exception
that policy already understands, an HTTP status with its headers (``Retry-After``) or an
:class:`~mcu_sim.agents.llm.client.EndpointFault`.
"""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import orjson

from mcu_sim.agents.llm.client.http11 import Http11Client
from mcu_sim.agents.llm.client import EndpointFault, RawReply


class HTTPStatusError(Exception):
    """An HTTP error answer: ``status_code`` and ``response.headers`` as the retry policy
    reads them from the SDK's errors."""

    def __init__(self, status_code: int, message: str, headers: Any) -> None:
        super().__init__(f"Error code: {status_code} - {message}")
        self.status_code = status_code
        self.response = SimpleNamespace(headers=headers)


class DirectSession:
    """The connections of one event loop: our HTTP/1.1 pool, and an aiohttp session made
    only if a proxied URL is asked for. Close it with ``await close()`` on that loop."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.pool = Http11Client(timeout_s)
        self._proxied: Any = None

    @property
    def proxied(self) -> Any:
        """The aiohttp session for proxied URLs (made on first use)."""
        if self._proxied is None:
            import aiohttp

            # Not trust_env: aiohttp would then read ~/.netrc in a thread on every request;
            # proxies from the environment are looked up once (proxy_for).
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._proxied = aiohttp.ClientSession(timeout=timeout)
        return self._proxied

    async def close(self) -> None:
        await self.pool.close()
        if self._proxied is not None:
            await self._proxied.close()


def new_session(timeout_s: float) -> DirectSession:
    """The direct transport's connections for the running event loop."""
    return DirectSession(timeout_s)


@functools.lru_cache(maxsize=64)
def proxy_for(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY`` names for ``url`` (None when ``NO_PROXY`` exempts it)."""
    import urllib.request

    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error") or {}
        return str(error.get("message") or error)[:500]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


async def post_json(session: DirectSession, url: str, headers: dict[str, str], body: dict) -> Any:
    """POST ``body``; the decoded JSON answer, or an exception the retry policy classifies."""
    # orjson: the standard library's encoder was 2 % of the CPU per call
    payload = orjson.dumps(body)
    headers = {**headers, "Content-Type": "application/json"}
    proxy = proxy_for(url)
    try:
        if proxy is None:
            answer = await session.pool.post(url, headers, payload)
        else:
            answer = await _post_via_proxy(session, proxy, url, headers, payload)
        status, answer_headers, raw = answer
    except TimeoutError:
        raise EndpointFault("timed out: no answer within llm.provider.timeout_s") from None
    except (ConnectionError, OSError) as exc:
        raise EndpointFault(f"connection failed: {type(exc).__name__}: {exc}") from None
    if status >= 400:
        raise HTTPStatusError(status, _error_message(raw), answer_headers)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EndpointFault(f"the endpoint sent a malformed body: {exc}") from None


async def _post_via_proxy(
    session: DirectSession, proxy: str, url: str, headers: dict[str, str], payload: bytes
) -> tuple[int, Any, bytes]:
    """The proxy route, through aiohttp; its failures become ``ConnectionError``."""
    import asyncio

    import aiohttp

    request = session.proxied.post(url, data=payload, headers=headers, proxy=proxy)
    try:
        async with request as response:
            return response.status, response.headers, await response.read()
    except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


def reply_from(data: Any, model: str) -> RawReply:
    """The :class:`RawReply` of a Chat Completions answer, or :class:`EndpointFault`."""
    choices = data.get("choices") if isinstance(data, dict) else None
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise EndpointFault(f"the endpoint sent a reply without choices: {data!r:.200}")
    usage = data.get("usage") or {}
    return RawReply(
        text=message.get("content") or "",
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        model=data.get("model") or model,
        finish_reason=choices[0].get("finish_reason"),
    )
