"""The run manifest (config fingerprint, seeds, counts, versions, invocations) and the
lock that keeps two runners out of one run directory."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from mcu_sim.graphs.outputs import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    seed_ranges,
    seeds_of,
)

# ---------------------------------------------------------------- one runner per run dir


class RunLocked(RuntimeError):
    """Another process is already running episodes into this run directory."""


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold an exclusive lock on ``<run>/.lock`` so two runners never share a directory
    (they would run the same episodes twice). The kernel drops it if the process dies."""
    import fcntl

    run.root.mkdir(parents=True, exist_ok=True)
    path = run.root / ".lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(
                f"{run.root} is in use by {holder}; wait for it to finish (or stop it), "
                "then re-run to resume."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- the run manifest

MANIFEST_FORMAT = "mcu-run"
MAX_INVOCATIONS = 200  # history kept in the manifest; older entries are summed into totals


class FingerprintMismatch(RuntimeError):
    """The run directory was made with a different config."""


def _versions() -> dict[str, Any]:
    import platform
    from importlib import metadata

    from mcu_sim import __version__
    from mcu_sim.personas.schema import SCHEMA_VERSION

    versions: dict[str, Any] = {
        "mcu_sim": __version__,
        "schema": SCHEMA_VERSION,
        "python": platform.python_version(),
    }
    for dist in ("langgraph", "langgraph-checkpoint", "openai", "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["prompts"] = prompt_versions()
    return versions


def prompt_versions() -> dict[str, str]:
    """``name -> version+hash`` of every shipped prompt template."""
    from importlib import resources

    from mcu_sim.agents.prompting import load_prompt

    folder = resources.files("mcu_sim.agents").joinpath("prompts")
    names = sorted(p.name.removesuffix(".j2") for p in folder.iterdir() if p.name.endswith(".j2"))
    return {name: load_prompt(name).version for name in names}


def start_manifest(
    run: RunDir, config: Any, seeds: list[int], force: bool, backend: str
) -> dict[str, Any]:
    """Create the manifest, or check the existing one matches this config and extend it.

    Raises :class:`FingerprintMismatch` when the config changed and ``force`` is false.
    """
    import datetime as dt
    import uuid

    import yaml

    from mcu_sim.config import redacted

    fingerprint = config.fingerprint()
    existing = run.read_manifest() or {}
    old = existing.get("config_fingerprint")
    if old and old != fingerprint and not force:
        raise FingerprintMismatch(
            f"{run.root} was generated with config {old}, but the current config is "
            f"{fingerprint}. Resuming would mix two datasets. Use a new --out directory, "
            f"restore the old config (it is in {run.config_file}), or pass --force-config "
            "to continue anyway."
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    planned = set(jobs_in_manifest(run)) | set(seeds)
    manifest = {
        **existing,
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "run_id": existing.get("run_id") or uuid.uuid4().hex[:16],
        "created": existing.get("created") or now,
        "updated": now,
        "state": "running",
        "config_fingerprint": fingerprint,
        "previous_fingerprints": list(existing.get("previous_fingerprints", []))
        + ([old] if old and old != fingerprint else []),
        "seed_ranges": seed_ranges(planned),
        "episodes_planned": len(planned),
        "provider": {"kind": config.llm.provider.kind, "model": config.llm.provider.model},
        "checkpointer": "postgres" if getattr(config.run, "postgres_dsn_env", None) else "sqlite",
        "backend": backend,
        "versions": _versions(),
    }
    manifest.pop("seeds", None)  # the first runner's layout: now ranges
    atomic_write_json(run.manifest, manifest)
    data = redacted(config.model_dump(mode="json"))
    atomic_write_text(run.config_file, yaml.safe_dump(data, sort_keys=False))
    return manifest


def finish_manifest(run: RunDir, manifest: dict[str, Any], report: Any, shards: int) -> None:
    """Record this invocation and the current counts (called even when interrupted)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    usage = report.usage.as_dict()
    entry = {
        "ended": now,
        "backend": report.backend,
        "finished": len(report.finished),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
        "stopped_for_budget": report.stopped_for_budget,
        "interrupted": report.interrupted,
        "seconds": round(report.seconds, 3),
        "usage": usage,
    }
    totals = dict(manifest.get("usage_total") or {})
    for key, value in usage.items():
        totals[key] = round(totals.get(key, 0) + value, 8)
    finished = len(run.finished_ids())
    failed = len(run.failed_ids())
    if report.interrupted:
        state = "interrupted"
    elif report.stopped_for_budget:
        state = "stopped_for_budget"
    else:
        state = "complete" if finished >= manifest["episodes_planned"] else "incomplete"
    manifest.update(
        updated=now,
        state=state,
        episodes_finished=finished,
        episodes_failed=failed,
        shards=shards,
        usage_total=totals,
        invocations=[*manifest.get("invocations", []), entry][-MAX_INVOCATIONS:],
    )
    atomic_write_json(run.manifest, manifest)


def jobs_in_manifest(run: RunDir) -> list[int]:
    """Every seed the manifest has planned (either manifest layout)."""
    manifest = run.read_manifest() or {}
    if "seed_ranges" in manifest:
        return seeds_of(manifest["seed_ranges"])
    return [int(s) for s in manifest.get("seeds", [])]
