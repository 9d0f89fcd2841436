"""The configuration is the bottom layer: it loads without the rest of the package, and
each of its constants is defined once."""

from __future__ import annotations

import subprocess
import sys

from mcu_sim.config import Config, load_config
from mcu_sim.config_filters import FilterSettings
from mcu_sim.config_images import (
    MAGID_AESTHETIC_THRESHOLD,
    MAGID_CLIP_THRESHOLD,
    NSFW_THRESHOLD,
    ImagesConfig,
)
from mcu_sim.config_schema import ProviderConfig
from mcu_sim.graphs import filters
from mcu_sim.tools import scorers, settings


def test_loading_a_config_imports_no_other_layer(tmp_path) -> None:
    """A run-time check beside the ``ast`` one of tests/test_architecture.py."""
    path = tmp_path / "c.yaml"
    path.write_text("images:\n  qa:\n    clip_threshold: 0.3\nfilters:\n  min_sessions: 2\n")
    code = (
        "import sys\n"
        "from mcu_sim.config import load_config\n"
        f"config = load_config({str(path)!r}, environ={{}})\n"
        "assert config.images.qa.clip_threshold == 0.3, config.images.qa\n"
        "assert config.filters.min_sessions == 2, config.filters\n"
        "layers = ('agents', 'tools', 'graphs', 'runner', 'dataset', 'debug', 'viewer')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[1:2] and "
        "m.split('.')[0] == 'mcu_sim' and m.split('.')[1] in layers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_sections_are_the_ones_the_tools_and_filters_use() -> None:
    assert settings.ImagesConfig is ImagesConfig
    assert scorers.ScorerSettings is ImagesConfig.model_fields["scorers"].annotation
    assert filters.FilterSettings is FilterSettings
    assert Config.model_fields["filters"].annotation is FilterSettings


def test_the_magid_thresholds_are_defined_once() -> None:
    qa = ImagesConfig().qa
    assert (
        (qa.clip_threshold, qa.aesthetic_threshold, qa.nsfw_threshold)
        == (
            MAGID_CLIP_THRESHOLD,
            MAGID_AESTHETIC_THRESHOLD,
            NSFW_THRESHOLD,
        )
        == (0.21, 0.51, 0.5)
    )
    f = FilterSettings()
    assert (f.clip_threshold, f.nsfw_threshold) == (MAGID_CLIP_THRESHOLD, NSFW_THRESHOLD)


def test_the_api_key_variable_is_named_in_one_place() -> None:
    openai = ProviderConfig(kind="openai_compatible", model="m")
    azure = ProviderConfig(kind="azure_openai", model="m", azure_endpoint="https://x.example")
    assert openai.api_key_variable() == "OPENAI_API_KEY"
    assert azure.api_key_variable() == "AZURE_OPENAI_API_KEY"
    assert ProviderConfig(kind="llamacpp").api_key_variable() is None
    custom = openai.model_copy(update={"api_key_env": "MY_KEY"})
    assert custom.api_key_variable() == "MY_KEY"
    assert custom.resolve_api_key({"MY_KEY": "k", "OPENAI_API_KEY": "other"}) == "k"
    assert openai.resolve_api_key({"OPENAI_API_KEY": "sk-1"}) == "sk-1"


def test_the_example_configs_still_load() -> None:
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "data/configs").glob("*.yaml")):
        assert isinstance(load_config(path, environ={}), Config), path
