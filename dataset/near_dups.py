"""Near-duplicate episodes, personas and images across a run.

Dialogues and personas are compared as sets of word 3-grams: datasketch's MinHash estimates
their Jaccard similarity and its MinHashLSH finds the candidates without comparing every
pair; a candidate counts when its estimated Jaccard is at or above the configured threshold.
Images are compared by perceptual hash (``imagehash.phash``, 64 bits): two images are
near-duplicates when the Hamming distance of their hashes is at most the configured one.
Candidates are found by the pigeonhole rule (split the 64 bits into ``distance + 1`` bands:
two hashes that close agree exactly on at least one band), so no run is compared pairwise.

The index is streamed in run order: each episode is compared with the ones before it, so
the first of a group is never marked and every later one is marked with its best earlier
match (``mcu filter``'s ``near_duplicate`` rule). Two images with the same database id are
left to the over-matched rule (DialogCC's K uses), which governs database reuse; within one
episode, requests carrying the same file (an album photo shown again) are one image.
Only the hashes are kept, so memory grows by about a kilobyte per episode.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.graphs.filters import EPISODE, FilterSettings
from mcu_sim.personas.schema import Removal

RULE = "near_duplicate"
WORDS = re.compile(r"[\w']+")
SHINGLE = 3
HASH_BITS = 64
KINDS = ("dialogue", "persona", "image")


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    """Word n-grams of the lowercased text (the whole text when shorter than n words)."""
    words = WORDS.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def dialogue_text(episode: dict[str, Any]) -> str:
    """Every utterance and shared-image description of the episode, in order."""
    parts = []
    for session in episode.get("sessions") or []:
        for turn in session.get("turns") or []:
            parts.append(turn.get("utterance") or "")
            sharing = turn.get("sharing") or {}
            parts.append(sharing.get("image_description") or "")
    return "\n".join(p for p in parts if p)


def persona_text(episode: dict[str, Any]) -> str:
    return "\n".join(p.get("sentence") or "" for p in episode.get("persona") or [])


def episode_images(episode: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(request id, image record)`` of each distinct image of the episode (chosen ones)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for request in episode.get("image_requests") or []:
        image = request.get("image")
        if not image or not image.get("path"):
            continue
        key = (image["path"], image.get("sha256") or "")
        if key in seen:  # the album photo shown again in a sharing turn: one image
            continue
        seen.add(key)
        out.append((str(request.get("id")), image))
    return out


@dataclass(frozen=True)
class Match:
    """``target`` of ``episode_id`` is a near-duplicate of ``of_target`` of ``of_episode``."""

    kind: str
    episode_id: str
    target: str
    of_episode: str
    of_target: str
    score: float
    metric: str  # "jaccard" (higher is closer) or "hamming" (lower is closer)

    def removal(self, settings: FilterSettings) -> Removal:
        if self.kind == "image":
            reason = (
                f"image near-duplicate of {self.of_episode} {self.of_target} (perceptual "
                f"hash {int(self.score)} bits apart)"
            )
            threshold: float = settings.near_duplicate_image_distance
        else:
            reason = (
                f"{self.kind} near-duplicate of {self.of_episode} (estimated Jaccard "
                f"{self.score:.2f} of word {SHINGLE}-gram sets)"
            )
            threshold = (
                settings.near_duplicate_text
                if self.kind == "dialogue"
                else settings.near_duplicate_persona
            )
        return Removal(
            rule=RULE,
            target=self.target,
            reason=reason,
            scores={self.metric: round(self.score, 4), "of": f"{self.of_episode}:{self.of_target}"},
            threshold=threshold,
        )


@dataclass
class _TextIndex:
    threshold: float
    num_perm: int
    lsh: Any = None
    hashes: dict[str, Any] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)

    def add(self, key: str, grams: set[str]) -> tuple[str, float] | None:
        """Insert ``key``; return its closest earlier near-duplicate and the estimate."""
        if not grams:
            return None
        from datasketch import LeanMinHash, MinHash

        minhash = MinHash(num_perm=self.num_perm)
        minhash.update_batch([g.encode("utf-8") for g in sorted(grams)])
        lean = LeanMinHash(minhash)
        found = []
        for other in self.lsh.query(lean):
            score = float(lean.jaccard(self.hashes[other]))
            if score >= self.threshold:  # LSH candidates include some false positives
                found.append((-score, self.order[other], other))
        self.lsh.insert(key, lean)
        self.hashes[key] = lean
        self.order[key] = len(self.order)
        if not found:
            return None
        _, _, best = min(found)  # the closest; among equals, the earliest in run order
        return best, float(lean.jaccard(self.hashes[best]))


@dataclass
class _ImageIndex:
    distance: int
    bands: list[dict[int, list[tuple[int, str, str, int, str | None]]]] = field(
        default_factory=list
    )
    count: int = 0

    def __post_init__(self) -> None:
        self.bands = [{} for _ in range(self.distance + 1)]
        edges = [round(i * HASH_BITS / (self.distance + 1)) for i in range(self.distance + 2)]
        self.masks = [((1 << (hi - lo)) - 1) << lo for lo, hi in itertools.pairwise(edges)]

    def add(
        self, episode_id: str, request_id: str, value: int, db_id: str | None
    ) -> tuple[str, str, int] | None:
        found: list[tuple[int, int, str, str]] = []
        seen: set[int] = set()
        for band, mask in zip(self.bands, self.masks, strict=True):
            for number, other_ep, other_req, other_value, other_db in band.get(value & mask, ()):
                if number in seen or (db_id and other_db == db_id):
                    continue
                seen.add(number)
                bits = (value ^ other_value).bit_count()
                if bits <= self.distance:
                    found.append((bits, number, other_ep, other_req))
        entry = (self.count, episode_id, request_id, value, db_id)
        self.count += 1
        for band, mask in zip(self.bands, self.masks, strict=True):
            band.setdefault(value & mask, []).append(entry)
        if not found:
            return None
        bits, _, other_ep, other_req = min(found)  # closest, then earliest in run order
        return other_ep, other_req, bits


def image_hash(path: Path) -> int | None:
    """The 64-bit perceptual hash of an image file, or None when it cannot be read."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as img:
            bits = imagehash.phash(img).hash.flatten()
    except (OSError, ValueError):
        return None
    return int("".join("1" if b else "0" for b in bits), 2)


class NearDuplicateIndex:
    """Episodes fed in run order; each :meth:`add` returns the episode's matches with the
    episodes before it. ``run_root`` resolves image paths (no images compared without it)."""

    def __init__(self, settings: FilterSettings, run_root: Path | None = None) -> None:
        self.settings = settings
        self.run_root = run_root
        self.dialogue = _TextIndex(settings.near_duplicate_text, settings.near_duplicate_num_perm)
        self.persona = _TextIndex(settings.near_duplicate_persona, settings.near_duplicate_num_perm)
        self.images = _ImageIndex(settings.near_duplicate_image_distance)
        self.unreadable_images = 0

    def add(self, episode: dict[str, Any]) -> list[Match]:
        episode_id = str(episode.get("episode_id"))
        out = []
        for kind, index, text, target in (
            ("dialogue", self.dialogue, dialogue_text(episode), EPISODE),
            ("persona", self.persona, persona_text(episode), "persona"),
        ):
            found = index.add(episode_id, shingles(text))
            if found:
                of = found[0]
                out.append(Match(kind, episode_id, target, of, target, found[1], "jaccard"))
        if self.run_root is not None:
            out += list(self._images(episode_id, episode))
        return out

    def _images(self, episode_id: str, episode: dict[str, Any]) -> Iterator[Match]:
        for request_id, image in episode_images(episode):
            value = image_hash(self.run_root / image["path"])  # type: ignore[operator]
            if value is None:
                self.unreadable_images += 1
                continue
            found = self.images.add(episode_id, request_id, value, image.get("db_id"))
            if found:
                of_ep, of_req, bits = found
                target = f"image:{request_id}"
                yield Match("image", episode_id, target, of_ep, f"image:{of_req}", bits, "hamming")


def clusters(matches: list[Match]) -> list[dict[str, Any]]:
    """Groups of near-duplicates (connected components of the matches, per kind), each
    listed in run order of first appearance: the first member is the one kept."""
    parent: dict[tuple[str, str, str], tuple[str, str, str]] = {}
    order: dict[tuple[str, str, str], int] = {}

    def find(node: tuple[str, str, str]) -> tuple[str, str, str]:
        parent.setdefault(node, node)
        order.setdefault(node, len(order))
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    scores: dict[tuple[str, str, str], float] = {}
    for m in matches:
        a = find((m.kind, m.of_episode, m.of_target))
        b = find((m.kind, m.episode_id, m.target))
        scores[(m.kind, m.episode_id, m.target)] = m.score
        if a != b:
            first, second = sorted((a, b), key=order.__getitem__)
            parent[second] = first
    groups: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    for node in sorted(parent, key=order.__getitem__):
        groups.setdefault(find(node), []).append(node)
    out = []
    for members in groups.values():
        kind = members[0][0]
        out.append(
            {
                "kind": kind,
                "metric": "hamming" if kind == "image" else "jaccard",
                "members": [
                    {"episode_id": ep, "target": target, "score": scores.get((k, ep, target))}
                    for k, ep, target in members
                ],
            }
        )
    return sorted(out, key=lambda c: (KINDS.index(c["kind"]), -len(c["members"])))


class NearDuplicateMarker:
    """``mcu filter``'s ``near_duplicate`` rule, one episode at a time in run order: a
    dialogue near-duplicate of an earlier episode marks the episode (it is filtered); a
    persona or an image near-duplicate marks that item only."""

    def __init__(self, settings: FilterSettings, run_root: Path) -> None:
        self.settings = settings
        self.index = NearDuplicateIndex(settings, run_root)

    def marks(self, episode: dict[str, Any]) -> list[Removal]:
        return [m.removal(self.settings) for m in self.index.add(episode)]
