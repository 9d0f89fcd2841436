"""Post-processing filters (STARK §3.9, DialogCC §3.3). Non-destructive by design.

Filters never delete data: they compute a list of :class:`Removal` marks from the raw
episode (rule, target, reason, scores, threshold). A mark on the episode itself sets its
``status`` to ``filtered`` (exports leave such episodes out unless asked to include them);
marks on items (a persona attribute, a session, an image) only flag them: the items stay in
the episode and in every export, with their marks in ``removals`` for the user to apply.
``mcu filter`` recomputes the marks from the raw data with other thresholds and no LLM call,
so a looser setting removes less and nothing is ever lost.

A sharing turn that shows an album photo carries a copy of the album request's image; image
rules judge (and count) that image once, under the album request, and name the turns that
show it. When DialogCC's inconsistent-images rule cannot run (no image similarity), the
requests it would have judged say so in their ``attempts``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from mcu_sim.config_filters import FilterSettings
from mcu_sim.personas.schema import Episode, ImageRequest, Removal

EPISODE = "episode"
NOT_APPLIED = "filter_not_applied"
NO_SIMILARITY = "no CLIP image similarity available (configure images.scorers.clip weights)"


ImageSimilarity = Callable[[Sequence[str]], Any]  # paths -> (n, n) cosine matrix


def session_count(episode: Episode, s: FilterSettings) -> list[Removal]:
    n = len(episode.sessions)
    if s.min_sessions <= n <= s.max_sessions:
        return []
    return [
        Removal(
            rule="session_count",
            target=EPISODE,
            reason=f"{n} sessions, outside {s.min_sessions}-{s.max_sessions}",
            scores={"sessions": n},
            threshold=f"{s.min_sessions}-{s.max_sessions}",
        )
    ]


def duplicate_persona(episode: Episode, s: FilterSettings) -> list[Removal]:
    seen: dict[tuple[str, str, str], int] = {}
    removals = []
    for index, attribute in enumerate(episode.persona):
        key = attribute.dedup_key()
        if key in seen:
            removals.append(
                Removal(
                    rule="duplicate_persona",
                    target=f"persona[{index}]",
                    reason=f"same attribute as persona[{seen[key]}]: {key[2]!r}",
                )
            )
        else:
            seen[key] = index
    return removals


def unsafe_dialogue(episode: Episode, s: FilterSettings) -> list[Removal]:
    removals = []
    for session in episode.sessions:
        verdict = session.safety or {}
        if verdict.get("label") in s.unsafe_labels:
            removals.append(
                Removal(
                    rule="unsafe_dialogue",
                    target=f"session[{session.index}]",
                    reason=str(verdict.get("reason", ""))[:300],
                    scores={"label": verdict["label"]},
                    threshold=",".join(s.unsafe_labels),
                )
            )
    if removals and len(removals) == len(episode.sessions):
        removals.append(
            Removal(
                rule="unsafe_dialogue", target=EPISODE, reason="every session was judged unsafe"
            )
        )
    return removals


def shown_album_photo(episode: Episode) -> dict[str, str]:
    """Sharing request id -> album request id, for sharing turns that show an album photo's
    own image (``link_album`` copies the record; the same file and hash)."""
    by_id = {r.id: r for r in episode.image_requests}
    album = {d.id: d.request_id for d in episode.device_images}
    links = {}
    for request in episode.image_requests:
        if request.origin != "sharing" or request.device_image_id is None or not request.image:
            continue
        source = by_id.get(album.get(request.device_image_id) or "")
        image = source.image if source else None
        if image and (image.path, image.sha256) == (request.image.path, request.image.sha256):
            links[request.id] = source.id  # type: ignore[union-attr]
    return links


def distinct_images(episode: Episode) -> list[tuple[ImageRequest, list[str]]]:
    """Each request whose image is its own, with the sharing requests that show it too."""
    links = shown_album_photo(episode)
    shown_in: dict[str, list[str]] = {}
    for sharing, source in links.items():
        shown_in.setdefault(source, []).append(sharing)
    return [(r, shown_in.get(r.id, [])) for r in episode.image_requests if r.id not in links]


def _score(request: ImageRequest, name: str) -> float | None:
    value = request.image.scores.get(name) if request.image else None
    return float(value) if isinstance(value, int | float) else None


def _also(shown_in: list[str]) -> str:
    return f" (also shown in {', '.join(shown_in)})" if shown_in else ""


def unsafe_images(episode: Episode, s: FilterSettings) -> list[Removal]:
    removals = []
    for request, shown_in in distinct_images(episode):
        value = _score(request, "nsfw")
        if value is not None and value >= s.nsfw_threshold:
            removals.append(
                Removal(
                    rule="nsfw_image",
                    target=f"image:{request.id}",
                    reason="NSFW score at or above the threshold" + _also(shown_in),
                    scores={"nsfw": value},
                    threshold=s.nsfw_threshold,
                )
            )
    return removals


ALIGNMENT_SCORES = (("clip", "CLIP score"), ("pickscore", "PickScore"))


def misaligned_images(episode: Episode, s: FilterSettings) -> list[Removal]:
    """One mark per image below the CLIP threshold or, when ``pickscore_threshold`` is set,
    below the PickScore one (STARK §3.9); a missing score (not scored) never marks."""
    thresholds = {"clip": s.clip_threshold, "pickscore": s.pickscore_threshold}
    removals = []
    for request, shown_in in distinct_images(episode):
        below: dict[str, float] = {}
        for name, _ in ALIGNMENT_SCORES:
            value, threshold = _score(request, name), thresholds[name]
            if value is not None and threshold is not None and value < threshold:
                below[name] = value
        if not below:
            continue
        labels = " and ".join(label for name, label in ALIGNMENT_SCORES if name in below)
        limit: float | str | None = thresholds[next(iter(below))]
        if len(below) > 1:
            limit = ", ".join(f"{name} {thresholds[name]:g}" for name in below)
        removals.append(
            Removal(
                rule="misaligned_image",
                target=f"image:{request.id}",
                reason=f"{labels} below the alignment threshold" + _also(shown_in),
                scores=dict(below),
                threshold=limit,
            )
        )
    return removals


def _offences(matrix: Any, n: int, tau: float) -> Counter[int]:
    offences: Counter[int] = Counter()
    for i in range(n):
        for j in range(i + 1, n):
            if float(matrix[i][j]) < tau:
                offences[i] += 1
                offences[j] += 1
    return offences


def inconsistent_images(
    episode: Episode,
    s: FilterSettings,
    similarity: ImageSimilarity | None,
    missing: str = NO_SIMILARITY,
) -> tuple[list[Removal], dict[str, str]]:
    """DialogCC: among several images aligned to one turn, drop the most frequent offenders
    of pairwise similarity below tau (the top fraction by offence count).

    Returns the marks and, per request the rule could not judge, why (no similarity, or it
    failed on these images)."""
    removals: list[Removal] = []
    skipped: dict[str, str] = {}
    for request, _ in distinct_images(episode):
        images = ([request.image] if request.image else []) + list(request.alternatives)
        if len(images) < 2:
            continue
        if similarity is None:
            skipped[request.id] = missing
            continue
        try:
            matrix = similarity([img.path for img in images])
        except Exception as exc:  # an unreadable image: say so, do not guess
            skipped[request.id] = f"similarity failed: {type(exc).__name__}: {exc}"[:300]
            continue
        offences = _offences(matrix, len(images), s.inconsistent_similarity)
        ranked = [i for i, count in offences.most_common() if count > 0]
        for i in ranked[: round(len(images) * s.inconsistent_drop_fraction)]:
            removals.append(
                Removal(
                    rule="inconsistent_image",
                    target=f"image:{request.id}#{i}",
                    reason=f"dissimilar to {offences[i]} other image(s) of the same turn",
                    scores={"offences": offences[i]},
                    threshold=s.inconsistent_similarity,
                )
            )
    return removals, skipped


EPISODE_RULES = (
    session_count,
    duplicate_persona,
    unsafe_dialogue,
    unsafe_images,
    misaligned_images,
)


def _note_skipped(requests: list[ImageRequest], skipped: dict[str, str]) -> list[ImageRequest]:
    """Replace each request's earlier not-applied notes with the current ones."""
    out = []
    for request in requests:
        attempts = [a for a in request.attempts if a.get("event") != NOT_APPLIED]
        if request.id in skipped:
            why = skipped[request.id]
            attempts.append({"event": NOT_APPLIED, "rule": "inconsistent_image", "reason": why})
        if attempts != request.attempts:
            request = request.model_copy(update={"attempts": attempts})
        out.append(request)
    return out


MCU_ONLY_RULES = (session_count, duplicate_persona)


def filter_episode(
    episode: Episode,
    settings: FilterSettings,
    similarity: ImageSimilarity | None = None,
    missing: str = NO_SIMILARITY,
) -> Episode:
    """The episode with its removal marks recomputed from the raw data. ``missing`` says
    why there is no ``similarity``; it is recorded on each request the rule skipped."""
    removals: list[Removal] = []
    for rule in EPISODE_RULES:
        if episode.kind == "augmented" and rule in MCU_ONLY_RULES:
            continue  # a given dialogue: its session count and (absent) persona are not ours
        removals += rule(episode, settings)
    marks, skipped = inconsistent_images(episode, settings, similarity, missing)
    removals += marks
    status = "filtered" if any(r.target == EPISODE for r in removals) else "complete"
    requests = _note_skipped(episode.image_requests, skipped)
    return episode.model_copy(
        update={"removals": removals, "status": status, "image_requests": requests}
    )


class OverMatchedCounter:
    """Run-level rule, one episode at a time in run order: a database image matched more
    than K times keeps its first K uses (an album photo shown again in a sharing turn is
    one use). Only the use counts are kept, so a run of any size is marked in bounded
    memory."""

    def __init__(self, settings: FilterSettings) -> None:
        self.limit = settings.max_matches_per_db_image
        self.uses: Counter[str] = Counter()

    def marks(self, episode: Episode) -> list[Removal]:
        """The over-matched marks of ``episode``, the next one in run order."""
        out = []
        for request, shown_in in distinct_images(episode):
            db_id = request.image.db_id if request.image else None
            if not db_id:
                continue
            self.uses[db_id] += 1
            if self.uses[db_id] > self.limit:
                out.append(
                    Removal(
                        rule="over_matched_image",
                        target=f"image:{request.id}",
                        reason=f"database image {db_id} matched more than "
                        f"{self.limit} times in this run" + _also(shown_in),
                        scores={"matches": self.uses[db_id]},
                        threshold=self.limit,
                    )
                )
        return out


def iter_filter_run(
    episodes: Iterable[Episode],
    settings: FilterSettings,
    similarity: ImageSimilarity | None = None,
    counts: Counter[str] | None = None,
) -> Iterator[Episode]:
    """Each episode with its marks recomputed and the run-level ones added, as it comes;
    ``counts`` (if given) is updated with the removals per rule."""
    counter = OverMatchedCounter(settings)
    for episode in episodes:
        filtered = filter_episode(episode, settings, similarity)
        removals = filtered.removals + counter.marks(filtered)
        if counts is not None:
            counts.update(r.rule for r in removals)
        yield filtered.model_copy(update={"removals": removals})


def filter_run(
    episodes: list[Episode],
    settings: FilterSettings,
    similarity: ImageSimilarity | None = None,
) -> tuple[list[Episode], dict[str, int]]:
    """Recompute every episode's marks, add the run-level ones; return counts per rule."""
    counts: Counter[str] = Counter()
    out = list(iter_filter_run(episodes, settings, similarity, counts))
    return out, dict(counts)


def removed_targets(episode: Episode) -> set[str]:
    return {r.target for r in episode.removals}
