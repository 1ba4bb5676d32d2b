"""Limit windows (karma/core/windows.py) against a plain datetime model and spec/limits.md §8."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from karma import days
from karma.core.windows import (
    Anchored,
    Calendar,
    Fixed,
    Period,
    Rolling,
    Window,
    parse_window,
    period,
    retry_after_s,
)
from karma.errors import ErrorCode, KarmaError

# spec/limits.md §8: now is 2026-11-24T15:00:00Z
NOW = 1795532400
TODAY = 20261124
NEXT_MIDNIGHT = 1795564800

ONE_DAY = dt.timedelta(days=1)
FIRST_DATE, LAST_DATE = dt.date(1970, 1, 1), dt.date(2100, 12, 31)


# --- the model: obviously correct, slow, written with datetime.date only ----------------------


def midnight_unix(date: dt.date) -> int:
    return int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp())


def add_months_clamped(start: dt.date, months: int) -> dt.date:
    year = start.year + (start.month - 1 + months) // 12
    month = (start.month - 1 + months) % 12 + 1
    return dt.date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def model_period(window: Window, today: dt.date) -> tuple[dt.date, dt.date]:
    """First and last day of the window's period that contains today."""
    match window:
        case Rolling(days=count):
            return today - (count - 1) * ONE_DAY, today
        case Calendar(unit="day"):
            return today, today
        case Calendar(unit="week", week_start=week_start):
            first = today
            while first.isoweekday() != week_start:
                first -= ONE_DAY
            return first, first + 6 * ONE_DAY
        case Calendar(unit="month"):
            last_day = calendar.monthrange(today.year, today.month)[1]
            return today.replace(day=1), today.replace(day=last_day)
        case Calendar(unit="year"):
            return dt.date(today.year, 1, 1), dt.date(today.year, 12, 31)
        case Anchored(months=months, anchor=anchor):
            anchor_date = to_date(anchor)
            k = 0
            while add_months_clamped(anchor_date, (k + 1) * months) <= today:
                k += 1
            start = add_months_clamped(anchor_date, k * months)
            assert start <= today
            return start, add_months_clamped(anchor_date, (k + 1) * months) - ONE_DAY
        case Fixed(first=first, last=last):
            return to_date(first), to_date(last)
    raise AssertionError(window)


def model_rolling_retry(
    count: int, today: dt.date, now_unix: int, buckets: dict[dt.date, int], room: int
) -> int | None:
    """Step through midnights one by one and sum what is left of today's window."""
    if room < 0:
        return None
    window_first = today - (count - 1) * ONE_DAY
    for k in range(count + 1):
        left_from = window_first + k * ONE_DAY
        left = sum(v for day, v in buckets.items() if left_from <= day <= today)
        if left <= room:
            return 0 if k == 0 else max(0, midnight_unix(today + k * ONE_DAY) - now_unix)
    raise AssertionError("an empty window fits")


def to_date(day: int) -> dt.date:
    date = days.to_date(day)
    assert date is not None
    return date


def day_of(date: dt.date) -> int:
    return days.from_date(date)


# --- strategies -------------------------------------------------------------------------------

years = st.integers(FIRST_DATE.year, LAST_DATE.year)
months_of_year = st.integers(1, 12)
month_ends = st.builds(
    lambda y, m: dt.date(y, m, calendar.monthrange(y, m)[1]), years, months_of_year
)
leap_days = st.sampled_from(range(1972, 2100, 4)).map(lambda y: dt.date(y, 2, 29))
year_ends = years.map(lambda y: dt.date(y, 12, 31))
any_dates = st.dates(FIRST_DATE, LAST_DATE)
#: days where calendars are most often wrong are drawn about as often as ordinary ones
dates = st.one_of(
    any_dates, month_ends, leap_days, year_ends, month_ends.map(lambda d: d + ONE_DAY)
)

windows: st.SearchStrategy[Window] = st.one_of(
    st.builds(Rolling, st.integers(1, 366)),
    st.builds(Calendar, st.sampled_from(["day", "month", "year"])),
    st.builds(Calendar, st.just("week"), st.integers(1, 7)),
)


def check_period(window: Window, today: dt.date) -> Period:
    got = period(window, day_of(today))
    first, last = model_period(window, today)
    assert got == Period(day_of(first), day_of(last), midnight_unix(last + ONE_DAY))
    assert got.first <= day_of(today) <= got.last
    return got


# --- period -----------------------------------------------------------------------------------


@given(windows, dates)
@example(Calendar("month"), dt.date(2100, 2, 15))  # 2100 is not a leap year
@example(Calendar("month"), dt.date(2024, 2, 29))
@example(Calendar("year"), dt.date(2028, 12, 31))
@example(Rolling(366), dt.date(1970, 12, 31))
def test_rolling_and_calendar_periods_match_the_date_model(window: Window, today: dt.date) -> None:
    check_period(window, today)


@given(st.integers(1, 7), dates)
def test_a_week_starts_on_its_week_start_and_lasts_seven_days(start: int, today: dt.date) -> None:
    got = check_period(Calendar("week", start), today)
    assert to_date(got.first).isoweekday() == start
    assert days.days_between(got.first, got.last) == 6


@given(st.integers(1, 12), st.one_of(dates, st.dates(dt.date(2020, 1, 1), LAST_DATE)), dates)
@example(1, dt.date(2026, 1, 31), dt.date(2026, 3, 30))
@example(1, dt.date(2024, 2, 29), dt.date(2025, 2, 28))
@example(12, dt.date(2024, 2, 29), dt.date(2028, 2, 28))
@example(3, dt.date(2099, 11, 30), dt.date(2100, 3, 1))
def test_anchored_periods_match_the_date_model(months: int, a: dt.date, b: dt.date) -> None:
    anchor, today = sorted((a, b))
    check_period(Anchored(months, day_of(anchor)), today)


@pytest.mark.parametrize(
    ("anchor", "months", "today", "first", "last"),
    [
        # Stripe: a Jan 31 anchor bills Feb 28 (29 in leap years), Mar 31, Apr 30
        (20260131, 1, 20260227, 20260131, 20260227),
        (20260131, 1, 20260228, 20260228, 20260330),
        (20260131, 1, 20260331, 20260331, 20260429),
        (20260131, 1, 20260430, 20260430, 20260530),
        (20240131, 1, 20240229, 20240229, 20240330),
        (21000131, 1, 21000228, 21000228, 21000330),
        # a leap-day anchor comes back to Feb 29 in the next leap year, not Feb 28
        (20240229, 12, 20250228, 20250228, 20260227),
        (20240229, 12, 20280228, 20270228, 20280228),
        (20240229, 12, 20280229, 20280229, 20290227),
        (20241231, 2, 20250301, 20250228, 20250429),
        # the anchor itself starts the first period
        (20261124, 3, 20261124, 20261124, 20270223),
    ],
)
def test_anchored_examples(anchor: int, months: int, today: int, first: int, last: int) -> None:
    got = period(Anchored(months, anchor), today)
    assert (got.first, got.last) == (first, last)


@given(dates, dates, dates)
def test_fixed_periods_are_their_range(a: dt.date, b: dt.date, c: dt.date) -> None:
    first, today, last = sorted((a, b, c))
    check_period(Fixed(day_of(first), day_of(last)), today)


def test_periods_end_at_the_last_day_karma_knows() -> None:
    end = midnight_unix(dt.date.max) + 86400
    for window in (Calendar("year"), Calendar("week", 1), Anchored(12, 99990131)):
        assert period(window, 99991231).last == 99991231
        assert period(window, 99991231).reset_at_unix == end


# --- worked examples, spec/limits.md §8 -------------------------------------------------------


def test_e1_calendar_month() -> None:
    window = parse_window({"calendar": "month"}, TODAY)
    got = period(window, TODAY)
    assert got == Period(20261101, 20261130, 1796083200)
    assert retry_after_s(window, got, TODAY, NOW, {TODAY: 1000}, 0, 1, 1000) == 550800


def test_e3_rolling_seven_days_retries_when_the_forty_leave() -> None:
    window = parse_window({"days": 7}, TODAY)
    got = period(window, TODAY)
    assert got == Period(20261118, 20261124, NEXT_MIDNIGHT)
    used = {20261118: 40, 20261120: 30, 20261124: 30}
    assert retry_after_s(window, got, TODAY, NOW, used, 0, 5, 100) == 32400


def test_e4_calendar_day() -> None:
    window = parse_window({"calendar": "day"}, TODAY)
    got = period(window, TODAY)
    assert got == Period(TODAY, TODAY, NEXT_MIDNIGHT)
    assert retry_after_s(window, got, TODAY, NOW, {TODAY: 1000}, 0, 1, 1000) == 32400


def test_e7_one_day_and_month_items() -> None:
    assert period(Rolling(1), TODAY) == Period(TODAY, TODAY, NEXT_MIDNIGHT)
    month = Calendar("month")
    got = period(month, TODAY)
    assert retry_after_s(month, got, TODAY, NOW, {TODAY: 49500}, 0, 900, 50000) == 550800


def test_e8_anchored_on_the_31st() -> None:
    window = parse_window({"months": 1, "anchor": 20260131}, TODAY)
    assert period(window, TODAY) == Period(20261031, 20261129, 1795996800)


# --- retry_after_s ----------------------------------------------------------------------------

amounts = st.integers(0, 60)


@given(
    st.integers(1, 20),
    dates,
    st.integers(0, 86399),
    st.dictionaries(st.integers(-25, 3), amounts, max_size=12),
    amounts,
    st.integers(0, 30),
    st.integers(0, 200),
)
def test_rolling_retry_matches_stepping_through_midnights(
    count: int,
    today: dt.date,
    second: int,
    offsets: dict[int, int],
    held: int,
    value: int,
    maximum: int,
) -> None:
    now = midnight_unix(today) + second
    by_date = {today + offset * ONE_DAY: amount for offset, amount in offsets.items()}
    window = Rolling(count)
    got = retry_after_s(
        window,
        period(window, day_of(today)),
        day_of(today),
        now,
        {day_of(date): amount for date, amount in by_date.items()},
        held,
        value,
        maximum,
    )
    assert got == model_rolling_retry(count, today, now, by_date, maximum - held - value)


@given(
    st.sampled_from(
        [Calendar("day"), Calendar("week", 3), Calendar("month"), Anchored(1, 20260131)]
    ),
    st.integers(0, 3000),
    amounts,
    amounts,
    st.integers(0, 3000),
)
def test_calendar_and_anchored_retry_at_the_reset(
    window: Window, used: int, held: int, value: int, maximum: int
) -> None:
    got = period(window, TODAY)
    # a bucket outside the period never counts
    buckets = {TODAY: used, day_of(to_date(got.first) - ONE_DAY): 10**6}
    retry = retry_after_s(window, got, TODAY, NOW, buckets, held, value, maximum)
    if value + held > maximum:
        assert retry is None
    elif used + held + value <= maximum:
        assert retry == 0
    else:
        assert retry == got.reset_at_unix - NOW


def test_fixed_retry_is_never_unless_it_fits_now() -> None:
    window = Fixed(20261101, 20261130)
    got = period(window, TODAY)
    assert retry_after_s(window, got, TODAY, NOW, {TODAY: 100}, 0, 1, 100) is None
    assert retry_after_s(window, got, TODAY, NOW, {TODAY: 99}, 0, 1, 100) == 0


def test_a_request_that_never_fits_beside_the_holds_gets_none() -> None:
    for window in (Rolling(7), Calendar("month"), Anchored(1, 20260131), Fixed(TODAY, TODAY)):
        got = period(window, TODAY)
        assert retry_after_s(window, got, TODAY, NOW, {}, 60, 41, 100) is None
        assert retry_after_s(window, got, TODAY, NOW, {}, 0, 101, 100) is None
        assert retry_after_s(window, got, TODAY, NOW, {}, 59, 41, 100) == 0


def test_retry_is_not_negative_when_now_is_past_the_reset() -> None:
    window = Calendar("day")
    got = period(window, TODAY)
    assert retry_after_s(window, got, TODAY, NEXT_MIDNIGHT + 5, {TODAY: 10}, 0, 1, 10) == 0


# --- parse_window -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "window"),
    [
        ({"days": 1}, Rolling(1)),
        ({"days": 366}, Rolling(366)),
        ({"calendar": "week"}, Calendar("week", 1)),
        ({"calendar": "week", "week_start": 7}, Calendar("week", 7)),
        ({"calendar": "year"}, Calendar("year")),
        ({"months": 12, "anchor": TODAY}, Anchored(12, TODAY)),
        ({"from": TODAY, "to": TODAY}, Fixed(TODAY, TODAY)),
        ({"to": 20270101, "from": 20260101}, Fixed(20260101, 20270101)),
    ],
)
def test_parse_window_accepts(raw: object, window: Window) -> None:
    assert parse_window(raw, TODAY) == window


MUST_HAVE_ONE = "Field window must have exactly one of days, calendar, months, from"
NO_TZ = "Field window.tz is not supported (windows are UTC days)"
WEEK_START = "Field window.week_start must be an integer from 1 to 7"
START_AFTER_END = "Bucket range start must be less than or equal to range end"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "Field window must be an object"),
        ([{"days": 7}], "Field window must be an object"),
        ("month", "Field window must be an object"),
        # E13
        ({"days": 7, "calendar": "month"}, MUST_HAVE_ONE),
        ({}, MUST_HAVE_ONE),
        ({"to": TODAY}, MUST_HAVE_ONE),
        ({"week_start": 1}, MUST_HAVE_ONE),
        ({"calendar": "day", "tz": "UTC"}, NO_TZ),
        ({"tz": "Asia/Shanghai"}, NO_TZ),
        ({"days": 7, "anchor": TODAY}, "Field window.anchor is not supported"),
        ({"days": 7, "hours": 3}, "Field window.hours is not supported"),
        ({"from": TODAY, "to": TODAY, "step": 1}, "Field window.step is not supported"),
        ({"days": 0}, "Field window.days must be an integer from 1 to 366"),
        ({"days": 367}, "Field window.days must be an integer from 1 to 366"),
        ({"days": True}, "Field window.days must be an integer from 1 to 366"),
        ({"days": 7.0}, "Field window.days must be an integer from 1 to 366"),
        ({"days": "7"}, "Field window.days must be an integer from 1 to 366"),
        ({"days": None}, "Field window.days must be an integer from 1 to 366"),
        ({"calendar": "quarter"}, "Field window.calendar must be one of day, week, month, year"),
        ({"calendar": ["day"]}, "Field window.calendar must be one of day, week, month, year"),
        ({"calendar": "Month"}, "Field window.calendar must be one of day, week, month, year"),
        ({"calendar": "day", "week_start": 1}, "Field window.week_start is only for calendar week"),
        ({"calendar": "week", "week_start": 0}, WEEK_START),
        ({"calendar": "week", "week_start": 8}, WEEK_START),
        ({"calendar": "week", "week_start": True}, WEEK_START),
        ({"calendar": "week", "week_start": None}, WEEK_START),
        ({"months": 0, "anchor": TODAY}, "Field window.months must be an integer from 1 to 12"),
        ({"months": 13, "anchor": TODAY}, "Field window.months must be an integer from 1 to 12"),
        ({"months": True, "anchor": TODAY}, "Field window.months must be an integer from 1 to 12"),
        ({"months": 1}, "Field window.anchor must be a valid YYYYMMDD day"),
        # E13
        ({"months": 1, "anchor": 20260231}, "Field window.anchor must be a valid YYYYMMDD day"),
        ({"months": 1, "anchor": 21000229}, "Field window.anchor must be a valid YYYYMMDD day"),
        ({"months": 1, "anchor": "20260131"}, "Field window.anchor must be a valid YYYYMMDD day"),
        ({"months": 1, "anchor": 20261125}, "Field window.anchor must not be after today 20261124"),
        ({"from": 20261101}, "Field window.to must be a valid YYYYMMDD day"),
        ({"from": 20261131, "to": 20261201}, "Field window.from must be a valid YYYYMMDD day"),
        ({"from": True, "to": 20261201}, "Field window.from must be a valid YYYYMMDD day"),
        ({"from": 20261101, "to": 20261232}, "Field window.to must be a valid YYYYMMDD day"),
        ({"from": 20261101, "to": 2**70}, "Field window.to must be a valid YYYYMMDD day"),
        ({"from": 20261130, "to": 20261101}, START_AFTER_END),
        ({"from": 20251123, "to": 20261124}, "Range exceeds max days"),
        ({"from": 20261101, "to": 20261123}, "Field window must contain today 20261124"),
        ({"from": 20261125, "to": 20261130}, "Field window must contain today 20261124"),
    ],
)
def test_parse_window_refuses(raw: object, message: str) -> None:
    with pytest.raises(KarmaError) as caught:
        parse_window(raw, TODAY)
    assert (caught.value.code, caught.value.message) == (ErrorCode.VALIDATION_ERROR, message)


def test_a_fixed_window_spans_at_most_366_buckets() -> None:
    assert parse_window({"from": 20251124, "to": 20261124}, TODAY) == Fixed(20251124, 20261124)
    assert days.days_between(20251124, 20261124) + 1 == 366
