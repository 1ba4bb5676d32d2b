"""UTC day buckets: integers written YYYYMMDD, always real calendar days."""

from __future__ import annotations

import datetime as dt
import functools

MIN_DAY = 10000101
MAX_DAY = 99991231
#: karma 1.0 refuses ranges longer than this many days ("Range exceeds max days").
MAX_RANGE_DAYS = 366


def to_date(day: int) -> dt.date | None:
    """The calendar date of a YYYYMMDD integer, or None when it is not a real day."""
    if not MIN_DAY <= day <= MAX_DAY:
        return None
    try:
        return dt.date(day // 10000, day // 100 % 100, day % 100)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def is_day(day: int) -> bool:
    """Cached: a batch of thousands of items names only a handful of distinct days."""
    return to_date(day) is not None


def from_date(date: dt.date) -> int:
    return date.year * 10000 + date.month * 100 + date.day


def today_from_unix(seconds: float) -> int:
    """The UTC day bucket that contains the given Unix time."""
    return _day_of(int(seconds) // 86400)


@functools.lru_cache(maxsize=8)
def _day_of(day_number: int) -> int:
    """Cached per day: every write without a bucket asks, and the answer changes daily."""
    return from_date(dt.date(1970, 1, 1) + dt.timedelta(days=day_number))


def days_between(first: int, last: int) -> int:
    a, b = to_date(first), to_date(last)
    if a is None or b is None:
        raise ValueError("not a day")
    return (b - a).days
