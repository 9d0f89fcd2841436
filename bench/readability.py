"""Print how much of a run reads as English, per group of texts.

    python bench/readability.py RUN_DIR [--min 0.9]

Groups: utterances, events, persona sentences, narratives, image descriptions. A text
reads as English with at least three words, 80 % of them English words by wordfreq's list
(:mod:`mcu_sim.dataset.readability`). Exit code 1 when a group is below ``--min``.
"""

from __future__ import annotations

import argparse
import sys

from mcu_sim.dataset.readability import run_readability


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--min", type=float, default=0.0, help="fail below this share")
    args = parser.parse_args(argv)
    result = run_readability(args.run_dir)
    readable = sum(e["readable"] for e in result.values())
    texts = sum(e["texts"] for e in result.values())
    print(f"{'group':<20}{'texts':>7}{'readable':>10}{'share':>8}")
    for group, entry in result.items():
        print(f"{group:<20}{entry['texts']:>7}{entry['readable']:>10}{entry['share']:>8.2f}")
    print(f"{'overall':<20}{texts:>7}{readable:>10}{readable / max(texts, 1):>8.2f}")
    for group, entry in result.items():
        for text in entry["unreadable"]:
            print(f"  unreadable {group}: {text!r}")
    return 1 if any(e["share"] < args.min for e in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
