"""The dataset statistics of STARK's Tables 1-2 and Figures 3-4, and of the image pipeline.

Everything is accumulated one episode at a time from the episode JSON (plain dicts, not
validated models), so a run of any size and any kind is read once, and a missing part (no
images, no events, no persona) leaves its statistics empty instead of failing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from mcu_sim.personas.schema import ASSISTANT

SCORES = ("clip", "aesthetic", "nsfw")
INTERVAL_BINS = (  # (label, most days) for the gap between consecutive sessions
    ("same day", 0),
    ("1-6 days", 6),
    ("1-4 weeks", 30),
    ("1-6 months", 182),
    ("6-12 months", 365),
    ("over a year", None),
)


def pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def mean(total: float, count: int) -> float | None:
    return round(total / count, 4) if count else None


def shares(counter: Counter[str]) -> dict[str, float]:
    """Percent of the total per key, largest first."""
    total = sum(counter.values())
    return {k: pct(v, total) or 0.0 for k, v in counter.most_common()}


def interval_bin(days: int) -> str:
    for label, most in INTERVAL_BINS:
        if most is None or days <= most:
            return label
    raise AssertionError("unreachable")


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class DatasetStats:
    """Table 1 and 2, Figures 3 and 4, and STARK §3.9's filter shares."""

    def __init__(self) -> None:
        self.episodes = self.sessions = self.turns = self.sharing = 0
        self.filtered = 0
        self.sessions_per_episode: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.experience_ops: Counter[str] = Counter()
        self.years: Counter[str] = Counter()
        self.intervals: Counter[str] = Counter()
        self.ages: list[int] = []
        self.age_groups: Counter[str] = Counter()
        self.genders: Counter[str] = Counter()
        self.birthplaces: Counter[str] = Counter()
        self.residences: Counter[str] = Counter()
        self.same_country = self.with_demographics = 0
        self.categories: Counter[str] = Counter()
        self.category_pairs: set[tuple[str, str]] = set()
        self.entity_keys: Counter[str] = Counter()
        self.device_categories: Counter[str] = Counter()
        self.persona_attributes = 0
        self.removed_by_rule: Counter[str] = Counter()
        self.episodes_removed_by_rule: Counter[str] = Counter()

    def add(self, ep: dict[str, Any]) -> None:
        self.episodes += 1
        self.filtered += ep.get("status") == "filtered"
        sessions = ep.get("sessions") or []
        self.sessions += len(sessions)
        self.sessions_per_episode[str(len(sessions))] += 1
        previous: dt.date | None = None
        for session in sessions:
            turns = session.get("turns") or []
            self.turns += len(turns)
            for turn in turns:
                sharing = turn.get("sharing")
                if sharing:
                    self.sharing += 1
                    self.sources[str(sharing.get("image_source"))] += 1
            day = _date(session.get("date"))
            if day:
                self.years[str(day.year)] += 1
                if previous:
                    self.intervals[interval_bin((day - previous).days)] += 1
                previous = day
        for event in (ep.get("events") or {}).get("events") or []:
            edge = event.get("caused_by")
            if edge and edge.get("experience_op"):
                self.experience_ops[edge["experience_op"]] += 1
        self._person(ep)
        for removal in ep.get("removals") or []:
            self.removed_by_rule[removal.get("rule", "?")] += 1
            if removal.get("target") == "episode":
                self.episodes_removed_by_rule[removal.get("rule", "?")] += 1

    def _person(self, ep: dict[str, Any]) -> None:
        demo = ep.get("demographics")
        if demo:
            self.with_demographics += 1
            if isinstance(demo.get("age"), int):
                self.ages.append(demo["age"])
            self.age_groups[str(demo.get("age_group"))] += 1
            self.genders[str(demo.get("gender"))] += 1
            self.birthplaces[str(demo.get("birthplace"))] += 1
            self.residences[str(demo.get("residence"))] += 1
            self.same_country += demo.get("birthplace") == demo.get("residence")
        if ep.get("persona_category"):
            self.categories[ep["persona_category"]] += 1
            key = str(ep.get("persona_entity_key") or "")
            self.category_pairs.add((ep["persona_category"], key))
            self.entity_keys[key] += 1
        self.persona_attributes += len(ep.get("persona") or [])
        for image in ep.get("device_images") or []:
            if image.get("added_in_session"):
                continue  # Fig. 3 counts the album made before the chat (§3.7), not shared photos
            self.device_categories.update(str(c).lower() for c in image.get("categories") or [])

    def result(self, persona_rows: list[tuple[str, str]], countries: list[str]) -> dict[str, Any]:
        add, update = self.experience_ops["add"], self.experience_ops["update"]
        ops = add + update
        internet, mobile = self.sources["internet"], self.sources["mobile"]
        covered = sorted({c for c, _ in self.category_pairs.intersection(persona_rows)})
        present = [c for c in countries if self.birthplaces[c] or self.residences[c]]
        return {
            "episodes": self.episodes,
            "episodes_filtered": self.filtered,
            "sessions": self.sessions,
            "utterances": self.turns,
            "images": self.sharing,
            "sessions_per_episode": mean(self.sessions, self.episodes),
            "sessions_per_episode_hist": dict(sorted(self.sessions_per_episode.items())),
            "utterances_per_session": mean(self.turns, self.sessions),
            "images_per_session": mean(self.sharing, self.sessions),
            "images_per_episode": mean(self.sharing, self.episodes),
            "image_source_internet_pct": pct(internet, internet + mobile),
            "image_source_mobile_pct": pct(mobile, internet + mobile),
            "experience_add_pct": pct(add, ops),
            "experience_update_pct": pct(update, ops),
            "session_years": dict(sorted(self.years.items())),
            "session_intervals": {label: self.intervals[label] for label, _ in INTERVAL_BINS},
            "age_mean": mean(sum(self.ages), len(self.ages)),
            "ages": sorted(self.ages),
            "age_groups_pct": dict(sorted(shares(self.age_groups).items())),
            "gender_male_pct": pct(self.genders["male"], self.with_demographics),
            "gender_female_pct": pct(self.genders["female"], self.with_demographics),
            "birthplace_pct": shares(self.birthplaces),
            "residence_pct": shares(self.residences),
            "countries_present": len(present),
            "countries_total": len(countries),
            "same_country_pct": pct(self.same_country, self.with_demographics),
            "persona_categories": dict(self.categories.most_common()),
            "persona_rows_covered": len(self.category_pairs.intersection(persona_rows)),
            "persona_rows_total": len(persona_rows),
            "persona_categories_covered": covered,
            "persona_entities_pct": shares(self.entity_keys),
            "device_categories_top10_pct": dict(list(shares(self.device_categories).items())[:10]),
            "persona_attributes": self.persona_attributes,
            "removed_session_count_pct": pct(
                self.episodes_removed_by_rule["session_count"], self.episodes
            ),
            "removed_duplicate_persona_pct": pct(
                self.removed_by_rule["duplicate_persona"], self.persona_attributes
            ),
        }


class ImageStats:
    """The image pipeline: modules, QA, rewrites, scores, filter marks, unscored images."""

    def __init__(self) -> None:
        self.requests = 0
        self.origins: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.unaligned_reasons: Counter[str] = Counter()
        self.modules: Counter[str] = Counter()
        self.qa_requests = self.qa_first_pass = 0
        self.rewrites: Counter[str] = Counter()
        self.scores: dict[str, list[float]] = {name: [] for name in SCORES}
        self.unscored: Counter[str] = Counter()
        self.images = 0
        self.faces: Counter[str] = Counter()
        self.marks: Counter[str] = Counter()
        self.mark_list: list[dict[str, Any]] = []
        self.thresholds: dict[str, float] = {}

    def add(self, ep: dict[str, Any]) -> None:
        face = ep.get("face") or {}
        if face:
            self.faces[str(face.get("status"))] += 1
        seen: set[tuple[str, str]] = set()
        for request in ep.get("image_requests") or []:
            self.requests += 1
            self.origins[str(request.get("origin"))] += 1
            self.statuses[str(request.get("status"))] += 1
            if request.get("status") == "unaligned":
                self.unaligned_reasons[str(request.get("reason") or "")[:120]] += 1
            attempts = request.get("attempts") or []
            self.rewrites[str(sum(a.get("event") == "rewrite" for a in attempts))] += 1
            qa = [a for a in attempts if a.get("event") == "qa"]
            if qa:
                self.qa_requests += 1
                self.qa_first_pass += bool(qa[0].get("passed"))
                for name, value in (qa[0].get("thresholds") or {}).items():
                    self.thresholds.setdefault(name, value)
            image = request.get("image")
            if not image:
                continue
            key = (str(image.get("path")), str(image.get("sha256")))
            if key in seen:  # an album photo shown again: one image
                continue
            seen.add(key)
            self.images += 1
            self.modules[str(request.get("module") or image.get("module"))] += 1
            scores = image.get("scores") or {}
            for name in SCORES:
                value = _number(scores.get(name))
                if value is None:
                    self.unscored[name] += 1
                else:
                    self.scores[name].append(value)
            if not any(_number(scores.get(n)) is not None for n in SCORES):
                self.unscored["all"] += 1
        for removal in ep.get("removals") or []:
            target = str(removal.get("target", ""))
            if target.startswith("image:"):
                self.marks[str(removal.get("rule"))] += 1
                if len(self.mark_list) < 200:
                    self.mark_list.append({"episode_id": ep.get("episode_id"), **removal})

    def result(self, configured: dict[str, float]) -> dict[str, Any]:
        thresholds = {**configured, **self.thresholds}
        rewrites = sum(int(k) * v for k, v in self.rewrites.items())
        return {
            "requests": self.requests,
            "requests_by_origin": dict(self.origins.most_common()),
            "requests_by_status": dict(self.statuses.most_common()),
            "aligned_pct": pct(self.statuses["aligned"], self.requests),
            "unaligned_reasons": dict(self.unaligned_reasons.most_common(10)),
            "images": self.images,
            "module_pct": shares(self.modules),
            "modules": dict(self.modules.most_common()),
            "qa_requests": self.qa_requests,
            "qa_first_try_pass_pct": pct(self.qa_first_pass, self.qa_requests),
            "rewrites_per_request": mean(rewrites, self.requests),
            "rewrites_hist": dict(sorted(self.rewrites.items(), key=lambda kv: int(kv[0]))),
            "scores": {
                name: {
                    "count": len(values),
                    "mean": mean(sum(values), len(values)),
                    "values": values,
                    "threshold": thresholds.get(name),
                }
                for name, values in self.scores.items()
            },
            "unscored": {name: self.unscored[name] for name in (*SCORES, "all")},
            "faces": dict(self.faces.most_common()),
            "image_marks_by_rule": dict(self.marks.most_common()),
            "image_marks": self.mark_list,
        }


def speaker_role(speaker: str) -> str:
    return "assistant" if speaker == ASSISTANT else "user"
