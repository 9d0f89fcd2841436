"""The configuration models: every section of the YAML file, validated by pydantic.

Every model forbids unknown keys. Defaults follow STARK Table 5 for the per-step sampling
settings. Loading (file, environment, overrides) lives in :mod:`mcu_sim.config`, which
re-exports everything here; import from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from typing import Any, Literal

from pydantic import Field, model_validator

from mcu_sim.config_augment import AugmentConfig
from mcu_sim.config_episode import PRESETS, DateWindow, EpisodeConfig, Strict
from mcu_sim.config_errors import ConfigError, unknown_key_message
from mcu_sim.config_filters import FilterSettings
from mcu_sim.config_images import ImagesConfig
from mcu_sim.config_judge import EvaluationSettings
from mcu_sim.redaction import has_masked_credentials, masked_url_keys, redacted

__all__ = [
    "OPERATIONAL_FIELDS",
    "PRESETS",
    "STEP_NAMES",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DateWindow",
    "EpisodeConfig",
    "LLMConfig",
    "Price",
    "ProviderConfig",
    "RunConfig",
    "StepSettings",
    "Strict",
    "default_step_settings",
]

STEP_NAMES = (
    "persona",
    "commonsense",
    "narrative",
    "events",
    "device",
    "dialogue",
    "planner",
    "rewriter",
    "summarizer",
    "judge",
    "scanner",
    "evaluator",
)


class StepSettings(Strict):
    """Sampling settings for one pipeline step (STARK Table 5 gives the defaults)."""

    model: str | None = Field(None, description="Model name; None uses the provider's model.")
    temperature: float = Field(0.9, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    max_tokens: int = Field(1024, gt=0, le=131072)


def _table5(temp: float, top_p: float, freq: float, pres: float, max_tokens: int) -> StepSettings:
    return StepSettings(
        temperature=temp,
        top_p=top_p,
        frequency_penalty=freq,
        presence_penalty=pres,
        max_tokens=max_tokens,
    )


def default_step_settings() -> dict[str, StepSettings]:
    """STARK Table 5. Roles the paper has no row for: the rewriter uses the planner's row,
    the scanner the persona-style row, and the judges (text safety; ``mcu judge``'s
    evaluator) sample greedily so scores repeat."""
    plan = _table5(0.9, 0.95, 1, 0.6, 1024)
    return {
        "persona": _table5(0.9, 1, 0, 0, 2048),
        "commonsense": _table5(0.9, 1, 0, 0, 1024),
        "narrative": _table5(0.9, 0.95, 1, 0.6, 2048),
        "events": _table5(0.9, 1, 0, 0, 4096),
        "device": _table5(0.9, 1, 0, 0, 1024),
        "dialogue": _table5(0.9, 0, 0, 0, 4096),
        "planner": plan,
        "rewriter": plan.model_copy(),
        "summarizer": _table5(0.9, 0.95, 1, 0.6, 1024),
        "judge": _table5(0.0, 1, 0, 0, 512),
        "scanner": _table5(0.9, 1, 0, 0, 2048),
        "evaluator": _table5(0.0, 1, 0, 0, 2048),
    }


class Price(Strict):
    """US dollars per million tokens. ``cached_input`` prices the prompt tokens the endpoint
    says it served from its prompt cache (``usage.prompt_tokens_details.cached_tokens``);
    unset, they cost ``input``."""

    input: float = Field(0.0, ge=0, le=100_000)
    output: float = Field(0.0, ge=0, le=100_000)
    cached_input: float | None = Field(None, ge=0, le=100_000)


StructuredMode = Literal["json_schema", "json_object", "json_object_schema", "prompt"]
ProviderKind = Literal["openai_compatible", "azure_openai", "llamacpp"]
# Where each provider kind finds its API key unless llm.provider.api_key_env names another.
DEFAULT_API_KEY_VARIABLES = {
    "openai_compatible": "OPENAI_API_KEY",
    "azure_openai": "AZURE_OPENAI_API_KEY",
}


# Operational settings since removed: a run directory's config.yaml written before may
# still hold them; they changed no episode, so they are dropped when read.
RETIRED_RUN_FIELDS = frozenset({"gc_tuning"})
RETIRED_PROVIDER_FIELDS = frozenset({"http_client", "cpu_extra_buffers"})


def without_retired(data: Any, retired: frozenset[str]) -> Any:
    """``data`` without the ``retired`` keys (a copy only when one is there)."""
    if isinstance(data, dict) and retired & data.keys():
        return {key: value for key, value in data.items() if key not in retired}
    return data


class ProviderConfig(Strict):
    """Where LLM calls go. ``kind`` names the wire protocol, not the vendor."""

    kind: ProviderKind = "llamacpp"
    model: str = "SmolLM2-135M-Instruct"
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. vLLM.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key."
    )
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str = "2024-10-21"
    structured_output: StructuredMode = Field(
        "json_schema",
        description=(
            "json_schema: OpenAI-style schema response format (OpenAI, Azure, vLLM, Ollama, "
            "LM Studio, llama-server); json_object_schema: JSON mode with the schema attached "
            "(llama-cpp-python's server); json_object: JSON mode plus the schema in the "
            "prompt; prompt: instructions only."
        ),
    )
    model_path: str | None = Field(None, description="GGUF file for llamacpp; None = bundled.")
    n_ctx: int = Field(8192, gt=0, le=10_000_000)
    n_threads: int | None = Field(None, ge=1, le=4096)
    timeout_s: float = Field(120.0, gt=0, le=86_400)
    max_attempts: int = Field(6, ge=1, le=50)
    max_retry_seconds: float = Field(
        300.0,
        gt=0,
        le=7 * 86_400,
        description=(
            "The longest one request keeps retrying, counted from when its first attempt "
            "is sent (time queued for a max_concurrency slot or the rate limit before that "
            "does not count)."
        ),
    )
    max_concurrency: int = Field(8, ge=1, le=100_000)
    requests_per_minute: float | None = Field(None, gt=0, le=100_000_000)
    prices: dict[str, Price] = Field(default_factory=dict)
    supports_seed: bool = True

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        return without_retired(data, RETIRED_PROVIDER_FIELDS)

    @model_validator(mode="after")
    def _check_kind_fields(self) -> ProviderConfig:
        if self.kind == "azure_openai" and not self.azure_endpoint:
            raise ValueError(
                "llm.provider.azure_endpoint is required when kind is azure_openai "
                "(e.g. https://my-resource.openai.azure.com)"
            )
        if self.kind == "llamacpp" and self.base_url:
            raise ValueError(
                "llm.provider.base_url is set but kind is llamacpp (in-process): for a server "
                "at that URL set kind: openai_compatible"
            )
        for name in ("base_url", "azure_endpoint"):
            if has_masked_credentials(getattr(self, name)):
                raise ValueError(
                    f"'llm.provider.{name}' holds masked credentials (***), as mcu writes "
                    "them into run directories and `mcu config show`: give the real URL with "
                    f"MCU__LLM__PROVIDER__{name.upper()} or --set llm.provider.{name}=..."
                )
        return self

    def api_key_variable(self) -> str | None:
        """The environment variable the API key is read from (None: no key is needed)."""
        if self.kind == "llamacpp":
            return None
        return self.api_key_env or DEFAULT_API_KEY_VARIABLES[self.kind]

    def resolve_api_key(self, environ: typing.Mapping[str, str] | None = None) -> str:
        """Return the API key from the environment, or explain exactly what to set."""
        env = os.environ if environ is None else environ
        var = self.api_key_variable()
        if var is None:
            return ""
        key = env.get(var)
        if key:
            return key
        if self.kind == "openai_compatible" and self.base_url and not self.api_key_env:
            # Local servers (vLLM, llama.cpp, Ollama) accept any key.
            return "not-needed"
        raise ConfigError(
            f"No API key for provider '{self.kind}' (model {self.model}): "
            f"set the environment variable {var}, or point llm.provider.api_key_env "
            "at the variable that holds it."
        )


class CacheConfig(Strict):
    enabled: bool = True
    path: str = ".mcu-cache/llm.sqlite"


Strategy = Literal["auto", "structured", "stepwise"]


class LLMConfig(Strict):
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    strategy: Strategy = Field(
        "auto",
        description=(
            "structured: one call per role answering its whole JSON object (STARK's prompts; "
            "for capable endpoints); stepwise: one short plain-text request at a time, the "
            "structure assembled by code (for small local models); auto: stepwise for the "
            "in-process llamacpp provider, structured for every endpoint."
        ),
    )
    steps: dict[str, StepSettings] = Field(default_factory=default_step_settings)
    repair_turns: int = Field(2, ge=0, le=10)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="before")
    @classmethod
    def _merge_step_defaults(cls, data: Any) -> Any:
        """A step given in the file overrides only the keys it names."""
        if not isinstance(data, dict) or "steps" not in data:
            return data
        steps = data.get("steps") or {}
        if not isinstance(steps, dict):
            return data  # pydantic reports the wrong type with its path
        merged: dict[str, Any] = {}
        defaults = default_step_settings()
        for name, value in steps.items():
            if name not in defaults:
                raise ValueError(unknown_key_message(f"llm.steps.{name}", name, STEP_NAMES))
            base = defaults[name].model_dump()
            if isinstance(value, dict):
                base.update(value)
                merged[name] = base
            else:
                merged[name] = base if value is None else value
        for name, value in defaults.items():
            merged.setdefault(name, value.model_dump())
        return {**data, "steps": merged}

    def resolved_strategy(self, provider: ProviderConfig | None = None) -> str:
        """``strategy`` with ``auto`` decided by ``provider`` (default: this config's)."""
        if self.strategy != "auto":
            return self.strategy
        kind = (provider or self.provider).kind
        return "stepwise" if kind == "llamacpp" else "structured"

    def step(self, name: str) -> StepSettings:
        if name not in self.steps:
            raise ConfigError(unknown_key_message(f"llm.steps.{name}", name, self.steps))
        return self.steps[name]


class RunConfig(Strict):
    out_dir: str = "runs/default"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    max_in_flight: int = Field(4, ge=1, le=100_000)
    shard_size: int = Field(
        1000, ge=1, le=100_000_000, description="Finished episodes per JSONL shard."
    )
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="Ray cluster; None starts a local one.")
    ray_episode_actors: int | None = Field(
        None,
        ge=0,
        le=1024,
        description=(
            "--backend ray: how many episode actors run the episodes, each with many in "
            "flight (None: one per CPU of the cluster); 0 runs one Ray task per episode."
        ),
    )
    postgres_dsn_env: str | None = Field(
        None,
        description=(
            "Name of the environment variable holding a Postgres connection string; when "
            "set, checkpoints go to Postgres instead of <run>/checkpoints.sqlite."
        ),
    )
    durability: Literal["sync", "async", "exit"] = Field(
        "sync",
        description=(
            "LangGraph's durability mode for the runner's episodes (passed to the graph's "
            "astream). sync: each step's checkpoint is written before the next step "
            "starts, so a crash redoes at most the steps in progress. async: written while "
            "the next step runs (LangGraph's default); a crash may also redo the step "
            "before. exit: written only when the episode finishes, stops (budget) or "
            "fails; a crash restarts its unfinished episodes from the beginning (their "
            "LLM calls are then answered by the response cache, when it is on). A "
            "finished episode is never redone: its file is the record. `mcu debug`, "
            "replay and forks always checkpoint every step."
        ),
    )
    keep_checkpoints: Literal["all", "last"] = Field(
        "all",
        description=(
            "What stays of a finished episode's checkpoints. all: every step, for "
            "`mcu history`, show, fork and replay of any step. last: the episode's "
            "checkpoints are kept while it runs (for resume) and deleted once its file "
            "is written (the file is the record), so the checkpoint database holds only "
            "unfinished episodes."
        ),
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description=(
            "The event loop of `mcu run`: uvloop (its loop in C; about 7-10 % less "
            "framework CPU per LLM call in bench/throughput.py), asyncio, or auto: uvloop "
            "when it is installed."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        return without_retired(data, RETIRED_RUN_FIELDS)


# Settings that change how fast or where a run goes, never what an episode contains.
OPERATIONAL_FIELDS: dict[str, Any] = {
    "run": {
        "out_dir",
        "max_in_flight",
        "shard_size",
        "backend",
        "ray_address",
        "ray_episode_actors",
        "postgres_dsn_env",
        "durability",
        "keep_checkpoints",
        "event_loop",
    },
    "evaluation": True,  # how `mcu judge` shows episodes; it never changes one
    "llm": {
        "cache": True,
        "steps": {"evaluator": True},
        "provider": {
            "timeout_s",
            "max_attempts",
            "max_retry_seconds",
            "max_concurrency",
            "requests_per_minute",
            "prices",
            "n_threads",
        },
    },
}


class Config(Strict):
    llm: LLMConfig = Field(default_factory=LLMConfig)
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    images: ImagesConfig = Field(
        default_factory=ImagesConfig, description="Image tools, router and QA."
    )
    filters: FilterSettings = Field(
        default_factory=FilterSettings, description="Post-processing filters (STARK §3.9)."
    )
    evaluation: EvaluationSettings = Field(
        default_factory=EvaluationSettings, description="How `mcu judge` shows episodes."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="mcu augment.")

    @model_validator(mode="after")
    def _refuse_masked_urls(self) -> Config:
        """A URL masked by mcu (``***`` for its credentials, as in a run's config.yaml) is
        refused wherever it sits, so a resume never runs with a broken URL or template."""
        keys = masked_url_keys(self.model_dump(mode="json"))
        if keys:
            key = keys[0]
            variable = "MCU__" + key.upper().replace(".", "__")
            raise ValueError(
                f"'{key}' holds masked credentials (***), as mcu writes them into run "
                f"directories and `mcu config show`: give the real value with {variable} "
                f"or --set {key}=..."
            )
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes what an episode contains.

        Output paths, concurrency, timeouts, retry budgets, prices and the cache location
        are left out, so a resumed run on another machine keeps its fingerprint.
        """
        data = self.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
        blob = json.dumps(redacted(data), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
