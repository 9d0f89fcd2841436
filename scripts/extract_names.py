"""Extract the shipped first-name lexicon (``personas/data/first_names.json``) from names-dataset.

Run once, by hand, in a throwaway virtualenv (names-dataset loads ~700k names in about ten
seconds and needs about 2 GB of RAM; mcu-sim never imports it at run time)::

    python3 -m venv /tmp/names-venv && /tmp/names-venv/bin/pip install names-dataset
    /tmp/names-venv/bin/python scripts/extract_names.py

The script reads the 19 countries (with ISO codes) from ``personas/data/demographics.json``;
the rules live in ``scripts/name_rules.py`` (pure functions, also imported by the tests).

Per country and gender it walks names-dataset's per-country rank, best first, and keeps a
name unless one of these rules drops it (checked in this order; ``docs/names.md`` has the
reasons and the numbers):

1. ``not latin script``: names in another script are skipped, except where the Latin-script
   names that pass are fewer than ``TOP_N``: there, two-syllable Hangul names are romanised
   by the Revised Romanization of Korean and join in rank order (the native spelling is
   recorded beside each romanised name).
2. ``orthography``: a letter outside the country's way of writing names (plain letters where
   names are romanised from another script; European accented letters elsewhere).
3. ``listed non-name``: a word on ``NOT_A_NAME`` or the country's own list (abbreviations,
   honorifics, kinship words, surnames and words that the top of the lists rank as names).
4. ``too short``: no vowel, one letter, or two letters beyond the head of the list (the names
   ranked within 500, and at least the first 100 names).
5. ``not one given name``: several words where the country does not use double given names,
   or a double name whose parts are not first names (three letters or more).
6. ``glued``: beyond the head, a title or kinship word written onto a kept name
   (``Drmahmoud``, ``Aboahmed``).
7. ``gender share``: the wanted gender's share is below 0.6; below 0.8 beyond the head of the
   list or when the name is as common a surname.
8. ``surname``: beyond the head, the name ranks much higher as a surname than as a first
   name, in the country (twice as high) or anywhere (ten times).
9. ``spelling variant``: the same name as a better-ranked one up to accents and spacing
   (``José``/``Jose``, ``Young Ho``/``Youngho``).
10. ``truncated``: a prefix, 1-3 letters shorter, of a better-ranked kept name, much rarer
   here and not a common name anywhere (``Kseniy`` of ``Kseniya``; ``Ann`` of ``Anna`` stays).
11. ``respelt``: in Cyrillic- and Arabic-script countries, a spelling one edit from a
    better-ranked kept name, under the same rarity gate (``Mhmoud`` of ``Mahmoud``).

The list stops at ``TOP_N`` names, where the candidates run out, or where the data stops being
names: when the rules drop more than 65% of the last 200 Latin-script candidates (only the
two Egyptian lists get there). The output records the
names-dataset version, its licence and provenance, and for each country and gender how many
names came from each source, how many candidates each rule dropped and where the list was cut.
If a list ends up shorter than ``MIN_NAMES`` the script stops with an error instead of writing
a thin lexicon.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import name_rules as rules  # scripts/ is on sys.path when this file runs as a script

REPO = Path(__file__).resolve().parents[1]
DEMOGRAPHICS = REPO / "personas" / "data" / "demographics.json"
OUTPUT = REPO / "personas" / "data" / "first_names.json"

TOP_N = 1000
MIN_NAMES = 30
# Where the data stops being names: the walk stops when the rules drop more than
# NOISE_DROP_RATE of the last NOISE_WINDOW Latin-script candidates. Past that point what
# passes is mostly noise no rule names (``Elprof``, ``Elsakr``, ``Pharaoh``). Only the two
# Egyptian lists reach it; every other list stays below 0.65 all the way to 1,000 names.
NOISE_WINDOW = 200
NOISE_DROP_RATE = 0.65
GENDER_CODES = {"male": "M", "female": "F"}
LATIN_SOURCE = "names-dataset, Latin script"
ROMANISED_SOURCE = "names-dataset, romanised from Hangul (RR)"


@dataclass(frozen=True)
class Candidate:
    """A name ranked in the country whose majority gender is the wanted one."""

    rank: int
    name: str
    share: float
    surname_rank: int | None
    best_rank: int
    best_surname_rank: int | None


@dataclass
class Selection:
    names: list[str] = field(default_factory=list)
    native: dict[str, str] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    last_rank: int = 0
    head_names: int = 0
    examined: int = 0
    noise_stop: str = ""


def ranked_candidates(
    first_names: dict[str, Any], surnames: Surnames, code: str, gender: str
) -> list[Candidate]:
    """Names ranked in country ``code`` whose majority gender is ``gender``, best rank first."""
    ranked: list[Candidate] = []
    for name, info in first_names.items():
        ranks = info.get("rank") or {}
        shares = info.get("gender") or {}
        rank = ranks.get(code)
        if rank is None or not shares or max(shares, key=shares.get) != gender:
            continue
        best = min(r for r in ranks.values() if r is not None)
        here, anywhere = surnames.here[code].get(name), surnames.best.get(name)
        ranked.append(Candidate(rank, name, shares[gender], here, best, anywhere))
    return sorted(ranked, key=lambda c: (c.rank, c.name))


@dataclass(frozen=True)
class Surnames:
    """names-dataset's surname ranks: per country, and each name's best rank anywhere."""

    here: dict[str, dict[str, int]]
    best: dict[str, int]


def surname_ranks(last_names: dict[str, Any], codes: set[str]) -> Surnames:
    here: dict[str, dict[str, int]] = {code: {} for code in codes}
    best: dict[str, int] = {}
    for name, info in last_names.items():
        ranks = {c: r for c, r in (info.get("rank") or {}).items() if r is not None}
        if ranks:
            best[name] = min(ranks.values())
        for code, rank in ranks.items():
            if code in here:
                here[code][name] = rank
    return Surnames(here, best)


def spelled(candidate: Candidate, code: str, romanize: bool) -> tuple[str, str | None]:
    """The name as it would be shipped, and its Hangul spelling when it was romanised."""
    name = candidate.name.strip()
    if romanize and rules.is_hangul(name) and len(name) == 2:
        return rules.romanize_hangul(name), name
    if code in rules.COMPOUND_NAME_COUNTRIES:
        name = rules.tidy_particles(name)
    return name, None


@dataclass
class ListState:
    """What the rules of one list need to know about it while it is being walked."""

    singles: set[str]  # folded one-word first names of the dataset (parts of double names)
    kept: set[str] = field(default_factory=set)
    prefixes: rules.PrefixIndex = field(default_factory=rules.PrefixIndex)
    typos: rules.TypoIndex = field(default_factory=rules.TypoIndex)


def drop_reason(
    candidate: Candidate, name: str, code: str, tail: bool, state: ListState
) -> str | None:
    """The first rule (in the module docstring's order) that drops the name, or ``None``."""
    failed = rules.string_rule_failures(name, code, tail)
    if failed:
        return failed[0]
    if rules.not_one_given_name(name, code, state.singles):
        return "not one given name"
    if rules.glued(name, tail, state.kept):
        return "glued"
    if rules.weak_gender_share(candidate.share, candidate.rank, candidate.surname_rank, tail):
        return "gender share"
    best_surname = candidate.best_surname_rank
    if rules.surname_first(
        candidate.rank, candidate.surname_rank, candidate.best_rank, best_surname, tail
    ):
        return "surname"
    if rules.fold(name) in state.kept:
        return "spelling variant"
    if rules.truncated(candidate.rank, candidate.best_rank, state.prefixes.longer_rank(name)):
        return "truncated"
    if rules.respelt(code, candidate.rank, candidate.best_rank, state.typos.nearest_rank(name)):
        return "respelt"
    return None


def one_word_names(first_names: dict[str, Any]) -> set[str]:
    """Folded one-word first names of the dataset, either gender (``Maria Jose``)."""
    return {rules.fold(name) for name in first_names if len(rules.parts(name)) == 1}


def select(
    candidates: list[Candidate], code: str, romanize: bool, top_n: int, singles: set[str]
) -> Selection:
    """The first ``top_n`` names that pass every rule, with the count of each rule's drops."""
    chosen = Selection()
    state = ListState(singles=singles)
    recent: collections.deque[bool] = collections.deque(maxlen=NOISE_WINDOW)
    for candidate in candidates:
        if len(chosen.names) == top_n or noisy(recent):
            break
        chosen.examined += 1
        name, original = spelled(candidate, code, romanize)
        tail = not rules.in_head(candidate.rank, len(chosen.names))
        reason = drop_reason(candidate, name, code, tail, state)
        if reason != "not latin script":
            recent.append(reason is not None)
        if noisy(recent):
            share = sum(recent) / len(recent)
            chosen.noise_stop = (
                f"stopped at dataset rank {candidate.rank}: the rules dropped {share:.0%} of "
                f"the last {NOISE_WINDOW} Latin-script candidates"
            )
        if reason:
            chosen.dropped[reason] += 1
            continue
        state.kept.add(rules.fold(name))
        state.prefixes.add(name, candidate.rank)
        state.typos.add(name, candidate.rank)
        chosen.names.append(name)
        chosen.last_rank = candidate.rank
        chosen.head_names += not tail
        if original:
            chosen.native[name] = original
    return chosen


def noisy(recent: collections.deque[bool]) -> bool:
    """A full window in which the rules dropped more than ``NOISE_DROP_RATE``."""
    return len(recent) == NOISE_WINDOW and sum(recent) > NOISE_DROP_RATE * NOISE_WINDOW


def describe(chosen: Selection, candidates: list[Candidate], top_n: int) -> dict[str, Any]:
    """The per-list record: names, sources, and how the selection went."""
    sources = Counter(
        ROMANISED_SOURCE if n in chosen.native else LATIN_SOURCE for n in chosen.names
    )
    full = len(chosen.names) == top_n
    if full:
        cut = f"top {top_n} reached at dataset rank {chosen.last_rank}"
    else:
        ran_out = f"clean names ran out: all {len(candidates)} candidates examined"
        cut = chosen.noise_stop or ran_out
    return {
        "names": chosen.names,
        "sources": dict(sources),
        "romanised_from": chosen.native,
        "deepest_dataset_rank": chosen.last_rank,
        "head_names": chosen.head_names,
        "selection": {
            "candidates_examined": chosen.examined,
            "kept": len(chosen.names),
            "dropped": dict(sorted(chosen.dropped.items())),
            "cut": cut,
        },
    }


def extract(
    first_names: dict[str, Any],
    last_names: dict[str, Any],
    countries: list[dict[str, Any]],
    top_n: int = TOP_N,
) -> dict[str, Any]:
    surnames = surname_ranks(last_names, {c["code"] for c in countries})
    singles = one_word_names(first_names)
    lexicon: dict[str, Any] = {}
    for country in countries:
        code = country["code"]
        per_gender: dict[str, Any] = {}
        for gender, gender_code in GENDER_CODES.items():
            candidates = ranked_candidates(first_names, surnames, code, gender_code)
            chosen = select(candidates, code, romanize=False, top_n=top_n, singles=singles)
            if len(chosen.names) < top_n:
                chosen = select(candidates, code, romanize=True, top_n=top_n, singles=singles)
            if len(chosen.names) < MIN_NAMES:
                raise SystemExit(
                    f"{country['name']} {gender}: only {len(chosen.names)} usable names "
                    f"(need {MIN_NAMES}); extend the romanisation or write a curated list"
                )
            per_gender[gender] = describe(chosen, candidates, top_n)
            summary = f"{code} {gender:6} {len(chosen.names):4} down to rank {chosen.last_rank:5}"
            print(f"{summary} {dict(chosen.dropped.most_common())}", file=sys.stderr)
        lexicon[country["name"]] = per_gender
    return lexicon


def compact_json(document: dict[str, Any]) -> str:
    """Indented JSON with each list of strings on one line (a name list is one line)."""
    text = json.dumps(document, ensure_ascii=False, indent=1)
    string_list = re.compile(r'\[\n\s*("[^"\n]*"(?:,\n\s*"[^"\n]*")*)\n\s*\]')
    return string_list.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n"


def build_metadata(top_n: int) -> dict[str, Any]:
    return {
        "generator": "scripts/extract_names.py",
        "generated_on": dt.date.today().isoformat(),
        "names_dataset_version": metadata.version("names-dataset"),
        "names_dataset_licence": (
            "package metadata: MIT; the LICENSE file in the wheel is Apache-2.0. Its README "
            "says the lists were built from the 2021 Facebook dump (533M accounts) and that "
            "lists of names are generally not copyrightable. Only common first names are "
            "shipped here, never surnames or full names."
        ),
        "top_n": top_n,
        "head": {"rank": rules.HEAD_RANK, "min_names": rules.HEAD_MIN_NAMES},
        "min_gender_share": rules.MIN_GENDER_SHARE,
        "min_ambiguous_gender_share": rules.MIN_AMBIGUOUS_SHARE,
        "surname_ratio": {
            "here": rules.SURNAME_RATIO_HERE,
            "anywhere": rules.SURNAME_RATIO_ANYWHERE,
        },
        "truncation": {
            "max_letters": rules.TRUNCATION_MAX_LETTERS,
            "rank_ratio": rules.TRUNCATION_RANK_RATIO,
            "common_anywhere_rank": rules.COMMON_ANYWHERE_RANK,
        },
        "noise_stop": {"window": NOISE_WINDOW, "drop_rate": NOISE_DROP_RATE},
        "policy": (
            "Latin-script names by names-dataset rank per country and gender, cleaned by the "
            "rules of scripts/name_rules.py (see docs/names.md); Hangul names romanised "
            "(Revised Romanization, two-syllable given names) only where fewer than "
            f"{top_n} Latin-script names pass; no curated fallback."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument(
        "--top-n", type=int, default=TOP_N, help="names per country and gender (paper: 1000)"
    )
    args = parser.parse_args()

    from names_dataset import NameDataset  # the throwaway venv's package, never mcu-sim's

    countries = json.loads(DEMOGRAPHICS.read_text(encoding="utf-8"))["countries"]
    dataset = NameDataset(load_first_names=True, load_last_names=True)
    document = {
        "metadata": build_metadata(args.top_n),
        "names": extract(dataset.first_names, dataset.last_names, countries, args.top_n),
    }
    text = compact_json(document)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode()):,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
