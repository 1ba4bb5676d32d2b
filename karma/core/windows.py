"""Limit windows: which UTC day buckets a `window` covers today, when it resets, and when a
denied request would fit (spec/limits.md §2 "Model", §4 "Answers", §7, §8).

Pure and synchronous: `today` (YYYYMMDD) and `now_unix` are handed in (STYLE.md rule 1).

Decisions where the spec left room (docs/limits.md should repeat them):

- Validation order: not an object, then `tz` (before the kind count, so `{"tz": ...}` alone
  says that time zones are unsupported), then exactly one kind, then unknown keys (first in
  the order sent), then the kind's own fields in the order days / calendar, week_start /
  months, anchor / from, to.
- A key that is present counts as given, even with `null`: `{"days": null}` is an ill-typed
  `days`, and `week_start: null` is refused like any other non-integer.
- A fixed window spans at most 366 buckets (a leap year, and the longest rolling window):
  `to - from` of 366 days or more is "Range exceeds max days". counter.sum's karma 1.0 rule
  (`days_between > 366`) lets 367 buckets through; limits do not copy that off-by-one.
- `period` is total over anchors after today (the parser refuses them): the periods extend
  backwards from the anchor (k < 0) by the same clamping rule.
- No day exists after 9999-12-31 (days.MAX_DAY): a period that would run past it ends there,
  and resets at the midnight after it.
- `retry_after_s` is never negative: a `now_unix` already past the reset gives 0.
- For a rolling window, buckets dated after today are ignored (charges go to today; only a
  counter.increment with an explicit future bucket writes them), so the retry time counts only
  the usage that leaves the window. Calendar, anchored and fixed periods count every bucket
  inside them, future days included: the window is the set of buckets.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from collections.abc import Mapping
from typing import Final, assert_never

import attrs

from karma import days
from karma.errors import KarmaError

SECONDS_PER_DAY: Final = 86400
CALENDAR_UNITS: Final = ("day", "week", "month", "year")
MAX_ROLLING_DAYS: Final = 366
MAX_MONTHS: Final = 12

_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
#: The ordinal of the day after 9999-12-31, where every period is cut (module docstring).
_END_ORDINAL: Final = dt.date.max.toordinal() + 1

#: The keys each kind of window accepts; the first one names the kind.
_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "days": ("days",),
    "calendar": ("calendar", "week_start"),
    "months": ("months", "anchor"),
    "from": ("from", "to"),
}


@attrs.frozen
class Rolling:
    """`{"days": N}`: the N day buckets that end today."""

    days: int


@attrs.frozen
class Calendar:
    """`{"calendar": unit}`: the current UTC day, week (from `week_start`, ISO 1=Monday), month
    or year."""

    unit: str
    week_start: int = 1


@attrs.frozen
class Anchored:
    """`{"months": M, "anchor": YYYYMMDD}`: periods start at anchor + k*M months, clamped."""

    months: int
    anchor: int


@attrs.frozen
class Fixed:
    """`{"from": A, "to": B}`: one range, which must contain today."""

    first: int
    last: int


Window = Rolling | Calendar | Anchored | Fixed


@attrs.frozen
class Period:
    first: int  # first day bucket in the window (YYYYMMDD)
    last: int  # last day bucket: today for rolling, the period's end otherwise
    reset_at_unix: int  # 00:00 UTC of the day after `last`


def parse_window(raw: object, today: int) -> Window:
    """The request's decoded `window` value as a Window, or KarmaError.validation."""
    if not isinstance(raw, dict):
        raise KarmaError.validation("Field window must be an object")
    if "tz" in raw:
        raise KarmaError.validation("Field window.tz is not supported (windows are UTC days)")
    kinds = [kind for kind in _KEYS if kind in raw]
    if len(kinds) != 1:
        raise KarmaError.validation(
            "Field window must have exactly one of days, calendar, months, from"
        )
    kind = kinds[0]
    for key in raw:
        if key not in _KEYS[kind]:
            raise KarmaError.validation(f"Field window.{key} is not supported")
    if kind == "days":
        return _parse_rolling(raw)
    if kind == "calendar":
        return _parse_calendar(raw)
    if kind == "months":
        return _parse_anchored(raw, today)
    return _parse_fixed(raw, today)


def _parse_rolling(raw: dict[object, object]) -> Rolling:
    count = _int_in(raw["days"], 1, MAX_ROLLING_DAYS)
    if count is None:
        raise KarmaError.validation("Field window.days must be an integer from 1 to 366")
    return Rolling(count)


def _parse_calendar(raw: dict[object, object]) -> Calendar:
    unit = raw["calendar"]
    # the isinstance check first: `in` on an unhashable JSON value (a list) would raise
    if not isinstance(unit, str) or unit not in CALENDAR_UNITS:
        raise KarmaError.validation("Field window.calendar must be one of day, week, month, year")
    if "week_start" not in raw:
        return Calendar(unit)
    if unit != "week":
        raise KarmaError.validation("Field window.week_start is only for calendar week")
    week_start = _int_in(raw["week_start"], 1, 7)
    if week_start is None:
        raise KarmaError.validation("Field window.week_start must be an integer from 1 to 7")
    return Calendar(unit, week_start)


def _parse_anchored(raw: dict[object, object], today: int) -> Anchored:
    months = _int_in(raw["months"], 1, MAX_MONTHS)
    if months is None:
        raise KarmaError.validation("Field window.months must be an integer from 1 to 12")
    anchor = _day(raw.get("anchor"))
    if anchor is None:
        raise KarmaError.validation("Field window.anchor must be a valid YYYYMMDD day")
    if anchor > today:
        raise KarmaError.validation(f"Field window.anchor must not be after today {today}")
    return Anchored(months, anchor)


def _parse_fixed(raw: dict[object, object], today: int) -> Fixed:
    first, last = _day(raw["from"]), _day(raw.get("to"))
    if first is None:
        raise KarmaError.validation("Field window.from must be a valid YYYYMMDD day")
    if last is None:
        raise KarmaError.validation("Field window.to must be a valid YYYYMMDD day")
    # karma 1.0's range messages, so a window and a counter.sum range read alike
    if first > last:
        raise KarmaError.validation("Bucket range start must be less than or equal to range end")
    if days.days_between(first, last) >= days.MAX_RANGE_DAYS:
        raise KarmaError.validation("Range exceeds max days")
    if not first <= today <= last:
        raise KarmaError.validation(f"Field window must contain today {today}")
    return Fixed(first, last)


def _int_in(value: object, low: int, high: int) -> int | None:
    """`value` if it is an integer from low to high, else None."""
    # bool is an int subclass, but JSON true is not a number of days
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _day(value: object) -> int | None:
    """`value` if it is a real YYYYMMDD day, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and days.is_day(value):
        return value
    return None


@functools.lru_cache(maxsize=1024)
def period(window: Window, today: int) -> Period:
    """The period of `window` that contains `today`. Constant work per call (no per-day or
    per-period loops), and cached: the hot path asks once per item, with a few distinct
    windows (the app's plan table) and one today."""
    today_date = _date(today)
    match window:
        case Rolling(days=count):
            return _span(today_date.toordinal() - count + 1, today_date.toordinal() + 1)
        case Calendar(unit=unit, week_start=week_start):
            return _calendar(unit, week_start, today_date)
        case Anchored(months=months, anchor=anchor):
            return _anchored(months, _date(anchor), today_date)
        case Fixed(first=first, last=last):
            return _span(_date(first).toordinal(), _date(last).toordinal() + 1)
        case _:
            assert_never(window)


def _calendar(unit: str, week_start: int, today: dt.date) -> Period:
    ordinal = today.toordinal()
    month = _month_index(today)
    if unit == "day":
        return _span(ordinal, ordinal + 1)
    if unit == "week":
        first = ordinal - (today.isoweekday() - week_start) % 7
        return _span(first, first + 7)
    if unit == "month":
        return _span(_month_day(month, 1), _month_day(month + 1, 1))
    if unit == "year":
        january = today.year * 12
        return _span(_month_day(january, 1), _month_day(january + 12, 1))
    raise ValueError(f"unknown calendar unit {unit!r}")


def _anchored(months: int, anchor: dt.date, today: dt.date) -> Period:
    """Stripe's rule (spec §1): start_k = anchor + k*months, each computed from the anchor with
    the day clamped to the month's length, so a Jan 31 anchor gives Feb 28 then Mar 31, never
    drifting to the 28th."""
    first_month = _month_index(anchor)
    # start_k lies in month first_month + k*months; the largest k whose month is not after
    # today's month is right unless clamping puts that start later in the month than today
    k = (_month_index(today) - first_month) // months
    start = _month_day(first_month + k * months, anchor.day)
    if start > today.toordinal():
        k -= 1
        start = _month_day(first_month + k * months, anchor.day)
    return _span(start, _month_day(first_month + (k + 1) * months, anchor.day))


def _month_index(date: dt.date) -> int:
    return date.year * 12 + date.month - 1


def _month_day(month_index: int, day: int) -> int:
    """The ordinal of `day` in the month, clamped to the month's length."""
    year, month = divmod(month_index, 12)
    if year > dt.MAXYEAR:
        return _END_ORDINAL
    length = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day, length)).toordinal()


def _span(first: int, next_start: int) -> Period:
    """The period of days [first, next_start) as ordinals, cut at 9999-12-31."""
    next_start = min(next_start, _END_ORDINAL)
    return Period(
        first=days.from_date(dt.date.fromordinal(first)),
        last=days.from_date(dt.date.fromordinal(next_start - 1)),
        reset_at_unix=(next_start - _EPOCH_ORDINAL) * SECONDS_PER_DAY,
    )


def _date(day: int) -> dt.date:
    date = days.to_date(day)
    if date is None:
        raise ValueError(f"{day} is not a day")
    return date


def retry_after_s(
    window: Window,
    period: Period,
    today: int,
    now_unix: int,
    buckets: Mapping[int, int],
    held: int,
    value: int,
    maximum: int,
) -> int | None:
    """Seconds from `now_unix` until the same request would fit if nothing else happens (0 if
    it fits now), or None if it never will. `period` is `period(window, today)`; `buckets` is
    the committed usage by day, of which only the days inside `period` count. Holds are assumed
    to stay, so a request that does not fit beside them in an empty window never fits.
    `today` is not read: `period` already carries it (the parameter is the agreed API)."""
    if value + held > maximum:
        return None
    room = maximum - held - value
    inside = sorted(item for item in buckets.items() if period.first <= item[0] <= period.last)
    used = sum(amount for _, amount in inside)
    if used <= room:
        return 0
    match window:
        case Rolling(days=count):
            return _rolling_retry(count, now_unix, inside, used, room)
        case Calendar() | Anchored():
            # the next period starts empty, and value + held fits in an empty one
            return max(0, period.reset_at_unix - now_unix)
        case Fixed():
            return None  # the range never resets, and tomorrow it no longer contains today
        case _:
            assert_never(window)


def _rolling_retry(
    count: int, now_unix: int, inside: list[tuple[int, int]], used: int, room: int
) -> int:
    """Exact (spec §4): day d leaves the window at the midnight that starts day d + count, so
    dropping the days oldest first visits every change of the window's sum in time order, and
    the first sum that fits gives the answer (whatever the signs of the amounts)."""
    for day, amount in inside:
        used -= amount
        if used <= room:
            midnight = _date(day).toordinal() + count
            return max(0, (midnight - _EPOCH_ORDINAL) * SECONDS_PER_DAY - now_unix)
    # with every day gone the sum is 0, and the caller checked that 0 <= room
    raise AssertionError("an empty rolling window must fit")
