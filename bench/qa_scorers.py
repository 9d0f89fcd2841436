"""Per-image QA time on this machine for each scorer, with tiny random models.

    python bench/qa_scorers.py               # 32 images, batch 16
    python bench/qa_scorers.py --smoke       # 4 images, for CI: checks it runs, prints times

The CLIP, aesthetic, tiny-classifier NSFW and text-classifier numbers come from tiny random
models (the code path, not real model cost); open_nsfw runs its real bundled ResNet-50, so
its number is what production pays for the fallback. Each scorer is loaded first (load time
reported separately) and warmed up on one batch before timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def build_assets(root: Path, n_images: int, n_warmup: int) -> dict[str, Any]:
    from mcu_sim.testing import tiny_clip as tc

    clip = tc.save_tiny_clip(root / "clip")
    photos = [tc.write_landscape(root / f"img{i}.jpg", seed=i) for i in range(n_images)]
    # Separate warm-up files: the CLIP backbone caches embeddings per file.
    warm = [tc.write_landscape(root / f"warm{i}.jpg", seed=10_000 + i) for i in range(n_warmup)]
    return {
        "clip": clip,
        "mlp": tc.save_tiny_aesthetic_mlp(root / "aesthetic.pth", input_dim=32),
        "vit": tc.save_tiny_image_classifier(root / "vit"),
        "text": tc.save_tiny_text_classifier(root / "text"),
        "photos": photos,
        "warm": warm,
    }


def bench_scorer(
    name: str, scorer: Any, paths: list[Path], texts: list[str] | None, warm: list[Path]
) -> dict:
    load_s, _ = _timed(scorer.load)
    scorer.score_sync(warm, ["warm-up"] * len(warm) if texts else None)
    total_s, scores = _timed(lambda: asyncio.run(scorer.score(paths, texts)))
    unscored = [s.note for s in scores if s.value is None]
    if unscored:
        raise RuntimeError(f"{name}: {len(unscored)} images not scored: {unscored[0]}")
    return {
        "scorer": name,
        "load_s": round(load_s, 3),
        "images": len(paths),
        "ms_per_image": round(1000 * total_s / len(paths), 2),
        "version": scores[0].version,
    }


def bench_text(checker: Any, dialogues: list[list[str]]) -> dict:
    load_s, _ = _timed(checker.load)
    checker.check_sync(dialogues[0])
    total_s, verdicts = _timed(lambda: [checker.check_sync(d) for d in dialogues])
    if any(v.label is None for v in verdicts):
        raise RuntimeError(f"text classifier did not judge: {verdicts[0].reason}")
    return {
        "scorer": "text_safety.classifier",
        "load_s": round(load_s, 3),
        "images": 0,
        "ms_per_dialogue": round(1000 * total_s / len(dialogues), 2),
        "version": verdicts[0].version,
    }


def run(n_images: int, batch_size: int) -> list[dict]:
    from mcu_sim.tools.aesthetic import AestheticScorer
    from mcu_sim.tools.clip_score import ClipScorer
    from mcu_sim.tools.nsfw import NsfwScorer
    from mcu_sim.tools.text_safety import ClassifierSafety

    with tempfile.TemporaryDirectory(prefix="qa-bench-") as tmp:
        assets = build_assets(Path(tmp), n_images, batch_size)
        paths, warm = assets["photos"], assets["warm"]
        texts = [f"a quiet landscape photo number {i}" for i in range(n_images)]
        bs = batch_size
        scorers = {
            "clip": ClipScorer(assets["clip"], batch_size=bs),
            "aesthetic": AestheticScorer(assets["mlp"], assets["clip"], batch_size=bs),
            "nsfw.open_nsfw": NsfwScorer(batch_size=bs),
            "nsfw.classifier": NsfwScorer(assets["vit"], batch_size=bs),
        }
        rows = [
            bench_scorer(name, scorer, paths, texts if name == "clip" else None, warm)
            for name, scorer in scorers.items()
        ]
        turns = ["Mia: hello how are you today", "AI: i am fine thanks", "Mia: great photo"]
        rows.append(bench_text(ClassifierSafety(assets["text"]), [turns] * max(2, n_images // 4)))
    per_image = sum(
        r["ms_per_image"] for r in rows if r["scorer"] != "nsfw.classifier" and "ms_per_image" in r
    )
    rows.append({"scorer": "qa pass (clip+aesthetic+open_nsfw)", "ms_per_image": per_image})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="4 images (CI)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    n_images = 4 if args.smoke else args.images
    rows = run(n_images, min(args.batch_size, n_images))
    print(f"{'scorer':<38} {'load s':>7} {'ms/image':>9}")
    for row in rows:
        per = row.get("ms_per_image", row.get("ms_per_dialogue"))
        unit = "" if "ms_per_image" in row else " /dialogue"
        load = f"{row['load_s']:.2f}" if "load_s" in row else ""
        print(f"{row['scorer']:<38} {load:>7} {per:>9.2f}{unit}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
