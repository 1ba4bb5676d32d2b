"""Field types shared by request Structs, and the checks karma 1.0 runs after parsing.

Parsing (types, signs) is expressed in annotations; the checks below are the "validate" phase
that karma 1.0 runs afterwards, with its exact messages. Everything raises KarmaError.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Annotated, Final

import msgspec

from karma import days
from karma.errors import KarmaError

U64_MAX: Final = 2**64 - 1
#: karma 1.0 caps batch reads and writes at 10,000 keys or items per request.
MAX_BATCH: Final = 10_000

#: An unsigned integer as the protocol parses it. msgspec cannot express the 2^64-1 ceiling in
#: Meta (it only supports int64 bounds), so `check_u64` adds it.
U64 = Annotated[int, msgspec.Meta(ge=0)]

#: Series names become file names (`<unix>_<series>.tree`): nothing that could leave the data
#: directory or confuse the `_` split. (karma 1.0 accepted any string: DEFECTS.md #10.)
SERIES_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")
SERIES_NAME_TEXT: Final = "[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}"


class DayRange(msgspec.Struct, frozen=True, gc=False, rename={"first": "from", "last": "to"}):
    """An inclusive range of day buckets, `{"from": YYYYMMDD, "to": YYYYMMDD}` on the wire."""

    first: U64
    last: U64


def check_u64(field: str, value: int) -> None:
    if value > U64_MAX:
        raise KarmaError.validation(f"Field {field} must be less than or equal to {U64_MAX}")


def check_day(field: str, value: int) -> None:
    check_u64(field, value)
    if not days.is_day(value):
        raise KarmaError.validation(f"Field {field} must be a calendar day (YYYYMMDD)")


def check_range(day_range: DayRange) -> None:
    """karma 1.0's complete-range rule: real days, from <= to, at most 366 days apart."""
    for value in (day_range.first, day_range.last):
        check_u64("range", value)
        if not days.is_day(value):
            raise KarmaError.validation("Invalid bucket date")
    if day_range.first > day_range.last:
        raise KarmaError.validation("Bucket range start must be less than or equal to range end")
    if days.days_between(day_range.first, day_range.last) > days.MAX_RANGE_DAYS:
        raise KarmaError.validation("Range exceeds max days")


def check_positive(field: str, value: int) -> None:
    if value <= 0:
        raise KarmaError.validation(f"Field {field} must be greater than 0")


def check_limit(value: int | None, *, default: int, maximum: int) -> int:
    limit = default if value is None else value
    if limit <= 0:
        raise KarmaError.validation("Field limit must be greater than 0")
    if limit > maximum:
        raise KarmaError.validation("Field limit exceeds max size")
    return limit


def check_series_name(field: str, name: str) -> None:
    if not _valid_series_name(name):
        raise KarmaError.validation(f"Field {field} must match {SERIES_NAME_TEXT}")


def fast_series_ok(name: str) -> bool:
    return _valid_series_name(name)


@functools.lru_cache(maxsize=4096)
def _valid_series_name(name: str) -> bool:
    """Cached: a server sees the same few series names on every request."""
    return SERIES_NAME.fullmatch(name) is not None


def check_keys(keys: list[int]) -> None:
    if len(keys) > MAX_BATCH:
        raise KarmaError.validation("Field keys exceeds max size")
    if not keys or max(keys) <= U64_MAX:  # at C speed; keys are never negative (U64)
        return
    for key in keys:
        check_u64("keys[]", key)


Item = tuple[U64, U64, U64]


def check_items(items: list[Item], *, allow_zero: bool) -> None:
    """Batch items are `[key, bucket, value]`; karma 1.0 checks count, then each value."""
    if len(items) > MAX_BATCH:
        raise KarmaError.validation("Field items exceeds max size")
    if not items:
        return
    # Whole columns at C speed first (a batch names a handful of distinct days); only a batch
    # with a bad item is walked item by item, to report the first problem as karma 1.0 does.
    keys, buckets, values = zip(*items, strict=True)
    if (
        max(keys) <= U64_MAX
        and max(values) <= U64_MAX
        and (allow_zero or min(values) > 0)
        and all(map(days.is_day, set(buckets)))
    ):
        return
    for key, bucket, value in items:
        check_u64("items[][0]", key)
        check_day("items[][1]", bucket)
        check_u64("items[][2]", value)
        if value == 0 and not allow_zero:
            raise KarmaError.validation("Batch item value must be greater than 0")


def bucket_from_text(field: str, text: str) -> int:
    """karma 1.0 also takes buckets as strings such as "2026-05-05"."""
    if text.startswith("-"):
        raise KarmaError.validation(f"Field {field} must be greater than or equal to 0")
    digits = text.replace("-", "")
    if not digits or not digits.isascii() or not digits.isdigit():
        raise KarmaError.validation(f"Field {field} must be a bucket date")
    return int(digits)


def unix_from_text(field: str, text: str) -> int:
    """An RFC 3339 / ISO 8601 timestamp as Unix seconds (karma 1.0's `idempotency.prune`)."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KarmaError.validation(f"Field {field} must be an ISO8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0, int(moment.timestamp()))


MAX_IDEMPOTENCY_KEY_BYTES = 256
MAX_FINGERPRINT_BYTES = 512


def check_idempotency_fields(key: str | None, fingerprint: str | None) -> None:
    """karma 1.0's rules for the idempotency fields of an eligible write."""
    if key is not None:
        check_non_empty("idempotency_key", key)
        if len(key.encode()) > MAX_IDEMPOTENCY_KEY_BYTES:
            raise KarmaError.validation("Field idempotency_key exceeds max size")
    if fingerprint is not None:
        check_non_empty("fingerprint", fingerprint)
        if len(fingerprint.encode()) > MAX_FINGERPRINT_BYTES:
            raise KarmaError.validation("Field fingerprint exceeds max size")


def check_non_empty(field: str, value: str) -> None:
    if not value:
        raise KarmaError.validation(f"Field {field} must not be empty")
