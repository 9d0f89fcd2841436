"""Shared fixtures: the fake OpenAI-compatible endpoint and clients pointed at it.

Kept import-light: nothing here imports torch, and the LLM layer is imported lazily.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.testing.fake_openai import FakeOpenAIServer, client_for


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A started fake endpoint on 127.0.0.1 (``.url``, ``.handler = ...``, ``.script(...)``,
    ``.chat_requests``); stopped after the test."""
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_llm_client(fake_openai: FakeOpenAIServer, tmp_path: Path) -> Callable[..., Any]:
    """Factory: ``make_llm_client(**provider_overrides)`` returns an ``LLMClient`` for
    ``fake_openai`` with a cache in ``tmp_path`` and millisecond retry waits. Pass
    ``cache_path=None`` for no cache; ``repair_turns=``, ``environ=`` are accepted too."""
    default_cache = tmp_path / "llm-cache.sqlite"

    def make(cache_path: Path | str | None = "default", **options: Any) -> Any:
        path = default_cache if cache_path == "default" else cache_path
        return client_for(fake_openai, path, **options)

    return make


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs for one test module (skipped without ray); yields
    the ``ray`` module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _mount_tmpfs(where: Path, options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )


@pytest.fixture
def tiny_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` bytes (parametrize indirectly: ``"300k"``), unmounted
    after the test. Mounting needs root and CAP_SYS_ADMIN; elsewhere the test is skipped."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mounted = _mount_tmpfs(where, f"size={request.param}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    """Remount a ``tiny_disk``: ``ro``, or ``rw,size=64m`` to give it room."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)
