"""Numbers of ``mcu judge``: means with bootstrap intervals, head-to-head tallies.

The interval is the percentile bootstrap: the mean of ``resamples`` resamples (with
replacement, numpy's seeded generator) of the per-episode scores, and the 2.5th and 97.5th
percentiles of those means. Criteria marked not applicable are not values: they are
counted apart and left out of the mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

OUTCOMES = ("win", "tie", "lose")


def bootstrap_interval(
    values: Sequence[float], resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """The percentile-bootstrap ``level`` interval of the mean of ``values``."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize_ratings(
    records: Iterable[dict[str, Any]],
    criteria: Sequence[str],
    reference: dict[str, float],
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per criterion: mean, 95 % interval, episodes scored and not applicable, STARK's
    human rating. ``records`` are score lines (``criteria: {name: {score} | {na}}``)."""
    scores: dict[str, list[int]] = {c: [] for c in criteria}
    not_applicable = dict.fromkeys(criteria, 0)
    for record in records:
        for name, result in (record.get("criteria") or {}).items():
            if name not in scores:
                continue
            if result.get("score") is None:
                not_applicable[name] += 1
            else:
                scores[name].append(int(result["score"]))
    summary = {}
    for index, name in enumerate(criteria):
        values = scores[name]
        row: dict[str, Any] = {
            "n": len(values),
            "not_applicable": not_applicable[name],
            "mean": None,
            "ci95": None,
            "stark_human": reference.get(name),
        }
        if values:
            row["mean"] = float(np.mean(values))
            # one stream per criterion, so adding a criterion leaves the others' intervals
            row["ci95"] = list(bootstrap_interval(values, resamples, seed + index))
        summary[name] = row
    return summary


def unswap(choice: str, swapped: bool) -> str:
    """A choice as shown (``A`` / ``tie`` / ``B``) as the outcome for the first run.

    Unswapped, the first run is shown as A; swapped, as B."""
    if choice == "tie":
        return "tie"
    first_shown = "B" if swapped else "A"
    return "win" if choice == first_shown else "lose"


def tally_versus(
    records: Iterable[dict[str, Any]], criteria: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per criterion: win / tie / lose counts and shares for the first run, and how often
    the dialogue shown first was chosen (a position-bias check)."""
    counts = {c: dict.fromkeys(OUTCOMES, 0) for c in criteria}
    shown_first = dict.fromkeys(criteria, 0)
    for record in records:
        for name, result in (record.get("criteria") or {}).items():
            if name in counts and result.get("choice") is not None:
                counts[name][unswap(result["choice"], record["swapped"])] += 1
                shown_first[name] += result["choice"] == "A"
    summary = {}
    for name in criteria:
        total = sum(counts[name].values())
        row: dict[str, Any] = {**counts[name], "n": total}
        for outcome in OUTCOMES:
            row[f"{outcome}_pct"] = 100 * counts[name][outcome] / total if total else None
        row["first_shown_chosen_pct"] = 100 * shown_first[name] / total if total else None
        summary[name] = row
    return summary
