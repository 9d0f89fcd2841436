"""mcu-sim: simulate a person's life and their long-term, image-sharing chat with an assistant.

The public API is small and import-light (no torch at import time)::

    from mcu_sim import load_config, Episode
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Episode", "__version__", "load_config"]

if TYPE_CHECKING:
    from mcu_sim.config import Config, ConfigError, load_config
    from mcu_sim.personas.schema import Episode


def __getattr__(name: str) -> Any:
    if name in {"Config", "ConfigError", "load_config"}:
        from mcu_sim import config

        return getattr(config, name)
    if name == "Episode":
        from mcu_sim.personas.schema import Episode

        return Episode
    raise AttributeError(name)
