"""The adapter the config asks for: one per wire protocol (``openai_compatible``,
``azure_openai``, ``llamacpp``). Each sends one request and returns text plus token counts;
retries, validation, caching and limits are :class:`mcu_sim.agents.llm.client.LLMClient`'s.
"""

from __future__ import annotations

from mcu_sim.agents.llm.llamacpp import LlamaCppAdapter
from mcu_sim.agents.llm.openai_compatible import AzureOpenAIAdapter, OpenAICompatibleAdapter
from mcu_sim.agents.llm.types import Adapter
from mcu_sim.config import ProviderConfig


def make_adapter(config: ProviderConfig, environ: dict[str, str] | None = None) -> Adapter:
    """The adapter for ``config.kind``; raises :class:`ConfigError` if a key is missing."""
    if config.kind == "llamacpp":
        return LlamaCppAdapter(config)
    key = config.resolve_api_key(environ)
    if config.kind == "azure_openai":
        return AzureOpenAIAdapter(config, key)
    return OpenAICompatibleAdapter(config, key)
