"""A real endpoint keeps the one-call structured path: the request bodies a structured run
sends are exactly those recorded before the stepwise strategy existed.

The snapshot (``tests/data/snapshots/structured_requests.json``) was written from the code
before ``llm.strategy`` was added; it must only change when a prompt or schema changes on
purpose (then rewrite it with ``MCU_WRITE_SNAPSHOT=1`` and review the diff).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from mcu_sim.config import load_config
from mcu_sim.runner.runner import EpisodeRunner, plan_jobs
from mcu_sim.testing.fake_openai import client_for

SNAPSHOT = Path(__file__).parent / "data" / "snapshots" / "structured_requests.json"


def test_structured_requests_unchanged(fake_openai, tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "llm.provider.kind=openai_compatible",
            f"llm.provider.base_url={fake_openai.url}",
            "llm.provider.model=fake-model",
            "images.enabled=false",
            "episode.sessions_min=2",
            "episode.sessions_max=2",
            f"llm.cache.path={tmp_path / 'cache.sqlite'}",
        ],
    )
    client = client_for(fake_openai, None)
    runner = EpisodeRunner(config, tmp_path / "run", llm=client)
    report = asyncio.run(runner.run_jobs(plan_jobs(1, 5)))
    assert report.failed == {} and report.finished == ["ep-00000005"]
    # key order kept (no sort_keys): the SDK writes the body in the order of its arguments
    bodies = [json.dumps(r.body, ensure_ascii=False) for r in fake_openai.chat_requests]
    if os.environ.get("MCU_WRITE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(bodies, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    # the same bodies, byte for byte; in any order, since some roles send requests at once
    # (the stark preset's five commonsense calls) and they reach the server in any order
    assert sorted(bodies) == sorted(expected)
