"""Post-processing filters (STARK §3.9, DialogCC §3.3). Non-destructive by design.

Filters never delete data: they compute a list of :class:`Removal` marks from the raw
episode (rule, target, reason, scores, threshold). Exports leave marked items out; ``mcu
filter`` recomputes the marks from the raw data with other thresholds and no LLM call, so a
looser setting removes less and nothing is ever lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcu_sim.personas.schema import Episode, ImageRequest, Removal

EPISODE = "episode"


class FilterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_sessions: int | None = Field(None, ge=1, description="None: episode.sessions_min")
    max_sessions: int | None = Field(None, ge=1, description="None: episode.sessions_max")
    text_safety: Literal["llm", "classifier", "off"] = "llm"

    @field_validator("text_safety", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as ``False``."""
        return "off" if value is False else value

    safety_classifier: str | None = Field(None, description="Local text-classification model")
    clip_threshold: float = 0.21
    nsfw_threshold: float = 0.5
    unsafe_labels: list[str] = Field(default_factory=lambda: ["unsafe"])
    max_matches_per_db_image: int = Field(100, ge=1, description="DialogCC over-matching K")
    inconsistent_similarity: float = Field(0.8, description="DialogCC tau")
    inconsistent_drop_fraction: float = Field(0.2, ge=0, le=1, description="Top-K% dropped")


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


def _score(request: ImageRequest, name: str) -> float | None:
    value = request.image.scores.get(name) if request.image else None
    return float(value) if isinstance(value, int | float) else None


def unsafe_images(episode: Episode, s: FilterSettings) -> list[Removal]:
    removals = []
    for request in episode.image_requests:
        value = _score(request, "nsfw")
        if value is not None and value >= s.nsfw_threshold:
            removals.append(
                Removal(
                    rule="nsfw_image",
                    target=f"image:{request.id}",
                    reason="NSFW score at or above the threshold",
                    scores={"nsfw": value},
                    threshold=s.nsfw_threshold,
                )
            )
    return removals


def misaligned_images(episode: Episode, s: FilterSettings) -> list[Removal]:
    removals = []
    for request in episode.image_requests:
        value = _score(request, "clip")
        if value is not None and value < s.clip_threshold:
            removals.append(
                Removal(
                    rule="misaligned_image",
                    target=f"image:{request.id}",
                    reason="CLIP score below the alignment threshold",
                    scores={"clip": value},
                    threshold=s.clip_threshold,
                )
            )
    return removals


def inconsistent_images(
    episode: Episode, s: FilterSettings, similarity: ImageSimilarity | None
) -> list[Removal]:
    """DialogCC: among several images aligned to one turn, drop the most frequent offenders
    of pairwise similarity below tau (the top fraction by offence count)."""
    removals = []
    for request in episode.image_requests:
        images = ([request.image] if request.image else []) + list(request.alternatives)
        if len(images) < 2 or similarity is None:
            continue
        matrix = similarity([img.path for img in images])
        offences: Counter[int] = Counter()
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                if float(matrix[i][j]) < s.inconsistent_similarity:
                    offences[i] += 1
                    offences[j] += 1
        ranked = [i for i, count in offences.most_common() if count > 0]
        drop = ranked[: round(len(images) * s.inconsistent_drop_fraction)]
        for i in drop:
            removals.append(
                Removal(
                    rule="inconsistent_image",
                    target=f"image:{request.id}#{i}",
                    reason=f"dissimilar to {offences[i]} other image(s) of the same turn",
                    scores={"offences": offences[i]},
                    threshold=s.inconsistent_similarity,
                )
            )
    return removals


EPISODE_RULES = (
    session_count,
    duplicate_persona,
    unsafe_dialogue,
    unsafe_images,
    misaligned_images,
)


def filter_episode(
    episode: Episode, settings: FilterSettings, similarity: ImageSimilarity | None = None
) -> Episode:
    """The episode with its removal marks recomputed from the raw data."""
    removals: list[Removal] = []
    for rule in EPISODE_RULES:
        removals += rule(episode, settings)
    removals += inconsistent_images(episode, settings, similarity)
    status = "filtered" if any(r.target == EPISODE for r in removals) else "complete"
    return episode.model_copy(update={"removals": removals, "status": status})


def over_matched(episodes: list[Episode], settings: FilterSettings) -> dict[str, list[Removal]]:
    """Run-level rule: a database image matched more than K times keeps its first K uses."""
    uses: Counter[str] = Counter()
    marks: dict[str, list[Removal]] = {}
    for episode in episodes:
        for request in episode.image_requests:
            db_id = request.image.db_id if request.image else None
            if not db_id:
                continue
            uses[db_id] += 1
            if uses[db_id] > settings.max_matches_per_db_image:
                marks.setdefault(episode.episode_id, []).append(
                    Removal(
                        rule="over_matched_image",
                        target=f"image:{request.id}",
                        reason=f"database image {db_id} matched more than "
                        f"{settings.max_matches_per_db_image} times in this run",
                        scores={"matches": uses[db_id]},
                        threshold=settings.max_matches_per_db_image,
                    )
                )
    return marks


def filter_run(
    episodes: list[Episode],
    settings: FilterSettings,
    similarity: ImageSimilarity | None = None,
) -> tuple[list[Episode], dict[str, int]]:
    """Recompute every episode's marks, add the run-level ones; return counts per rule."""
    filtered = [filter_episode(e, settings, similarity) for e in episodes]
    extra = over_matched(filtered, settings)
    out = []
    counts: Counter[str] = Counter()
    for episode in filtered:
        removals = episode.removals + extra.get(episode.episode_id, [])
        counts.update(r.rule for r in removals)
        out.append(episode.model_copy(update={"removals": removals}))
    return out, dict(counts)


def removed_targets(episode: Episode) -> set[str]:
    return {r.target for r in episode.removals}
