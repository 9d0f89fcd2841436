"""Does a run read as English? The share of its texts, per group, that do.

A text reads as English when it has at least three words and at least 80 % of them are
English words by the word-frequency list of ``wordfreq`` (Zipf frequency of at least
``MIN_ZIPF``, letters only: ``0056`` or ``image_id`` never count); the person's own name
counts as an English word. Groups: utterances,
events, persona sentences, narratives, image descriptions (album photos and shared ones).

``wordfreq`` comes with the ``report`` extra (``pip install 'mcu-sim[report]'``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MIN_WORDS = 3
MIN_ENGLISH_SHARE = 0.8
# Zipf 2.5 is about once per 300 million words: "selfie", "Mehmet" pass, "quanquiam" not.
MIN_ZIPF = 2.5
GROUPS = ("utterances", "events", "persona", "narratives", "image_descriptions")
_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\S+")


def _zipf() -> Any:
    try:
        from wordfreq import zipf_frequency
    except ImportError as exc:  # pragma: no cover - depends on install
        raise ImportError(
            "the readability check needs wordfreq: pip install 'mcu-sim[report]'"
        ) from exc
    return zipf_frequency


def _letters(token: str) -> bool:
    """Letters only, an apostrophe inside allowed ("I'm", "you're")."""
    return token.replace("'", "").replace("’", "").isalpha()


def reads_as_english(text: str, names: frozenset[str] = frozenset()) -> bool:
    """At least ``MIN_WORDS`` tokens, and at least 80 % of them English words. A token in
    ``names`` (lower case; the episode's person, whose first name is drawn from 1,000 per
    country and is often no English word) counts as one, possessive or not."""
    zipf = _zipf()
    tokens = [t.strip(".,!?;:\"'()“”‘’-") for t in _TOKEN.findall(text)]
    tokens = [t for t in tokens if t]
    if len(tokens) < MIN_WORDS:
        return False
    english = sum(1 for t in tokens if _is_name(t, names) or _is_english(t, zipf))
    return english >= MIN_ENGLISH_SHARE * len(tokens)


def _is_english(token: str, zipf: Any) -> bool:
    return _letters(token) and zipf(token, "en") >= MIN_ZIPF


def _is_name(token: str, names: frozenset[str]) -> bool:
    bare = token.lower().removesuffix("'s").removesuffix("’s")
    return bool(names) and bare in names


def episode_names(episode: dict[str, Any]) -> frozenset[str]:
    """The words of the episode's person's name, lower case."""
    name = (episode.get("demographics") or {}).get("name") or ""
    return frozenset(word.lower() for word in name.replace("-", " ").split())


def episode_texts(episode: dict[str, Any]) -> dict[str, list[str]]:
    """The texts of one episode (its JSON as written) by group."""
    turns = [t for s in episode.get("sessions", []) for t in s.get("turns", [])]
    shared = [t["sharing"]["image_description"] for t in turns if t.get("sharing")]
    return {
        "utterances": [t["utterance"] for t in turns if not t.get("sharing")],
        "events": [e["event"] for e in episode.get("events", {}).get("events", [])],
        "persona": [p["sentence"] for p in episode.get("persona", [])],
        "narratives": [episode["narrative"]["narrative"]] if episode.get("narrative") else [],
        "image_descriptions": [d["description"] for d in episode.get("device_images", [])] + shared,
    }


def readability(episodes: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: ``texts``, ``readable`` and ``share`` (readable / texts; 1.0 when no
    text), plus ``unreadable``: up to five examples that failed."""
    result = {g: {"texts": 0, "readable": 0, "share": 1.0, "unreadable": []} for g in GROUPS}
    for episode in episodes:
        names = episode_names(episode)
        for group, texts in episode_texts(episode).items():
            entry = result[group]
            for text in texts:
                entry["texts"] += 1
                if reads_as_english(text, names):
                    entry["readable"] += 1
                elif len(entry["unreadable"]) < 5:
                    entry["unreadable"].append(text)
    for entry in result.values():
        if entry["texts"]:
            entry["share"] = entry["readable"] / entry["texts"]
    return result


def run_readability(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """:func:`readability` of every episode file in ``run_dir/episodes``."""
    paths = sorted(Path(run_dir, "episodes").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no episode files in {Path(run_dir, 'episodes')}")
    return readability(json.loads(p.read_text()) for p in paths)
