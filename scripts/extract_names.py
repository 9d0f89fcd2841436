"""Extract the shipped first-name lexicon (``personas/data/first_names.json``) from names-dataset.

Run once, by hand, in a throwaway virtualenv (names-dataset loads ~700k names in a few
seconds and needs about 2 GB of RAM; mcu-sim never imports it at run time)::

    python3 -m venv /tmp/names-venv && /tmp/names-venv/bin/pip install names-dataset
    /tmp/names-venv/bin/python scripts/extract_names.py

The script reads the 19 countries (with ISO codes) from ``personas/data/demographics.json``
and needs nothing from mcu-sim itself.

How a name is chosen, per country and gender, walking names-dataset's per-country rank:

1. The name's majority gender is the wanted one with a share of at least ``MIN_GENDER_SHARE``,
   or of at least ``MIN_AMBIGUOUS_SHARE`` when the name is not ranked higher among the
   country's surnames than among its first names. This removes most surnames typed into the
   first-name field (``Wang``, ``Chen``: surnames carry no gender, so their share sits near
   one half) while keeping given names shared by both genders abroad (``Jean``, ``Nikita``).
2. The name is written in Latin letters, contains a vowel, and is not on ``NOT_A_NAME``
   or ``NOT_A_NAME_IN_COUNTRY`` (abbreviations, honorifics, kinship words, surnames, words
   and endearments that the dataset ranks as first names, and names of the other gender in
   that country; picked by reading the top of each list). Spelling variants that differ only
   by accents or spacing (``José``/``Jose``, ``Young Ho``/``Youngho``) are kept once, the
   better-ranked spelling.
3. Names in another script are skipped, except where the Latin-script names that pass are
   fewer than ``TOP_N``: there, Hangul names are romanised by the Revised Romanization of
   Korean (syllable by syllable, no sound changes, as RR allows for personal names) and only
   two-syllable given names are kept. The native spelling is recorded beside each romanised
   name. No curated list is used; if a list still ends up shorter than ``MIN_NAMES`` the
   script stops with an error instead of writing a thin lexicon.

The output records the names-dataset version, its licence and provenance, and for each
country and gender how many names came from each source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import unicodedata
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMOGRAPHICS = REPO / "personas" / "data" / "demographics.json"
OUTPUT = REPO / "personas" / "data" / "first_names.json"

TOP_N = 50
MIN_NAMES = 30
MIN_GENDER_SHARE = 0.8
MIN_AMBIGUOUS_SHARE = 0.6
GENDER_CODES = {"male": "M", "female": "F"}


def words(text: str) -> list[str]:
    return text.split()


# Tokens ranked as first names that are not given names (or would read as a joke in a
# dialogue): abbreviations and honorifics, kinship words, common surnames with a gender
# skew, words and endearments, reduplicated nicknames. Compared after ``fold``.
NOT_A_NAME = frozenset(
    words(
        """
    md mohd muhd sk ch mr mrs ms dr sri haji hajji abu abo om um umm ummu abd abdul al el
    sa ma ana
    kumar kumari devi patel khan singh kaur shaikh sheikh syed malik raja rana babu
    love lovely princess prince honey baby queen king sweet cute
    bunda mamah mama papa bunga cinta putri
    china seven stone snow rain spring summer echo candy cherry coco
    meme momo lolo jojo koko gogo toto didi dodo nana lala mimi nono nona nony
    shosho tota mido medo hamo hema mody dody bosy koky mero mony tete soso
    mohmed muslim
    """
    )
)

# Per-country slips found by reading the lists: names-dataset's gender share is global, so a
# name can be male in one country and female in ours (Miki, Simone, Nicola); Korean users
# often split a given name into two words, leaving one syllable in the first-name field.
NOT_A_NAME_IN_COUNTRY = {
    "CN": frozenset({"li", "lemon", "fish"}),
    "JP": frozenset({"miki", "mika"}),
    "DE": frozenset({"simone"}),
    "BR": frozenset({"simone"}),
    "GB": frozenset({"nicola"}),
    "KR": frozenset(words("sung won seung young dong jong sang hyun hoon yoon jin min")),
}

VOWELS = set("aeiouy")

# Revised Romanization of Korean, syllable by syllable.
HANGUL_INITIALS = words("g kk n d tt r m b pp s ss - j jj ch k t p h")
HANGUL_MEDIALS = words("a ae ya yae eo e yeo ye o wa wae oe yo u wo we wi yu eu ui i")
HANGUL_FINALS = words("- k k k n n n t l k m l l l p l m p p t t ng t t k t p t")


def fold(text: str) -> str:
    """Lower-case, strip accents and separators: the key that spots spelling variants."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = (ch for ch in decomposed if not unicodedata.combining(ch) and ch not in " -'")
    return "".join(kept).lower()


def is_latin(name: str) -> bool:
    """Every letter is a Latin letter (spaces, hyphens and apostrophes allowed)."""
    return all(ch in " -'" or "LATIN" in unicodedata.name(ch, "") for ch in name)


def is_hangul(name: str) -> bool:
    return bool(name) and all("\uac00" <= ch <= "\ud7a3" for ch in name)


def romanize_hangul(name: str) -> str:
    """``영수`` -> ``Yeongsu`` (RR, no sound changes between syllables, as for given names)."""
    out: list[str] = []
    previous_final = ""
    for ch in name:
        code = ord(ch) - 0xAC00
        initial = HANGUL_INITIALS[code // 588]
        medial = HANGUL_MEDIALS[(code % 588) // 28]
        final = HANGUL_FINALS[code % 28]
        if initial == "-":
            initial = ""
        elif initial == "r" and previous_final == "l":
            initial = "l"  # ㄹㄹ is written ll
        final = "" if final == "-" else final
        out.append(initial + medial + final)
        previous_final = final
    return "".join(out).capitalize()


def acceptable(name: str, code: str) -> bool:
    folded = fold(name)
    if len(folded) < 2 or folded in NOT_A_NAME or not VOWELS & set(folded):
        return False
    if folded in NOT_A_NAME_IN_COUNTRY.get(code, ()):
        return False
    return folded.isalpha()


def ranked_candidates(
    first_names: dict[str, Any], surname_ranks: dict[str, int], code: str, gender: str
) -> list[tuple[int, str]]:
    """``(rank, name)`` in country ``code`` for names of ``gender``, best rank first."""
    ranked: list[tuple[int, str]] = []
    for name, info in first_names.items():
        rank = info.get("rank", {}).get(code)
        shares = info.get("gender") or {}
        if rank is None or not shares:
            continue
        majority = max(shares, key=shares.get)
        share = shares[majority]
        if majority != gender or share < MIN_AMBIGUOUS_SHARE:
            continue
        if share < MIN_GENDER_SHARE and surname_ranks.get(name, rank + 1) <= rank:
            continue  # gender-neutral and at least as common as a surname: likely a surname
        ranked.append((rank, name))
    return sorted(ranked)


def surname_ranks_by_country(last_names: dict[str, Any], codes: set[str]) -> dict[str, dict]:
    ranks: dict[str, dict[str, int]] = {code: {} for code in codes}
    for name, info in last_names.items():
        for code, rank in (info.get("rank") or {}).items():
            if code in ranks and rank is not None:
                ranks[code][name] = rank
    return ranks


def select(
    candidates: list[tuple[int, str]], code: str, romanize: bool
) -> tuple[list[str], dict[str, str], int]:
    """The first ``TOP_N`` usable names, the native spelling of romanised ones, the last rank.

    With ``romanize``, two-syllable Hangul names join the Latin ones in rank order.
    """
    names: list[str] = []
    native: dict[str, str] = {}
    seen: set[str] = set()
    last_rank = 0
    for rank, raw in candidates:
        name = raw.strip()
        original = None
        if romanize and is_hangul(name) and len(name) == 2:
            original, name = name, romanize_hangul(name)
        elif not is_latin(name):
            continue
        if not acceptable(name, code) or fold(name) in seen:
            continue
        seen.add(fold(name))
        names.append(name)
        last_rank = rank
        if original:
            native[name] = original
        if len(names) == TOP_N:
            break
    return names, native, last_rank


def extract(
    first_names: dict[str, Any], last_names: dict[str, Any], countries: list[dict[str, Any]]
) -> dict[str, Any]:
    surnames = surname_ranks_by_country(last_names, {c["code"] for c in countries})
    lexicon: dict[str, Any] = {}
    for country in countries:
        per_gender: dict[str, Any] = {}
        for gender, code in GENDER_CODES.items():
            candidates = ranked_candidates(
                first_names, surnames[country["code"]], country["code"], code
            )
            names, native, last_rank = select(candidates, country["code"], romanize=False)
            if len(names) < TOP_N:
                names, native, last_rank = select(candidates, country["code"], romanize=True)
            if len(names) < MIN_NAMES:
                raise SystemExit(
                    f"{country['name']} {gender}: only {len(names)} usable names "
                    f"(need {MIN_NAMES}); extend the romanisation or write a curated list"
                )
            sources = Counter(
                "names-dataset, romanised from Hangul (RR)"
                if n in native
                else "names-dataset, Latin script"
                for n in names
            )
            per_gender[gender] = {
                "names": names,
                "sources": dict(sources),
                "romanised_from": native,
                "deepest_dataset_rank": last_rank,
            }
            summary = f"{country['code']} {gender:6} {len(names):3} down to rank {last_rank:5}"
            print(f"{summary} {dict(sources)}", file=sys.stderr)
        lexicon[country["name"]] = per_gender
    return lexicon


def main() -> None:
    global TOP_N
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument(
        "--top-n", type=int, default=TOP_N, help="names per country and gender (paper: 1000)"
    )
    args = parser.parse_args()
    TOP_N = args.top_n

    from names_dataset import NameDataset  # the throwaway venv's package, never mcu-sim's

    countries = json.loads(DEMOGRAPHICS.read_text(encoding="utf-8"))["countries"]
    dataset = NameDataset(load_first_names=True, load_last_names=True)
    document = {
        "metadata": {
            "generator": "scripts/extract_names.py",
            "generated_on": dt.date.today().isoformat(),
            "names_dataset_version": metadata.version("names-dataset"),
            "names_dataset_licence": (
                "package metadata: MIT; the LICENSE file in the wheel is Apache-2.0. Its README "
                "says the lists were built from the 2021 Facebook dump (533M accounts) and that "
                "lists of names are generally not copyrightable. Only common first names are "
                "shipped here, never surnames or full names."
            ),
            "top_n": TOP_N,
            "min_gender_share": MIN_GENDER_SHARE,
            "min_ambiguous_gender_share": MIN_AMBIGUOUS_SHARE,
            "policy": (
                "Latin-script names by names-dataset rank per country and gender; Hangul names "
                "romanised (Revised Romanization, two-syllable given names) only where fewer "
                f"than {TOP_N} Latin-script names pass; no curated fallback."
            ),
        },
        "names": extract(dataset.first_names, dataset.last_names, countries),
    }
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode()):,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
