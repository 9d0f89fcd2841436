"""Time ``mcu report`` on N synthetic episodes (default 1,000; ``--smoke``: 20).

The episodes are real ones (the episode graph against the fake endpoint, three seeds)
cloned N times with fresh ids, random words in every utterance and persona sentence (so
they are not near-duplicates of each other), and one real 64x64 PNG each (so perceptual
hashing runs). Then ``mcu report`` runs as a subprocess, as a user would, and its wall
time is printed.

    python bench/report.py [-n 1000] [--smoke] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcu_sim.runner.outputs import RunDir, atomic_write_json
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.testing.scripted import scripted_answer
from mcu_sim.viewer.sample import generate_run, write_png

VOCAB = [f"w{n}" for n in range(5000)]


def synthesize(root: Path, n: int) -> None:
    server = FakeOpenAIServer().start()
    try:
        server.handler = scripted_answer
        seeds = generate_run(root / "_seed", server, [1, 2, 3], sessions=4)
    finally:
        server.stop()
    assert not seeds, seeds
    sources = [
        RunDir(root / "_seed").read_episode(i) for i in RunDir(root / "_seed").finished_ids()
    ]
    run = RunDir(root / "run")
    run.create()
    rng = random.Random(0)
    for k in range(n):
        data = json.loads(json.dumps(sources[k % len(sources)]))
        episode_id = f"ep-synth-{k:06d}"
        data["episode_id"] = episode_id
        for session in data["sessions"]:
            for turn in session["turns"]:
                if turn["utterance"]:
                    turn["utterance"] = " ".join(rng.choices(VOCAB, k=rng.randint(6, 20))) + "."
        for attribute in data["persona"]:
            attribute["sentence"] = "I like " + " ".join(rng.choices(VOCAB, k=6)) + "."
        request = next(r for r in data["image_requests"] if r["origin"] == "album")
        relative = f"images/{episode_id}/{request['id']}.png"
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        record = write_png(run.root / relative, (64, 48), color)
        scores = {"clip": rng.uniform(0.1, 0.4), "aesthetic": rng.uniform(3, 7), "nsfw": 0.01}
        image = {"path": relative, "module": "retrieval", "scores": scores, **record}
        request.update(status="aligned", reason=None, module="retrieval", image=image)
        atomic_write_json(run.episode_path(episode_id), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--episodes", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="20 episodes")
    parser.add_argument("--keep", type=Path, help="Build the run here and keep it.")
    args = parser.parse_args()
    n = 20 if args.smoke else args.episodes
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        started = time.perf_counter()
        synthesize(root, n)
        built = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mcu_sim.cli", "report", str(root / "run")], check=True
        )
        seconds = time.perf_counter() - started
        report = json.loads((root / "run" / "report" / "report.json").read_text())
    episodes = report["run"]["dataset"]["episodes"]
    assert episodes == n, (episodes, n)
    print(
        json.dumps(
            {
                "episodes": n,
                "report_seconds": round(seconds, 2),
                "build_seconds": round(built, 2),
                "near_duplicate_clusters": len(report["run"]["near_duplicates"]["clusters"]),
            }
        )
    )


if __name__ == "__main__":
    main()
