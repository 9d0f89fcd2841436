"""The report's "LLM judge" section: what ``mcu judge`` wrote into the run, if anything.

Read from the files (``judge/summary.json``, ``judge/versus/*/summary.json``), never by
importing the judge, so the report needs none of its dependencies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def judge_results(root: Path) -> dict[str, Any]:
    """``{"ratings": summary or None, "versus": [summaries]}`` of ``root``'s judge files."""
    folder = Path(root) / "judge"
    versus = [_read(p) for p in sorted(folder.glob("versus/*/summary.json"))]
    return {"ratings": _read(folder / "summary.json"), "versus": [v for v in versus if v]}


def _interval(row: dict[str, Any] | None) -> str:
    if not row or row.get("mean") is None:
        return "—" if not row or not row.get("not_applicable") else "n/a"
    low, high = row["ci95"]
    text = f"{row['mean']:.2f} [{low:.2f}, {high:.2f}] (n={row['n']}"
    return text + (f", n/a {row['not_applicable']})" if row.get("not_applicable") else ")")


def rating_rows(runs: list[tuple[str, dict[str, Any]]], reference: dict[str, Any]) -> list:
    """One row per STARK criterion: each run's mean [95 % interval], STARK's human rating."""
    human = reference["human_ratings"]["values"]
    summaries = [((r.get("judge") or {}).get("ratings") or {}) for _, r in runs]
    rows = []
    for criterion, stark in human.items():
        cells = [_interval((s.get("criteria") or {}).get(criterion)) for s in summaries]
        label = criterion.replace("_", " ")
        rows.append({"label": label, "values": cells, "stark": f"{stark:g}"})
    return rows


def versus_tables(main: dict[str, Any]) -> list[dict[str, Any]]:
    """Per comparison: rows of win / tie / lose % for this run, in the paper's order."""
    tables = []
    for summary in (main.get("judge") or {}).get("versus") or []:
        criteria = summary.get("criteria") or {}
        rows = []
        for name in summary.get("criteria_order") or sorted(criteria):
            row = criteria.get(name) or {}
            cells = [row.get(k) for k in ("win_pct", "tie_pct", "lose_pct")]
            rows.append(
                {
                    "label": name.replace("_", " "),
                    "cells": ["—" if c is None else f"{c:.1f}" for c in cells],
                    "n": row.get("n", 0),
                    "first": row.get("first_shown_chosen_pct"),
                }
            )
        tables.append(
            {
                "other": Path(str(summary.get("second", ""))).name,
                "rows": rows,
                "pairs": summary.get("pairs_judged", 0),
                "swapped": summary.get("pairs_swapped", 0),
                "judge": summary.get("judge") or {},
            }
        )
    return tables
