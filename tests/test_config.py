"""Config loading, error messages, overrides, secrets and the fingerprint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcu_sim.agents.llm.adapters import make_adapter
from mcu_sim.config import (
    EXAMPLE_CONFIG,
    STEP_NAMES,
    Config,
    ConfigError,
    ProviderConfig,
    load_config,
    mask_url,
    redacted,
    render_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "configs"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={}, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------- valid files


def test_example_configs_cover_every_provider():
    names = {p.stem for p in EXAMPLES}
    assert {"embedded", "openai", "azure_openai", "local_server", "ollama"} <= names
    kinds = {load_config(p, environ={}).llm.provider.kind for p in EXAMPLES}
    assert kinds == {"llamacpp", "openai_compatible", "azure_openai"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_loads(path):
    config = load_config(path, environ={})
    assert set(config.llm.steps) == set(STEP_NAMES)
    text = path.read_text()
    assert text.lstrip().startswith("#"), "example configs explain themselves"


def test_builtin_example_loads(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE_CONFIG), environ={})
    assert config.llm.provider.kind == "llamacpp"


def test_defaults_follow_stark_table_5():
    steps = Config().llm.steps
    row = lambda s: (s.temperature, s.top_p, s.frequency_penalty, s.presence_penalty, s.max_tokens)  # noqa: E731
    assert row(steps["persona"]) == (0.9, 1, 0, 0, 2048)
    assert row(steps["commonsense"]) == (0.9, 1, 0, 0, 1024)
    assert row(steps["narrative"]) == (0.9, 0.95, 1, 0.6, 2048)
    assert row(steps["events"]) == (0.9, 1, 0, 0, 4096)
    assert row(steps["device"]) == (0.9, 1, 0, 0, 1024)
    assert row(steps["dialogue"]) == (0.9, 0, 0, 0, 4096)
    assert row(steps["planner"]) == (0.9, 0.95, 1, 0.6, 1024)
    assert row(steps["summarizer"]) == (0.9, 0.95, 1, 0.6, 1024)


def test_a_step_override_keeps_the_other_defaults(tmp_path):
    config = load_config(write(tmp_path, "llm:\n  steps:\n    dialogue: {max_tokens: 100}\n"))
    dialogue = config.llm.step("dialogue")
    assert (dialogue.max_tokens, dialogue.temperature, dialogue.top_p) == (100, 0.9, 0)
    assert config.llm.step("events").max_tokens == 4096


# ----------------------------------------------------------------- error messages


def test_misspelled_key_names_it_and_suggests_the_right_one(tmp_path):
    message = error_for(tmp_path, "llm:\n  provider:\n    modle: gpt-4o\n")
    assert "'llm.provider.modle'" in message
    assert "Did you mean 'model'?" in message
    assert str(tmp_path / "config.yaml") in message


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("llm:\n  steps:\n    dialoge: {temperature: 0.5}\n", "llm.steps.dialoge", "dialogue"),
        ("llm:\n  steps:\n    persona: {temprature: 0.5}\n", "temprature", "temperature"),
        ("episdoe:\n  sessions_min: 2\n", "episdoe", "episode"),
        ("llm:\n  provder: {model: x}\n", "llm.provder", "provider"),
        ("llm:\n  provider:\n    prices: {m: {inptu: 1}}\n", "inptu", "input"),
    ],
)
def test_misspelled_names_anywhere_get_a_suggestion(tmp_path, text, key, suggestion):
    message = error_for(tmp_path, text)
    assert f"{key}'" in message
    assert f"Did you mean '{suggestion}'?" in message


def test_wrong_type_names_the_key(tmp_path):
    message = error_for(tmp_path, "llm:\n  provider:\n    max_concurrency: many\n")
    assert "'llm.provider.max_concurrency'" in message
    assert "valid integer" in message and "'many'" in message


def test_out_of_range_value_names_the_key(tmp_path):
    message = error_for(tmp_path, "llm:\n  steps:\n    judge: {temperature: 3}\n")
    assert "'llm.steps.judge.temperature'" in message
    assert "less than or equal to 2" in message


def test_cross_field_errors_name_their_keys(tmp_path):
    message = error_for(tmp_path, "episode: {sessions_min: 9, sessions_max: 3}\n")
    assert "episode.sessions_min (9)" in message
    message = error_for(tmp_path, "llm:\n  provider: {kind: azure_openai}\n")
    assert "llm.provider.azure_endpoint is required" in message
    message = error_for(tmp_path, "llm:\n  provider: {base_url: 'http://x/v1'}\n")
    assert "kind: openai_compatible" in message


def test_a_secret_in_the_file_is_refused_without_echoing_it(tmp_path):
    message = error_for(tmp_path, "llm:\n  provider:\n    api_key: sk-live-abcdef123456\n")
    assert "api_key_env" in message and "environment variable" in message
    assert "sk-live-abcdef123456" not in message


def test_file_problems_are_config_errors(tmp_path):
    assert "not valid YAML" in error_for(tmp_path, "llm: [unclosed\n")
    assert "mapping at the top level" in error_for(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(overrides=["llm.provider.model"], environ={})
    with pytest.raises(ConfigError, match="MCU__RUN__SEED"):
        load_config(environ={"MCU__RUN__SEED": "{unclosed"})


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ({"kind": "openai_compatible"}, "OPENAI_API_KEY"),
        (
            {"kind": "azure_openai", "azure_endpoint": "https://x.openai.azure.com"},
            "AZURE_OPENAI_API_KEY",
        ),
        (
            {"kind": "openai_compatible", "base_url": "http://h/v1", "api_key_env": "MY_KEY"},
            "MY_KEY",
        ),
    ],
)
def test_missing_api_key_says_which_variable_to_set(provider, variable):
    config = ProviderConfig(**provider)
    with pytest.raises(ConfigError, match=f"set the environment variable {variable}"):
        make_adapter(config, environ={})
    adapter = make_adapter(config, environ={variable: "sk-present"})
    assert adapter.name == config.kind


def test_missing_api_key_from_the_example_file():
    config = load_config(CONFIG_DIR / "openai.yaml", environ={})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_adapter(config.llm.provider, environ={})


def test_local_server_needs_no_key():
    config = load_config(CONFIG_DIR / "local_server.yaml", environ={})
    assert config.llm.provider.resolve_api_key({}) == "not-needed"


def test_missing_gguf_file_is_named(tmp_path):
    config = ProviderConfig(kind="llamacpp", model_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError, match="model_path"):
        make_adapter(config)


# ----------------------------------------------------------------- precedence


def test_environment_and_set_overrides_take_precedence(tmp_path):
    path = write(tmp_path, "llm:\n  provider: {kind: openai_compatible, model: from-file}\n")
    assert load_config(path, environ={}).llm.provider.model == "from-file"
    env = {"MCU__LLM__PROVIDER__MODEL": "from-env", "MCU__LLM__STEPS__DIALOGUE__TEMPERATURE": "0.3"}
    config = load_config(path, environ=env)
    assert config.llm.provider.model == "from-env"
    assert config.llm.step("dialogue").temperature == 0.3
    assert config.llm.step("dialogue").max_tokens == 4096  # untouched Table 5 default
    config = load_config(path, overrides=["llm.provider.model=from-set", "run.seed=5"], environ=env)
    assert config.llm.provider.model == "from-set"
    assert config.run.seed == 5 and isinstance(config.run.seed, int)


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError, match="Did you mean 'max_tokens'"):
        load_config(overrides=["llm.steps.events.max_token=5"], environ={})
    with pytest.raises(ConfigError, match="from environment variable MCU__LLM__PROVIDER__MODLE"):
        load_config(environ={"MCU__LLM__PROVIDER__MODLE": "x"})
    with pytest.raises(ConfigError, match=r"'llm\.steps\.dialog'.*from --set"):
        load_config(overrides=["llm.steps.dialog.top_p=1"], environ={})


# ----------------------------------------------------------------- secrets and fingerprint


def test_redacted_masks_secrets_and_keeps_variable_names():
    data = {
        "api_key": "sk-1",
        "api_key_env": "OPENAI_API_KEY",
        "nested": [{"auth_token": "t-1", "password": "p", "max_tokens": 9}],
        "client_secret": "",
    }
    assert redacted(data) == {
        "api_key": "***",
        "api_key_env": "OPENAI_API_KEY",
        "nested": [{"auth_token": "***", "password": "***", "max_tokens": 9}],
        "client_secret": "",
    }


SECRET_URL = "https://bob:hunter2-pass@llm.example.com/v1?api-key=sk-url-secret&deployment=x"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pass@host/v1", "https://***@host/v1"),
        ("https://token-only@host:8443/v1", "https://***@host:8443/v1"),
        ("https://h/v1?api-key=abc&x=1", "https://h/v1?api-key=***&x=1"),
        (
            "https://h/v1?key=abc&sig=s1&access_token=t",
            "https://h/v1?key=***&sig=***&access_token=***",
        ),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://h/v1?model=m&limit=3", "https://h/v1?model=m&limit=3"),
        ("no url here", "no url here"),
    ],
)
def test_mask_url_hides_userinfo_and_secret_query_values(url, masked):
    assert mask_url(url) == masked


def _with_url(url: str, **extra: str):
    overrides = ["llm.provider.kind=openai_compatible", f"llm.provider.base_url={url}"]
    return load_config(overrides=overrides + [f"{k}={v}" for k, v in extra.items()], environ={})


def test_credentials_in_base_url_are_masked_everywhere_shown(tmp_path):
    from mcu_sim.runner.manifest import start_manifest
    from mcu_sim.runner.outputs import RunDir

    config = _with_url(SECRET_URL)
    shown = render_config(config)
    assert "base_url: https://***@llm.example.com/v1?api-key=***&deployment=x" in shown
    run = RunDir(tmp_path / "run")
    run.create()
    start_manifest(run, config, [1], False, "local")
    written = run.config_file.read_text() + run.manifest.read_text()
    for secret in ("bob", "hunter2-pass", "sk-url-secret"):
        assert secret not in shown and secret not in written
    adapter = make_adapter(config.llm.provider, environ={"OPENAI_API_KEY": "sk-header-key"})
    assert "hunter2" not in json.dumps(adapter.identity()) and "hunter2" not in repr(adapter)
    assert "sk-url-secret" not in adapter.redact(f"cannot reach {SECRET_URL}: refused")


def test_fingerprint_input_holds_no_url_credentials():
    base = _with_url(SECRET_URL)
    rotated = _with_url(SECRET_URL.replace("hunter2-pass", "other").replace("sk-url", "sk-new"))
    elsewhere = _with_url(SECRET_URL.replace("llm.example.com", "other.example.com"))
    assert base.fingerprint() == rotated.fingerprint()  # the secret never entered the hash
    assert base.fingerprint() != elsewhere.fingerprint()  # the endpoint itself still counts


def test_a_masked_url_from_a_run_dir_is_refused_with_the_way_out(tmp_path):
    shown = write(tmp_path, render_config(_with_url(SECRET_URL)))
    with pytest.raises(ConfigError) as info:
        load_config(shown, environ={})
    message = str(info.value)
    assert "'llm.provider.base_url' holds masked credentials" in message
    assert "MCU__LLM__PROVIDER__BASE_URL" in message
    env = {"MCU__LLM__PROVIDER__BASE_URL": SECRET_URL}
    assert load_config(shown, environ=env).llm.provider.base_url == SECRET_URL


def test_a_wrongly_typed_url_is_echoed_masked(tmp_path):
    text = f"llm:\n  provider:\n    timeout_s: '{SECRET_URL}'\n"
    message = error_for(tmp_path, text)
    assert "'llm.provider.timeout_s'" in message and "hunter2" not in message


def test_rendered_config_round_trips(tmp_path):
    config = load_config(CONFIG_DIR / "openai.yaml", environ={})
    text = render_config(config)
    assert "api_key_env: OPENAI_API_KEY" in text
    assert load_config(write(tmp_path, text), environ={}) == config


def test_fingerprint_is_stable_and_tracks_content_settings():
    base = load_config(CONFIG_DIR / "openai.yaml", environ={})
    again = load_config(CONFIG_DIR / "openai.yaml", environ={})
    assert base.fingerprint() == again.fingerprint()
    assert len(base.fingerprint()) == 16
    same = [
        "run.out_dir=elsewhere",
        "llm.provider.max_concurrency=2",
        "llm.provider.timeout_s=5",
        "llm.cache.enabled=false",
    ]
    for override in same:
        config = load_config(CONFIG_DIR / "openai.yaml", overrides=[override], environ={})
        assert config.fingerprint() == base.fingerprint(), override
    different = [
        "llm.steps.dialogue.temperature=0.2",
        "llm.provider.model=gpt-4o",
        "run.seed=1",
        "episode.sessions_max=8",
    ]
    for override in different:
        config = load_config(CONFIG_DIR / "openai.yaml", overrides=[override], environ={})
        assert config.fingerprint() != base.fingerprint(), override


# ----------------------------------------------------------------- the CLI commands


def _cli(*args: str, env: dict[str, str] | None = None):
    from typer.testing import CliRunner

    from mcu_sim.cli import app

    return CliRunner(env=env).invoke(app, list(args))


def test_cli_config_show_masks_secrets_and_prints_the_fingerprint(tmp_path):
    text = f"llm:\n  provider:\n    kind: openai_compatible\n    base_url: '{SECRET_URL}'\n"
    path = write(tmp_path, text)
    env = {"MCU__LLM__PROVIDER__MODEL": "from-env"}
    result = _cli("config", "show", "--config", str(path), "--set", "run.seed=7", env=env)
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["llm"]["provider"]["base_url"] == mask_url(SECRET_URL)
    assert shown["llm"]["provider"]["model"] == "from-env" and shown["run"]["seed"] == 7
    assert "hunter2" not in result.output and "sk-url-secret" not in result.output
    expected = load_config(path, ["run.seed=7"], environ=env).fingerprint()
    assert result.stdout.strip().endswith(f"# fingerprint: {expected}")


def test_cli_config_show_reports_a_bad_key_and_exits_2(tmp_path):
    path = write(tmp_path, "episode:\n  sesions_max: 3\n")
    result = _cli("config", "show", "--config", str(path), env={})
    assert result.exit_code == 2
    assert "Did you mean 'sessions_max'?" in result.output


def test_cli_config_init_writes_the_commented_example_and_keeps_existing_files(tmp_path):
    target = tmp_path / "mcu.yaml"
    result = _cli("config", "init", str(target))
    assert result.exit_code == 0 and f"wrote {target}" in result.stdout
    assert target.read_text() == EXAMPLE_CONFIG
    assert sum(line.lstrip().startswith("#") for line in EXAMPLE_CONFIG.splitlines()) >= 3
    assert load_config(target, environ={}) == Config()  # the example spells out the defaults
    target.write_text("# mine\n")
    refused = _cli("config", "init", str(target))
    assert refused.exit_code == 1 and "--force" in refused.output
    assert target.read_text() == "# mine\n"  # untouched
    forced = _cli("config", "init", str(target), "--force")
    assert forced.exit_code == 0 and target.read_text() == EXAMPLE_CONFIG


# ----------------------------------------------------------------- import weight

HEAVY = ("torch", "diffusers", "transformers", "open_clip", "faiss", "llama_cpp", "numpy")
LIGHT_MODULES = (
    "mcu_sim",
    "mcu_sim.config",
    "mcu_sim.cli",
    "mcu_sim.agents.llm.client",
    "mcu_sim.agents.llm.cache",
    "mcu_sim.agents.llm.adapters",
    "mcu_sim.graphs.episode",
    "mcu_sim.runner.runner",
    "mcu_sim.graphs.aligner",
    "mcu_sim.tools.toolbox",
    "mcu_sim.tools.image_db",
    "mcu_sim.tools.retrieval",
    "mcu_sim.tools.embedders",
    "mcu_sim.tools.index_build",
    "mcu_sim.testing.fake_openai",
)


def test_importing_the_package_cli_graphs_and_tools_stays_light():
    """What ``mcu --help``, the runner and the graphs import: no model runtime, no numpy
    (each tool imports those when it loads). ``openai`` only where a client is built."""
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "import mcu_sim\n"
        "mcu_sim.load_config\n"
        f"print(sorted(m for m in {(*HEAVY, 'openai')!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
