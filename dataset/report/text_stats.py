"""The text of a run: tokens and cost, lexical diversity, utterance length, speakers, and
openings repeated across episodes.

distinct-n (Li et al., 2016) is the number of distinct word n-grams over the total number
of n-grams, counted within utterances over the whole run. An opening is the first five
words of a session's first non-empty utterance, lowercased; it is repeated when sessions
of two or more different episodes share it.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Any

from mcu_sim.dataset.report.stats import mean, pct, speaker_role

WORDS = re.compile(r"[\w']+")
OPENING_WORDS = 5
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cost_usd", "calls")


def words(text: str) -> list[str]:
    return WORDS.findall(text.lower())


def opening(turns: list[dict[str, Any]]) -> str | None:
    for turn in turns:
        found = words(turn.get("utterance") or "")
        if found:
            return " ".join(found[:OPENING_WORDS])
    return None


class TextStats:
    def __init__(self) -> None:
        self.episodes = self.with_usage = 0
        self.tokens: list[float] = []
        self.costs: list[float] = []
        self.per_node: dict[str, Counter[str]] = {}
        self.node_episodes: Counter[str] = Counter()
        self.unigrams: set[str] = set()
        self.bigrams: set[tuple[str, str]] = set()
        self.n_unigrams = self.n_bigrams = 0
        self.lengths: Counter[int] = Counter()
        self.utterances = self.empty = 0
        self.speakers: Counter[str] = Counter()
        self.openings: dict[str, set[str]] = {}
        self.opening_sessions: Counter[str] = Counter()

    def add(self, ep: dict[str, Any]) -> None:
        self.episodes += 1
        episode_id = str(ep.get("episode_id"))
        usage = ep.get("usage") or {}
        if usage:
            self.with_usage += 1
            total = cost = 0.0
            for node, counts in usage.items():
                self.node_episodes[node] += 1
                bucket = self.per_node.setdefault(node, Counter())
                for name in USAGE_FIELDS:
                    bucket[name] += float(counts.get(name) or 0)
                total += float(counts.get("prompt_tokens") or 0)
                total += float(counts.get("completion_tokens") or 0)
                cost += float(counts.get("cost_usd") or 0)
            self.tokens.append(total)
            self.costs.append(cost)
        for session in ep.get("sessions") or []:
            turns = session.get("turns") or []
            first = opening(turns)
            if first:
                self.openings.setdefault(first, set()).add(episode_id)
                self.opening_sessions[first] += 1
            for turn in turns:
                self.speakers[speaker_role(str(turn.get("speaker")))] += 1
                tokens = words(turn.get("utterance") or "")
                self.utterances += 1
                if not tokens:
                    self.empty += 1
                    continue
                self.lengths[len(tokens)] += 1
                self.unigrams.update(tokens)
                self.bigrams.update(itertools.pairwise(tokens))
                self.n_unigrams += len(tokens)
                self.n_bigrams += len(tokens) - 1

    def result(self) -> dict[str, Any]:
        spoken = self.utterances - self.empty
        repeated = {k: v for k, v in self.openings.items() if len(v) > 1}
        top = sorted(repeated, key=lambda k: (-len(repeated[k]), k))[:10]
        sessions = sum(self.opening_sessions.values())
        return {
            "episodes_with_usage": self.with_usage,
            "tokens_per_episode": mean(sum(self.tokens), len(self.tokens)),
            "cost_per_episode_usd": mean(sum(self.costs), len(self.costs)),
            "tokens_total": sum(self.tokens),
            "cost_total_usd": round(sum(self.costs), 6),
            "tokens_per_episode_values": self.tokens,
            "per_node": {
                node: {
                    "episodes": self.node_episodes[node],
                    **{
                        f"{name}_per_episode": mean(c[name], self.node_episodes[node])
                        for name in USAGE_FIELDS
                    },
                }
                for node, c in sorted(self.per_node.items())
            },
            "utterances": self.utterances,
            "empty_utterances": self.empty,
            "distinct_1": mean(len(self.unigrams), self.n_unigrams),
            "distinct_2": mean(len(self.bigrams), self.n_bigrams),
            "utterance_words_mean": mean(sum(k * v for k, v in self.lengths.items()), spoken),
            "utterance_words_hist": dict(sorted(self.lengths.items())),
            "turns_by_speaker_pct": {
                role: pct(self.speakers[role], self.utterances) for role in ("user", "assistant")
            },
            "repeated_openings": [
                {"opening": k, "episodes": len(repeated[k]), "sessions": self.opening_sessions[k]}
                for k in top
            ],
            "sessions_with_repeated_opening_pct": pct(
                sum(self.opening_sessions[k] for k in repeated), sessions
            ),
        }
