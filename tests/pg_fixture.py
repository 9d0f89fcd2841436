"""A throwaway PostgreSQL server for tests that need real Postgres checkpoints.

Import the fixtures into a test module: ``from tests.pg_fixture import postgres_dsn`` (pytest
then finds them there). Skipped where ``initdb``/``pg_ctl`` are not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "MCU_TEST_PG_DSN"  # the variable tests point run.postgres_dsn_env at


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A throwaway Postgres server (skipped where initdb/pg_ctl are not installed)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    folder = Path(tempfile.mkdtemp(prefix="mcu-pg-"))  # outside pytest's root-only tmp
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser")
        shutil.chown(folder, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "mcu"], check=True,
                   **quiet)  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*prefix, pg_ctl, "-D", str(data), "-o", options, "-w", "start"]
    subprocess.run(start, check=True, **quiet)
    try:
        yield f"postgresql://mcu@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], **quiet)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_env(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``$MCU_TEST_PG_DSN`` set to a throwaway server; returns the config override that
    sends checkpoints there."""
    monkeypatch.setenv(PG_ENV, postgres_dsn)
    return f"run.postgres_dsn_env={PG_ENV}"
