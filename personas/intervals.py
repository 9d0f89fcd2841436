"""Time intervals between events and sessions: parsing ``"3 months"``, calendar arithmetic
that keeps hours, and gaps said the way a person says them."""

from __future__ import annotations

import calendar
import datetime as dt
import re
import typing

INTERVAL_PATTERN = re.compile(r"^\s*(\d{1,4})\s*(hour|day|week|month|year)s?\s*$", re.I)


def parse_interval(text: str) -> tuple[int, str]:
    """``"3 months"`` -> ``(3, "month")``; a clear ``ValueError`` otherwise."""
    match = INTERVAL_PATTERN.match(text or "")
    if not match:
        raise ValueError(
            f"time interval {text!r} must look like '<number> <hour|day|week|month|year>'"
        )
    return int(match.group(1)), match.group(2).lower()


DateOrTime = typing.TypeVar("DateOrTime", dt.date, dt.datetime)
UNIT_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "month": 30.44, "year": 365.25}


def add_interval(start: DateOrTime, amount: int, unit: str) -> DateOrTime:
    """Calendar arithmetic: months and years clamp to the last day of the month.

    A ``datetime`` keeps its hours (``3 hours`` after 22:00 is the next day); a ``date``
    counts whole days only."""
    given, unit = unit, unit.strip().lower().removesuffix("s")
    if unit not in UNIT_DAYS:
        raise ValueError(f"time unit {given!r} must be one of hour, day, week, month, year")
    if unit == "hour":
        if isinstance(start, dt.datetime):
            return start + dt.timedelta(hours=amount)
        return start + dt.timedelta(days=amount // 24)
    if unit == "day":
        return start + dt.timedelta(days=amount)
    if unit == "week":
        return start + dt.timedelta(weeks=amount)
    months = amount * (12 if unit == "year" else 1)
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month0 + 1)[1])
    return start.replace(year=year, month=month0 + 1, day=day)


def _count(n: int, word: str) -> str:
    if n == 1:
        return ("an " if word[0] in "aeiou" or word == "hour" else "a ") + word
    return f"{n} {word}s"


def describe_gap(earlier: dt.date, later: dt.date) -> str:
    """The gap between two moments as a person says it: ``3 hours``, ``a day``,
    ``2 weeks``, ``about 3 months``, ``a year``. Two dates without a time differ by whole
    days (``a few hours`` when equal)."""
    if isinstance(earlier, dt.datetime) and isinstance(later, dt.datetime):
        hours = round((later - earlier).total_seconds() / 3600)
        if hours < 1:
            return "less than an hour"
        if hours < 24:
            return _count(hours, "hour")
    days = (_day(later) - _day(earlier)).days
    if days <= 0:
        return "a few hours"
    if days < 14:
        return "a week" if days == 7 else _count(days, "day")
    if days < 60:
        weeks = round(days / 7)
        return _count(weeks, "week") if days % 7 == 0 else f"about {_count(weeks, 'week')}"
    if days < 350:
        months = round(days / 30.44)
        return f"about {_count(months, 'month')}"
    years = days / 365.25
    if years < 1.25:
        return "about a year"
    if years < 1.75:
        return "about a year and a half"
    return f"about {_count(round(years), 'year')}"


def _day(value: dt.date) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value
