"""Redraw the graphs in docs/architecture.md from the compiled graphs themselves.

Each diagram sits between ``<!-- graph:NAME -->`` and ``<!-- /graph:NAME -->`` and is what
LangGraph's ``get_graph().draw_mermaid()`` returns for the graph compiled without a
checkpointer. ``tests/test_docs.py`` fails when the committed diagrams are stale.

    python scripts/draw_graphs.py            # rewrite docs/architecture.md
    python scripts/draw_graphs.py --check    # exit 1 when it would change
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _episode() -> str:
    from mcu_sim.graphs.episode import build_episode_graph

    return build_episode_graph().compile().get_graph().draw_mermaid()


def _aligner() -> str:
    from mcu_sim.graphs.aligner import build_aligner_graph

    return build_aligner_graph().compile().get_graph().draw_mermaid()


def _augment() -> str:
    from mcu_sim.graphs.augment import build_augment_graph

    return build_augment_graph().compile().get_graph().draw_mermaid()


DIAGRAMS: dict[str, Callable[[], str]] = {
    "episode": _episode,
    "aligner": _aligner,
    "augment": _augment,
}


def _section(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- graph:{name} -->\n)(.*?)(<!-- /graph:{name} -->)", re.DOTALL)


def redraw(text: str) -> str:
    """``text`` with every diagram section replaced by the graph's current drawing."""
    for name, draw in DIAGRAMS.items():
        pattern = _section(name)
        if not pattern.search(text):
            raise ValueError(f"no '<!-- graph:{name} -->' ... '<!-- /graph:{name} -->' section")
        block = "```mermaid\n" + draw().strip() + "\n```\n"
        text = pattern.sub(lambda match, block=block: match[1] + block + match[3], text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    fresh = redraw(text)
    if args.check:
        if fresh != text:
            print(f"{args.doc} is stale: run python scripts/draw_graphs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        args.doc.write_text(fresh, encoding="utf-8")
        print(f"redrew the graphs in {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
