"""The run manifest (config fingerprint, seeds, forks, counts, versions, invocations) and
the lock that keeps two runners out of one run directory.

Planned episodes are the seeds in ``seed_ranges`` (episode ``ep-<seed>``); forks made by
time travel (``mcu fork``, the debugger's ``fork``) are listed apart in ``forks`` with the
episode they came from, so ``mcu run --resume`` continues them too while the plan counts
(``episodes_planned``, ``episodes_finished``) stay those of the plan.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

from mcu_sim.runner.outputs import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    seed_ranges,
    seeds_of,
)


def episode_id_for(seed: int) -> str:
    """The id of the planned episode of ``seed``."""
    return f"ep-{seed:08d}"


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
    from mcu_sim.runner.scrub import Scrubber

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
    if old and old != fingerprint:
        keep_old_config(run, old)
    atomic_write_json(run.manifest, manifest)
    data = Scrubber.for_config(config).data(redacted(config.model_dump(mode="json")))
    atomic_write_text(run.config_file, yaml.safe_dump(data, sort_keys=False))
    return manifest


def keep_old_config(run: RunDir, fingerprint: str) -> None:
    """Before a forced config change overwrites ``config.yaml``, keep the old one as
    ``config.<old fingerprint>.yaml`` (the episodes made with it still name it)."""
    if not run.config_file.is_file():
        return
    target = run.root / f"config.{fingerprint}.yaml"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(run.config_file, tmp)
        os.replace(tmp, target)


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
    if getattr(report, "run_removals", None):
        entry["run_removals"] = dict(report.run_removals)
    totals = dict(manifest.get("usage_total") or {})
    for key, value in usage.items():
        totals[key] = round(totals.get(key, 0) + value, 8)
    on_disk = run.read_manifest() or {}
    forks = on_disk.get("forks", manifest.get("forks", []))  # forks are recorded on disk
    planned = {episode_id_for(seed) for seed in seeds_of(manifest.get("seed_ranges", []))}
    finished_ids = run.finished_ids()
    finished = sum(1 for i in finished_ids if i in planned)
    failed = sum(1 for i in run.failed_ids() if i in planned)
    fork_ids = {f["episode_id"] for f in forks}
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
        forks=forks,
        forks_finished=sum(1 for i in finished_ids if i in fork_ids),
        shards=shards,
        usage_total=totals,
        invocations=[*manifest.get("invocations", []), entry][-MAX_INVOCATIONS:],
    )
    atomic_write_json(run.manifest, manifest)


def record_fork(run: RunDir, episode_id: str, seed: int, origin: str) -> None:
    """List a fork in the manifest so ``mcu run --resume`` continues it (call it while
    holding :func:`run_lock`)."""
    manifest = run.read_manifest() or {}
    forks = [f for f in manifest.get("forks", []) if f.get("episode_id") != episode_id]
    forks.append({"episode_id": episode_id, "seed": int(seed), "from": origin})
    manifest["forks"] = forks
    atomic_write_json(run.manifest, manifest)


def forks_in_manifest(run: RunDir) -> list[dict[str, Any]]:
    """The forks the manifest lists (``episode_id``, ``seed``, ``from``)."""
    return list((run.read_manifest() or {}).get("forks", []))


def jobs_in_manifest(run: RunDir) -> list[int]:
    """Every seed the manifest has planned (either manifest layout)."""
    manifest = run.read_manifest() or {}
    if "seed_ranges" in manifest:
        return seeds_of(manifest["seed_ranges"])
    return [int(s) for s in manifest.get("seeds", [])]
