"""The report page: comparison tables (this run, each ``--compare`` run, STARK), figures
embedded as ``data:`` PNGs, and near-duplicate clusters linked to their episodes.

Rendered by Jinja with autoescaping (every string from a run is model output or a file
name) under a Content-Security-Policy that allows no network.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mcu_sim import __version__
from mcu_sim.dataset.report.collect import stark_reference
from mcu_sim.dataset.report.judge_section import rating_rows, versus_tables

TEMPLATES = Path(__file__).parent / "templates"

# (label, path in a run's analysis, key in stark_reference.json "values" or None)
TABLE_ROWS: dict[str, list[tuple[str, str, str | None]]] = {
    "dataset": [
        ("Episodes", "dataset.episodes", "episodes"),
        ("Episodes filtered", "dataset.episodes_filtered", None),
        ("Sessions", "dataset.sessions", "sessions"),
        ("Image-sharing moments", "dataset.images", "images"),
        ("Sessions per episode", "dataset.sessions_per_episode", None),
        ("Utterances per session", "dataset.utterances_per_session", "utterances_per_session"),
        ("Images per session", "dataset.images_per_session", "images_per_session"),
        ("Images per episode", "dataset.images_per_episode", "images_per_episode"),
        (
            "Image source internet %",
            "dataset.image_source_internet_pct",
            "image_source_internet_pct",
        ),
        ("Image source mobile %", "dataset.image_source_mobile_pct", "image_source_mobile_pct"),
        ("Experience add %", "dataset.experience_add_pct", "experience_add_pct"),
        ("Experience update %", "dataset.experience_update_pct", "experience_update_pct"),
        ("Mean age", "dataset.age_mean", None),
        ("Male %", "dataset.gender_male_pct", "gender_male_pct"),
        ("Female %", "dataset.gender_female_pct", "gender_female_pct"),
        ("Same birthplace and residence %", "dataset.same_country_pct", "same_country_pct"),
        ("Countries present (of 19)", "dataset.countries_present", None),
        ("Persona rows covered (of 50)", "dataset.persona_rows_covered", None),
        (
            "Episodes removed for session count %",
            "dataset.removed_session_count_pct",
            "removed_session_count_pct",
        ),
        (
            "Persona attributes marked duplicate %",
            "dataset.removed_duplicate_persona_pct",
            "removed_duplicate_persona_pct",
        ),
    ],
    "images": [
        ("Image requests", "images.requests", None),
        ("Aligned %", "images.aligned_pct", None),
        ("Distinct chosen images", "images.images", None),
        ("QA pass at first try %", "images.qa_first_try_pass_pct", None),
        ("Rewrites per request", "images.rewrites_per_request", None),
        ("Mean CLIP score", "images.scores.clip.mean", None),
        ("Mean aesthetic score", "images.scores.aesthetic.mean", None),
        ("Mean NSFW score", "images.scores.nsfw.mean", None),
        ("Images without any score", "images.unscored.all", None),
        ("Images without a CLIP score", "images.unscored.clip", None),
    ],
    "text": [
        ("Tokens per episode", "text.tokens_per_episode", None),
        ("Cost per episode (USD)", "text.cost_per_episode_usd", None),
        ("distinct-1", "text.distinct_1", None),
        ("distinct-2", "text.distinct_2", None),
        ("Words per utterance", "text.utterance_words_mean", None),
        ("Empty utterances (image-only turns)", "text.empty_utterances", None),
        ("User turns %", "text.turns_by_speaker_pct.user", None),
        ("Assistant turns %", "text.turns_by_speaker_pct.assistant", None),
        ("Sessions with a repeated opening %", "text.sessions_with_repeated_opening_pct", None),
    ],
}


def lookup(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)  # type: ignore[assignment]
    return data


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def comparison(section: str, runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    values = stark_reference()["values"]
    rows = []
    for label, path, ref in TABLE_ROWS[section]:
        stark = values[ref] if ref else None
        rows.append(
            {
                "label": label,
                "values": [fmt(lookup(r, path)) for _, r in runs],
                "stark": fmt(stark["value"]) if stark else "",
                "where": stark["where"] if stark else "",
            }
        )
    return rows


def keyed_table(
    runs: list[tuple[str, dict[str, Any]]], path: str, stark: dict[str, float] | None, limit: int
) -> list[dict[str, Any]]:
    """Rows per key (the first run's largest first, then STARK's), one column per run."""
    keys: list[str] = []
    for _, r in runs[:1]:
        keys += list(lookup(r, path) or {})[:limit]
    keys += [k for k in stark or {} if k not in keys]
    return [
        {
            "label": key,
            "values": [fmt((lookup(r, path) or {}).get(key)) for _, r in runs],
            "stark": fmt((stark or {}).get(key)) if stark else "",
        }
        for key in keys
    ]


def episode_href(run_root: Path, episode_id: str, page_dir: Path) -> str:
    """The episode's viewer page when ``mcu view`` made one, else its JSON file."""
    page = run_root / "view" / f"{episode_id}.html"
    target = page if page.is_file() else run_root / "episodes" / f"{episode_id}.json"
    return quote(Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix())


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
    env.filters["fmt"] = fmt
    return env


def render(
    runs: list[tuple[str, dict[str, Any]]], figures: list[dict[str, str]], page_dir: Path
) -> str:
    ref = stark_reference()
    main = runs[0][1]
    root = Path(main["run"]["path"])
    near = main["near_duplicates"]
    clusters = [
        {
            **c,
            "members": [
                {**m, "href": episode_href(root, m["episode_id"], page_dir)} for m in c["members"]
            ],
        }
        for c in near["clusters"][:200]
    ]
    countries = {c["report_name"]: c["value"] for c in ref["countries_top10_pct"]["values"]}
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            version=__version__,
            labels=[label for label, _ in runs],
            main=main,
            tables={section: comparison(section, runs) for section in TABLE_ROWS},
            ages=keyed_table(runs, "dataset.age_groups_pct", ref["age_groups_pct"]["values"], 20),
            birthplaces=keyed_table(runs, "dataset.birthplace_pct", countries, 19),
            residences=keyed_table(runs, "dataset.residence_pct", None, 19),
            entities=keyed_table(
                runs,
                "dataset.persona_entities_pct",
                ref["persona_entities_top10_pct"]["values"],
                10,
            ),
            modules=keyed_table(runs, "images.module_pct", None, 10),
            marks=keyed_table(runs, "images.image_marks_by_rule", None, 20),
            nodes=keyed_table_nodes(runs),
            figures=figures,
            clusters=clusters,
            near=near,
            reference=ref,
            judge_rows=rating_rows(runs, ref),
            judge_versus=versus_tables(main),
        )
    )


def keyed_table_nodes(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    nodes = sorted({n for _, r in runs for n in r["text"]["per_node"]})
    out = []
    for node in nodes:
        cells = []
        for _, r in runs:
            usage = r["text"]["per_node"].get(node) or {}
            tokens = (usage.get("prompt_tokens_per_episode") or 0) + (
                usage.get("completion_tokens_per_episode") or 0
            )
            cells.append(
                f"{fmt(tokens if usage else None)} tok · {fmt(usage.get('calls_per_episode'))} "
                f"calls · ${fmt(usage.get('cost_usd_per_episode'))}"
            )
        out.append({"label": node, "values": cells, "stark": ""})
    return out
