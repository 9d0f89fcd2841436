"""The report's figures, drawn with matplotlib's object API (no pyplot, no global state)
and returned as PNG bytes encoded for a ``data:`` URI, so the page needs no other file.

Each figure compares the runs (the report's run first, then each ``--compare`` run) and,
where the paper publishes the values, STARK. A figure with no data is left out.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from mcu_sim.dataset.report.collect import stark_reference
from mcu_sim.dataset.report.stats import SCORES

STARK = "STARK (paper)"
COLORS = ("#3b6ea5", "#e0883b", "#5aa469", "#b65a8e", "#8a7f3f", "#6b6b6b")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 7.0, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _percent(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: 100.0 * v / total for k, v in counts.items()} if total else {}


def grouped_bars(
    title: str,
    series: dict[str, dict[str, float]],
    ylabel: str,
    order: list[str] | None = None,
    horizontal: bool = False,
) -> str | None:
    """One group of bars per category, one bar per series (run or STARK)."""
    series = {name: values for name, values in series.items() if values}
    if not series:
        return None
    categories = order or sorted({k for values in series.values() for k in values})
    height = max(3.2, 0.22 * len(categories) * max(1, len(series) / 2)) if horizontal else 3.2
    fig, ax = _figure(7.5, height)
    width = 0.8 / len(series)
    positions = range(len(categories))
    for n, (name, values) in enumerate(series.items()):
        offsets = [p + (n - (len(series) - 1) / 2) * width for p in positions]
        heights = [values.get(c, 0.0) for c in categories]
        color = COLORS[n % len(COLORS)] if name != STARK else "#222222"
        if horizontal:
            ax.barh(offsets, heights, height=width, label=name, color=color)
        else:
            ax.bar(offsets, heights, width=width, label=name, color=color)
    if horizontal:
        ax.set_yticks(list(positions), categories, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(list(positions), categories, rotation=30 if len(categories) > 6 else 0)
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


def histogram(
    title: str, series: dict[str, list[float]], xlabel: str, threshold: float | None = None
) -> str | None:
    series = {name: values for name, values in series.items() if values}
    if not series:
        return None
    fig, ax = _figure()
    low = min(min(v) for v in series.values())
    high = max(max(v) for v in series.values())
    bins = 20 if high > low else 1
    for n, (name, values) in enumerate(series.items()):
        ax.hist(values, bins=bins, range=(low, high or 1), alpha=0.6, label=name,
                color=COLORS[n % len(COLORS)])  # fmt: skip
    if threshold is not None:
        ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    return _png(fig)


def _utterance_lengths(text: dict[str, Any]) -> dict[str, float]:
    return _percent({str(w): c for w, c in text["utterance_words_hist"].items()})


def draw_all(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, str]]:
    """``[{"id", "section", "title", "png"}]`` for every figure that has data."""
    ref = stark_reference()
    d = {label: r["dataset"] for label, r in runs}
    im = {label: r["images"] for label, r in runs}
    tx = {label: r["text"] for label, r in runs}
    stark_ages = ref["age_groups_pct"]["values"]
    stark_countries = {c["report_name"]: c["value"] for c in ref["countries_top10_pct"]["values"]}
    age_order = sorted({*stark_ages, *(g for v in d.values() for g in v["age_groups_pct"])})
    intervals = list(next(iter(d.values()))["session_intervals"])
    lengths = sorted({int(w) for v in tx.values() for w in v["utterance_words_hist"]})
    first = next(iter(im.values()))
    specs: list[tuple[str, str, str, Any]] = [
        ("sessions", "dataset", "Sessions per episode (% of episodes)", lambda: grouped_bars(
            "Sessions per episode",
            {k: _percent(v["sessions_per_episode_hist"]) for k, v in d.items()}, "% of episodes",
        )),
        ("years", "dataset", "Year of sessions (Fig. 4)", lambda: grouped_bars(
            "Year of sessions", {k: _percent(v["session_years"]) for k, v in d.items()},
            "% of sessions",
        )),
        ("intervals", "dataset", "Time between sessions (Fig. 4)", lambda: grouped_bars(
            "Time between consecutive sessions",
            {k: _percent(v["session_intervals"]) for k, v in d.items()}, "% of gaps", intervals,
        )),
        ("ages", "dataset", "Age groups (Table 2)", lambda: grouped_bars(
            "Age groups", {**{k: v["age_groups_pct"] for k, v in d.items()}, STARK: stark_ages},
            "% of episodes", age_order,
        )),
        ("birthplace", "dataset", "Birthplace (Table 2: top-10 countries)", lambda: grouped_bars(
            "Birthplace",
            {**{k: v["birthplace_pct"] for k, v in d.items()}, STARK: stark_countries},
            "% of episodes", horizontal=True,
        )),
        ("residence", "dataset", "Residence countries", lambda: grouped_bars(
            "Residence", {k: v["residence_pct"] for k, v in d.items()}, "% of episodes",
            horizontal=True,
        )),
        ("personas", "dataset", "Persona categories (of the 50)", lambda: grouped_bars(
            "Persona categories", {k: _percent(v["persona_categories"]) for k, v in d.items()},
            "% of episodes", horizontal=True,
        )),
        ("device", "dataset", "Device image categories, top 10 (Fig. 3)", lambda: grouped_bars(
            "Device image categories", {k: v["device_categories_top10_pct"] for k, v in d.items()},
            "% of categories", horizontal=True,
        )),
        ("modules", "images", "Image modules", lambda: grouped_bars(
            "Image modules", {k: v["module_pct"] for k, v in im.items()}, "% of images",
        )),
        *[
            (f"score-{name}", "images", f"{name} scores", lambda name=name: histogram(
                f"{name} score of chosen images",
                {k: v["scores"][name]["values"] for k, v in im.items()}, name,
                first["scores"][name]["threshold"],
            ))
            for name in SCORES
        ],
        ("utterance-length", "text", "Utterance length (words)", lambda: grouped_bars(
            "Words per utterance", {k: _utterance_lengths(v) for k, v in tx.items()},
            "% of utterances", [str(w) for w in lengths],
        )),
        ("tokens", "text", "Tokens per episode", lambda: histogram(
            "Tokens per episode", {k: v["tokens_per_episode_values"] for k, v in tx.items()},
            "tokens",
        )),
    ]  # fmt: skip
    out = []
    for fid, section, title, draw in specs:
        png = draw()
        if png is not None:
            out.append({"id": fid, "section": section, "title": title, "png": png})
    return out
