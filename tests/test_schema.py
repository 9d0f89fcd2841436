"""Validators of the episode schema: every broken episode is rejected with a message that
names the problem, and a well-formed one passes."""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

import pytest
from pydantic import ValidationError

from mcu_sim.personas.intervals import add_interval, describe_gap, parse_interval
from mcu_sim.personas.schema import (
    ASSISTANT,
    SCHEMA_VERSION,
    CausedBy,
    Demographics,
    DeviceImage,
    Episode,
    EventGraph,
    PersonaAttribute,
    SharingInfo,
    album_at,
)

USER = "Yuki"


def turn(turn_id: int, speaker: str = USER, request: str | None = None, **sharing: Any) -> dict:
    """A turn; with ``sharing`` fields it shares a mobile photo via image request ``request``."""
    data: dict[str, Any] = {"id": turn_id, "speaker": speaker, "utterance": f"line {turn_id}"}
    if sharing:
        data["sharing"] = {
            "rationale": "to show it",
            "image_description": "a photo of fresh bread",
            "image_source": "mobile",
            **sharing,
        }
        data["request_id"] = request
    return data


def request(request_id: str, session: int, turn_id: int) -> dict[str, Any]:
    """A sharing moment's image request, settled as the aligner leaves it (unaligned)."""
    return {
        "id": request_id,
        "origin": "sharing",
        "session": session,
        "turn_id": turn_id,
        "description": "x",
        "status": "unaligned",
        "reason": "image tools disabled",
    }


def valid_episode() -> dict[str, Any]:
    """A small, complete episode: 3 events, 2 sessions, 2 album photos plus one new one."""
    return {
        "episode_id": "ep-1",
        "seeds": {"sampler": 1},
        "config_fingerprint": "abc",
        "demographics": {
            "age_group": "40-50",
            "age": 42,
            "gender": "female",
            "birthplace": "Japan",
            "residence": "Japan",
            "name": USER,
        },
        "face": {"prompt": "a portrait", "attributes": {"hair": "short"}, "seed": 3},
        "persona_category": "Preference ▷ Food",
        "persona_entity_key": "food",
        "persona": [
            {
                "sentence": "I love baking bread.",
                "relation": "Preference ▷ Food",
                "entity": {"key": "food", "value": "bread"},
            },
        ],
        "commonsense": [{"relation": "routine_habit", "text": "bake on Sundays"}],
        "narrative": {
            "relation": "routine_habit",
            "sentence_form": "My name is Yuki.",
            "narrative": "Yuki bakes bread every Sunday morning.",
        },
        "events": {
            "events": [
                {"id": 1, "event": "Yuki opens a bakery.", "date": "2024-01-31"},
                {
                    "id": 2,
                    "event": "The bakery wins a prize.",
                    "date": "2024-02-29",
                    "caused_by": {
                        "id": 1,
                        "time_interval": "1 month",
                        "experience_op": "add",
                        "experience": "She gained regulars.",
                    },
                },
                {
                    "id": 3,
                    "event": "Yuki hires an apprentice.",
                    "date": "2024-05-29",
                    "caused_by": {
                        "id": 2,
                        "time_interval": "3 months",
                        "experience_op": "update",
                        "experience": "Demand kept rising.",
                    },
                },
            ]
        },
        "device_images": [
            {"id": 1, "description": "a loaf of bread"},
            {"id": 2, "description": "the bakery front"},
            {"id": 3, "description": "the prize ribbon", "added_in_session": 1},
        ],
        "sessions": [
            {
                "index": 1,
                "date": "2024-02-29",
                "event_id": 2,
                "event": "The bakery wins.",
                "turns": [
                    turn(1, ASSISTANT),
                    turn(2, request="s1-2", image_id_from_mobile=1),
                    turn(3, request="s1-3", image_id_from_mobile="new"),
                ],
            },
            {
                "index": 2,
                "date": "2024-05-29",
                "event_id": 3,
                "event": "Yuki hires.",
                "time_interval": "3 months",
                "experience_op": "update",
                "experience": "Demand kept rising.",
                "turns": [turn(1, ASSISTANT), turn(2, request="s2-2", image_id_from_mobile=3)],
            },
        ],
        "image_requests": [
            request("s1-2", 1, 2),
            request("s1-3", 1, 3),
            request("s2-2", 2, 2),
        ],
    }


@pytest.fixture
def episode() -> dict[str, Any]:
    return valid_episode()


def rejected(data: dict[str, Any], model: type = Episode) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


# ------------------------------------------------------------------ the valid baseline


def test_valid_episode_passes(episode: dict[str, Any]) -> None:
    parsed = Episode.model_validate(episode)
    assert parsed.schema_version == SCHEMA_VERSION
    assert parsed.events.events[2].caused_by.time_interval == "3 month"  # normalised
    assert [e.id for e in parsed.events.chronological()] == [1, 2, 3]
    round_trip = Episode.model_validate_json(parsed.model_dump_json())
    assert round_trip == parsed


# ------------------------------------------------------------------ event graph


def test_dangling_caused_by_is_rejected(episode: dict[str, Any]) -> None:
    episode["events"]["events"][2]["caused_by"]["id"] = 9
    message = rejected(episode)
    assert "event 3 is caused_by event 9, which does not exist (ids: [1, 2, 3])" in message


def test_dates_going_backwards_along_caused_by_are_rejected(episode: dict[str, Any]) -> None:
    episode["events"]["events"][2]["date"] = "2024-02-01"
    message = rejected(episode["events"], EventGraph)
    assert "event 3 (2024.02.01) is dated before its cause, event 2 (2024.02.29)" in message


def test_same_day_cause_and_effect_are_allowed(episode: dict[str, Any]) -> None:
    episode["events"]["events"][1]["date"] = "2024-01-31"
    assert EventGraph.model_validate(episode["events"]).events[1].date == dt.date(2024, 1, 31)


def test_duplicate_event_ids_are_rejected(episode: dict[str, Any]) -> None:
    episode["events"]["events"][2]["id"] = 2
    assert "event id 2 appears twice" in rejected(episode["events"], EventGraph)


def test_event_cannot_cause_itself(episode: dict[str, Any]) -> None:
    episode["events"]["events"][2]["caused_by"]["id"] = 3
    assert "event 3 cannot cause itself" in rejected(episode["events"], EventGraph)


def test_empty_event_graph_is_rejected() -> None:
    assert "at least 1 item" in rejected({"events": []}, EventGraph)


# ------------------------------------------------------------------ album references


def test_unknown_mobile_image_id_is_rejected(episode: dict[str, Any]) -> None:
    episode["sessions"][0]["turns"][1]["sharing"]["image_id_from_mobile"] = 7
    message = rejected(episode)
    assert "session 1 turn 2 shares album image 7, but the album then held ids [1, 2]" in message


def test_image_added_later_counts_as_missing(episode: dict[str, Any]) -> None:
    # image 3 joins the album during session 1, so session 1 cannot share it by id ...
    episode["sessions"][0]["turns"][1]["sharing"]["image_id_from_mobile"] = 3
    assert "session 1 turn 2 shares album image 3" in rejected(episode)
    # ... while session 2 (the baseline) can
    assert album_at([DeviceImage(**d) for d in valid_episode()["device_images"]], 2) == {1, 2, 3}


def test_image_added_in_the_same_session_is_missing_there(episode: dict[str, Any]) -> None:
    episode["device_images"][2]["added_in_session"] = 2
    assert "session 2 turn 2 shares album image 3, but the album then held ids [1, 2]" in (
        rejected(episode)
    )


def test_sharing_info_checks_source_and_album_id() -> None:
    base = {"rationale": "r", "image_description": "a photo of a cat"}
    message = rejected({**base, "image_source": "internet", "image_id_from_mobile": 1}, SharingInfo)
    assert "an internet image has no image_id_from_mobile" in message
    message = rejected({**base, "image_source": "mobile"}, SharingInfo)
    assert "a mobile image needs image_id_from_mobile (an album id or 'new')" in message
    assert "image_source" in rejected({**base, "image_source": "camera"}, SharingInfo)


# ------------------------------------------------------------------ speakers, dates, requests


def test_wrong_speaker_is_rejected(episode: dict[str, Any]) -> None:
    episode["sessions"][1]["turns"][0]["speaker"] = "Assistant"
    message = rejected(episode)
    assert (
        "session 2 turn 1: speaker 'Assistant' is neither the user ('Yuki') nor 'AI Assistant'"
        in message
    )


def test_session_date_must_match_its_event(episode: dict[str, Any]) -> None:
    episode["sessions"][1]["date"] = "2024-06-01"
    assert "session 2 is dated 2024-06-01 but its event is 2024-05-29" in rejected(episode)


def test_session_must_refer_to_an_existing_event(episode: dict[str, Any]) -> None:
    episode["sessions"][1]["event_id"] = 9
    assert "session 2 refers to unknown event 9" in rejected(episode)


def test_sessions_must_not_go_back_in_time(episode: dict[str, Any]) -> None:
    first, second = episode["sessions"]
    first.update(event_id=3, date="2024-05-29")
    second.update(event_id=2, date="2024-02-29", turns=[turn(1, ASSISTANT)])
    assert "session 2 is dated before the session before it" in rejected(episode)


def test_image_requests_are_unique_and_resolve(episode: dict[str, Any]) -> None:
    duplicated = copy.deepcopy(episode)
    duplicated["image_requests"][2]["id"] = "s1-2"
    assert "image request ids must be unique" in rejected(duplicated)
    episode["sessions"][0]["turns"][1]["request_id"] = "s-99"
    assert "session 1 turn 2 points at missing image request s-99" in rejected(episode)


def test_a_sharing_turn_without_a_request_is_rejected(episode: dict[str, Any]) -> None:
    episode["sessions"][1]["turns"][1]["request_id"] = None
    message = rejected(episode)
    assert "session 2 turn 2 shares an image but has no image request (request_id is None)" in (
        message
    )


def test_a_finished_episode_has_no_pending_request(episode: dict[str, Any]) -> None:
    episode["image_requests"][0]["status"] = "pending"
    episode["image_requests"][2]["status"] = "pending"
    message = rejected(episode)
    assert "image request(s) s1-2, s2-2 still pending in a finished episode" in message
    assert "aligned or unaligned" in message
    episode["image_requests"][0]["status"] = "aligned"
    episode["image_requests"][2]["status"] = "unaligned"
    assert Episode.model_validate(episode).image_requests[0].status == "aligned"


def test_unknown_fields_are_rejected(episode: dict[str, Any]) -> None:
    episode["sessions"][0]["turns"][0]["mood"] = "happy"
    assert "Extra inputs are not permitted" in rejected(episode)


# ------------------------------------------------------------------ demographics, persona


def test_demographics_age_must_lie_in_its_group() -> None:
    data = {"age_group": "20-30", "age": 35, "gender": "male", "birthplace": "Japan",
            "residence": "Japan", "name": "Ken"}  # fmt: skip
    assert "age 35 is outside its group 20-30" in rejected(data, Demographics)
    assert Demographics.model_validate({**data, "age": 30}).age == 30  # bounds are inclusive
    assert "age_group" in rejected({**data, "age_group": "20 to 30"}, Demographics)
    assert "gender" in rejected({**data, "age": 25, "gender": "other"}, Demographics)


def test_persona_attribute_triple_and_dedup_key() -> None:
    attribute = PersonaAttribute(
        sentence="I am from London.",
        relation="Location",
        entity={"key": "city-state", "value": " London "},
    )
    assert attribute.triple == ("I", "Location", ("city-state", " London "))
    assert attribute.dedup_key() == ("location", "city-state", "london")


# ------------------------------------------------------------------ time intervals


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("3 months", (3, "month")), ("1 day", (1, "day")), (" 12  Weeks ", (12, "week")),
     ("5 hours", (5, "hour")), ("2 year", (2, "year")), ("0 days", (0, "day"))],
)  # fmt: skip
def test_parse_interval_accepts(text: str, parsed: tuple[int, str]) -> None:
    assert parse_interval(text) == parsed


@pytest.mark.parametrize(
    "text", ["three months", "3 fortnights", "", "-2 days", "12345 days", "3", "months", "3 mo"]
)
def test_parse_interval_rejects_with_the_expected_form(text: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape("must look like '<number> <hour|day|week|month|year>'")
    ):
        parse_interval(text)


def test_bad_interval_in_an_event_edge_is_rejected() -> None:
    edge = {"id": 1, "time_interval": "a while", "experience_op": "add", "experience": "ok"}
    assert "time interval 'a while' must look like" in rejected(edge, CausedBy)
    assert CausedBy.model_validate({**edge, "time_interval": " 2 Weeks"}).time_interval == (
        "2 week"
    )


@pytest.mark.parametrize(
    ("start", "amount", "unit", "expected"),
    [
        (dt.date(2024, 1, 31), 1, "month", dt.date(2024, 2, 29)),  # leap year clamp
        (dt.date(2023, 1, 31), 1, "month", dt.date(2023, 2, 28)),
        (dt.date(2024, 3, 31), 1, "month", dt.date(2024, 4, 30)),
        (dt.date(2023, 11, 30), 3, "month", dt.date(2024, 2, 29)),
        (dt.date(2024, 12, 15), 1, "month", dt.date(2025, 1, 15)),
        (dt.date(2024, 5, 31), 14, "month", dt.date(2025, 7, 31)),
        (dt.date(2024, 2, 29), 1, "year", dt.date(2025, 2, 28)),
        (dt.date(2024, 2, 29), 4, "year", dt.date(2028, 2, 29)),
        (dt.date(2024, 12, 30), 2, "week", dt.date(2025, 1, 13)),
        (dt.date(2024, 2, 28), 2, "day", dt.date(2024, 3, 1)),
        (dt.date(2024, 2, 28), 23, "hour", dt.date(2024, 2, 28)),
        (dt.date(2024, 2, 28), 48, "hour", dt.date(2024, 3, 1)),
        (dt.date(2024, 1, 31), 1, "Year", dt.date(2025, 1, 31)),  # unit case does not matter
        (dt.date(2024, 1, 31), 2, "months", dt.date(2024, 3, 31)),
    ],
)
def test_add_interval(start: dt.date, amount: int, unit: str, expected: dt.date) -> None:
    assert add_interval(start, amount, unit) == expected


@pytest.mark.parametrize(
    ("hours", "wording"), [(0, "less than an hour"), (1, "an hour"), (3, "3 hours"), (25, "a day")]
)
def test_describe_gap_keeps_hours_between_moments(hours: int, wording: str) -> None:
    start = dt.datetime(2024, 2, 28, 21, 30)
    later = add_interval(start, hours, "hour")
    assert describe_gap(start, later) == wording
    assert later.date() == (start.date() if hours < 3 else later.date())


def test_add_interval_keeps_the_time_of_a_datetime() -> None:
    start = dt.datetime(2024, 1, 31, 22, 0)
    assert add_interval(start, 3, "hour") == dt.datetime(2024, 2, 1, 1, 0)
    assert add_interval(start, 1, "month") == dt.datetime(2024, 2, 29, 22, 0)


def test_add_interval_rejects_an_unknown_unit() -> None:
    with pytest.raises(ValueError, match="time unit 'fortnight' must be one of hour, day"):
        add_interval(dt.date(2024, 1, 1), 2, "fortnight")


@pytest.mark.parametrize(
    ("days", "wording"),
    [(0, "a few hours"), (1, "a day"), (7, "a week"), (13, "13 days"), (14, "2 weeks"),
     (17, "about 2 weeks"), (59, "about 8 weeks"), (60, "about 2 months"),
     (365, "about a year"), (548, "about a year and a half"), (730, "about 2 years"),
     (3653, "about 10 years")],
)  # fmt: skip
def test_describe_gap(days: int, wording: str) -> None:
    """Gaps as a person says them (issue 29: no more "0 days" or "12 months")."""
    start = dt.date(2020, 1, 1)
    assert describe_gap(start, start + dt.timedelta(days=days)) == wording
