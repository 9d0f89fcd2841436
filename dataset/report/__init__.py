"""``mcu report``: what a run generated, next to STARK's published statistics and to other
runs: a self-contained HTML page and ``report.json`` with every number in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_DIR = "report"


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    json: Path


def _histogram(values: list[float], bins: int = 20) -> dict[str, Any]:
    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(values)
    if high == low:
        return {"edges": [low, high], "counts": [len(values)]}
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    return {"edges": [low + i * width for i in range(bins + 1)], "counts": counts}


def for_json(analysis: dict[str, Any]) -> dict[str, Any]:
    """The analysis with raw value lists replaced by histograms (bounded size)."""
    images = analysis["images"]
    scores = {
        name: {**{k: v for k, v in s.items() if k != "values"}, "hist": _histogram(s["values"])}
        for name, s in images["scores"].items()
    }
    text = {k: v for k, v in analysis["text"].items() if k != "tokens_per_episode_values"}
    text["tokens_per_episode_hist"] = _histogram(analysis["text"]["tokens_per_episode_values"])
    dataset = {k: v for k, v in analysis["dataset"].items() if k != "ages"}
    ages: dict[str, int] = {}
    for age in analysis["dataset"]["ages"]:
        ages[str(age)] = ages.get(str(age), 0) + 1
    dataset["ages_hist"] = ages
    return {
        **{k: v for k, v in analysis.items() if k != "episode_ids"},
        "dataset": dataset,
        "images": {**images, "scores": scores},
        "text": text,
    }


def write_report(
    run_dir: Path, compare: list[Path] | None = None, out: Path | None = None
) -> ReportFiles:
    """Analyse ``run_dir`` (and each ``compare`` run), write the HTML page (``out``, by
    default ``RUN_DIR/report/report.html``) and ``report.json`` beside it."""
    from mcu_sim.dataset.report.collect import analyse_run, stark_reference
    from mcu_sim.dataset.report.figures import draw_all
    from mcu_sim.dataset.report.html import render
    from mcu_sim.runner.outputs import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    html_path = Path(out) if out else run_dir / REPORT_DIR / "report.html"
    runs = [(run_dir.name, analyse_run(run_dir))]
    for other in compare or []:
        label = other.name if other.name not in {n for n, _ in runs} else str(other)
        runs.append((label, analyse_run(Path(other))))
    figures = draw_all(runs)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(html_path, render(runs, figures, html_path.parent))
    json_path = html_path.with_name("report.json")
    atomic_write_json(
        json_path,
        {
            "run": for_json(runs[0][1]),
            "compare": {label: for_json(r) for label, r in runs[1:]},
            "stark_reference": stark_reference(),
            "figures": [f["id"] for f in figures],
        },
    )
    return ReportFiles(html_path, json_path)
