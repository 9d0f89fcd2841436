"""Choosing where a run's episodes run: the local runner or the Ray backend.

Above both (the Ray runner extends the local one), so neither imports the other's module
to pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcu_sim.config import Config, ConfigError
from mcu_sim.runner.runner import EpisodeRunner


def make_runner(
    config: Config,
    out_dir: str | Path,
    *,
    backend: str | None = None,
    ray_address: str | None = None,
    **options: Any,
) -> EpisodeRunner:
    """An :class:`~mcu_sim.runner.runner.EpisodeRunner` for ``backend`` (``local`` or
    ``ray``; default from ``run.backend``). ``options`` are the runner's keyword arguments."""
    backend = backend or getattr(config.run, "backend", "local")
    if backend == "local":
        return EpisodeRunner(config, out_dir, **options)
    if backend == "ray":
        from mcu_sim.runner.ray_backend import RayEpisodeRunner

        address = ray_address or getattr(config.run, "ray_address", None)
        options.setdefault("episode_actors", config.run.ray_episode_actors)
        return RayEpisodeRunner(config, out_dir, address=address, **options)
    raise ConfigError(f"unknown backend {backend!r}: choose local or ray (run.backend)")
