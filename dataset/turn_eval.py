"""Turn-selection evaluation of an augmented run against the input's gold image turns.

MAGID (seed 000, Table 1) scores the scanner as a classifier of utterances: does this turn
get an image or not. For every augmented episode whose source declares gold turns, each
turn is one decision; the counts are pooled over the run for the overall figures (micro
average) and kept per dialogue. Selected turns are the scanner's picks that were kept
(a pick whose image failed QA still counts: it is the selection that is scored). Images per
100 turns are given for the selection, the aligned images and the gold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcu_sim.runner.outputs import RunDir, atomic_write_json

RESULT_FILE = Path("eval") / "turns.json"


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    images: int = 0  # aligned

    def add(self, other: Counts) -> None:
        for name in ("tp", "fp", "fn", "tn", "images"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def turns(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, Any]:
        selected, gold, turns = self.tp + self.fp, self.tp + self.fn, self.turns
        precision = self.tp / selected if selected else None
        recall = self.tp / gold if gold else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per100 = (lambda n: round(100 * n / turns, 3)) if turns else (lambda n: None)
        return {
            "turns": turns,
            "selected": selected,
            "gold": gold,
            "true_positives": self.tp,
            "accuracy": round((self.tp + self.tn) / turns, 4) if turns else None,
            "precision": None if precision is None else round(precision, 4),
            "recall": None if recall is None else round(recall, 4),
            "f1": None if f1 is None else round(f1, 4),
            "selected_per_100_turns": per100(selected),
            "images_per_100_turns": per100(self.images),
            "gold_per_100_turns": per100(gold),
        }


def episode_counts(episode: dict[str, Any]) -> Counts | None:
    """The decisions of one episode, or None when its source has no gold turns."""
    gold_turns = (episode.get("source") or {}).get("gold_turns")
    if gold_turns is None:
        return None
    gold = {(g["session"], g["turn"]) for g in gold_turns}
    aligned = {
        (r.get("session"), r.get("turn_id"))
        for r in episode.get("image_requests", [])
        if r.get("status") == "aligned"
    }
    counts = Counts()
    for session in episode.get("sessions", []):
        for turn in session.get("turns", []):
            key = (session["index"], turn["id"])
            picked, marked = turn.get("sharing") is not None, key in gold
            counts.tp += picked and marked
            counts.fp += picked and not marked
            counts.fn += marked and not picked
            counts.tn += not picked and not marked
            counts.images += picked and key in aligned
    return counts


def evaluate(episodes: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Overall and per-dialogue metrics; None when no episode carries gold turns."""
    total, per_dialogue = Counts(), []
    for episode in episodes:
        counts = episode_counts(episode)
        if counts is None:
            continue
        total.add(counts)
        source = episode.get("source") or {}
        per_dialogue.append(
            {
                "episode_id": episode["episode_id"],
                "source_id": source.get("source_id"),
                "position": source.get("position"),
                **counts.metrics(),
            }
        )
    if not per_dialogue:
        return None
    per_dialogue.sort(key=lambda row: (row["position"] is None, row["position"]))
    return {
        "dialogues": len(per_dialogue),
        "overall": total.metrics(),
        "per_dialogue": per_dialogue,
    }


def evaluate_run(run_dir: Path, write: bool = True) -> dict[str, Any] | None:
    """:func:`evaluate` over a run's finished episodes (filtered ones too: the filters judge
    images, not the selection); written to ``eval/turns.json``."""
    run = RunDir(run_dir)
    episodes = (json.loads(run.episode_path(i).read_text()) for i in run.finished_ids())
    result = evaluate(episodes)
    if result is not None and write:
        path = run.root / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)
    return result


def format_result(result: dict[str, Any], per_dialogue: int = 20) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    names = ("accuracy", "precision", "recall", "f1")
    rates = ("selected_per_100_turns", "images_per_100_turns", "gold_per_100_turns")
    head = f"{'dialogue':<24} {'turns':>5} " + " ".join(f"{n[:9]:>9}" for n in names)
    head += "  sel/100 img/100 gold/100"
    lines = [head]
    rows = [("overall", result["overall"])]
    rows += [(r["source_id"] or r["episode_id"], r) for r in result["per_dialogue"][:per_dialogue]]
    for label, row in rows:
        line = f"{str(label)[:24]:<24} {row['turns']:>5} "
        line += " ".join(f"{cell(row[n]):>9}" for n in names)
        line += "  " + " ".join(f"{cell(row[n]):>7}" for n in rates)
        lines.append(line)
    hidden = len(result["per_dialogue"]) - per_dialogue
    if hidden > 0:
        lines.append(f"... and {hidden} more dialogues in {RESULT_FILE}")
    return "\n".join(lines)
