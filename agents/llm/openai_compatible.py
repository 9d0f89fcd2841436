"""The Chat Completions wire protocol through the official ``openai`` SDK: OpenAI, any
OpenAI-compatible server (vLLM, llama.cpp server, Ollama, LM Studio) and Azure OpenAI.

An adapter sends one request and returns text plus token counts. Retries, validation,
caching and limits are not here: :class:`mcu_sim.agents.llm.client.LLMClient` adds them
uniformly on top of every adapter, so the SDK's own retries are off.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from mcu_sim.agents.llm.structured import grammar_schema
from mcu_sim.agents.llm.types import EndpointFault, RawReply, Request
from mcu_sim.config import ProviderConfig
from mcu_sim.config_secrets import Scrubber, provider_secret_values
from mcu_sim.redaction import mask_url


def response_format(config: ProviderConfig, request: Request) -> dict[str, Any] | None:
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


def httpx_client(openai: Any, config: ProviderConfig) -> Any:
    """The httpx client the SDK is given: its own default one, made explicitly.

    The client the SDK makes by itself schedules its own closing from ``__del__`` on
    whatever event loop is running when it is garbage-collected, not the one that owns its
    sockets; the adapters close theirs with :meth:`OpenAICompatibleAdapter.aclose`, on
    their loop.
    """
    return openai.DefaultAsyncHttpxClient(timeout=config.timeout_s)


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
        # the key and the credentials in the URL, in every form a server may echo them
        self._scrubber = Scrubber(provider_secret_values(config, api_key))
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        where = mask_url(self._where() or "") or None
        return f"{type(self).__name__}(model={self.config.model!r}, url={where!r})"

    def _where(self) -> str | None:
        return self.config.base_url

    def redact(self, text: str) -> str:
        """``text`` with the API key and the credentials in the URL masked, whole or in
        part, as written or encoded (for errors, logs and the response cache)."""
        where = self._where()
        if where and mask_url(where) != where:
            text = text.replace(where, mask_url(where))
        return self._scrubber.text(text)

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
            http_client=httpx_client(openai, self.config),
        )

    @property
    def client(self) -> Any:
        """The SDK client for the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._make_client()
            self._clients[loop] = client
        return client

    def identity(self) -> dict[str, Any]:
        # Credentials in the URL are masked: rotating them must not invalidate the cache.
        base_url = mask_url(self.config.base_url) if self.config.base_url else None
        return {"kind": self.name, "base_url": base_url, "model": self.config.model}

    def request_kwargs(self, request: Request) -> dict[str, Any]:
        """The Chat Completions arguments for ``request`` (what goes on the wire)."""
        kwargs: dict[str, Any] = {
            "model": request.settings.model or self.config.model,
            "messages": request.messages,
            **request.sampling(),
        }
        answer_format = response_format(self.config, request)
        if answer_format:
            kwargs["response_format"] = answer_format
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.stop:
            kwargs["stop"] = request.stop
        return kwargs

    async def send(self, request: Request) -> RawReply:
        import openai

        kwargs = self.request_kwargs(request)
        try:
            response = await self.client.chat.completions.create(**kwargs)
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
            cached_prompt_tokens=getattr(
                getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0
            )
            or 0,
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

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncAzureOpenAI(
            api_key=self._api_key,
            azure_endpoint=self.config.azure_endpoint,
            azure_deployment=self.config.azure_deployment,
            api_version=self.config.api_version,
            timeout=self.config.timeout_s,
            max_retries=0,
            http_client=httpx_client(openai, self.config),
        )

    def identity(self) -> dict[str, Any]:
        endpoint = self.config.azure_endpoint
        return {
            "kind": self.name,
            "endpoint": mask_url(endpoint) if endpoint else None,
            "deployment": self.config.azure_deployment,
            "model": self.config.model,
        }
