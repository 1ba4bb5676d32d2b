"""`counter.*` and the batch writes: one key's counter (increment, decrement, sum, points,
deletes), a list of keys (batch sums, resets and deletes; a multi-series sum), and day buckets of
many keys added or set at once (`series.batch_add`, `series.batch_set`), with karma 1.0's aliases.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from karma import days
from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64, DayRange, Item
from karma.protocol.requests.base import Request, SeriesRequest

__all__ = [
    "BatchAdd",
    "BatchDeleteRange",
    "BatchIncrement",
    "BatchReset",
    "BatchSet",
    "BatchSum",
    "CounterDeleteRange",
    "CounterReset",
    "CounterSeries",
    "Decrement",
    "Increment",
    "KeyRequest",
    "KeysRequest",
    "MultiSum",
    "MultiSumItem",
    "SeriesBatchSum",
    "SeriesIncrement",
    "SeriesPoints",
    "SeriesSum",
    "Sum",
]


class KeyRequest(SeriesRequest, frozen=True, kw_only=True):
    key: U64

    def check(self) -> None:
        super().check()
        f.check_u64("key", self.key)


class Increment(KeyRequest, tag="counter.increment", frozen=True, kw_only=True):
    date: U64 | UnsetType = UNSET
    bucket: U64 | str | UnsetType = UNSET
    value: U64 | UnsetType = UNSET

    def bucket_or(self, today: int) -> int:
        """The day this write lands on: `date`, else `bucket`, else today (UTC)."""
        bucket = self.bucket
        if type(bucket) is int and self.date is UNSET:  # the common case, first
            return bucket
        if not isinstance(self.date, UnsetType):
            return self.date
        if isinstance(self.bucket, str):
            return f.bucket_from_text("bucket", self.bucket)
        return today if isinstance(self.bucket, UnsetType) else self.bucket

    @property
    def amount(self) -> int:
        value = self.value
        return value if type(value) is int else 1

    def check(self) -> None:
        # the hottest validation of all: the common case (a series, an int bucket and value)
        # is checked inline; anything unusual falls back to the general helpers
        name = self.tree if self.tree is not None else self.series
        bucket, value = self.bucket, self.value
        if (
            name is not None
            and type(bucket) is int
            and type(value) is int
            and self.date is UNSET
            and f.fast_series_ok(name)
            and self.key <= f.U64_MAX
            and 0 < value <= f.U64_MAX
            and days.is_day(bucket)
        ):
            return
        super().check()
        if not isinstance(self.date, UnsetType):
            f.check_day("date", self.date)
        elif not isinstance(self.bucket, UnsetType):
            f.check_day("bucket", self.bucket_or(0))
        if not isinstance(self.value, UnsetType):
            f.check_u64("value", self.value)
            f.check_positive("value", self.value)


class SeriesIncrement(Increment, tag="series.increment", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.increment."""


class Decrement(Increment, tag="counter.decrement", frozen=True, kw_only=True):
    pass


class Sum(KeyRequest, tag="counter.sum", frozen=True, kw_only=True):
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        # the hottest read: the common case is checked inline, as Increment's is
        name = self.tree if self.tree is not None else self.series
        if (
            name is not None
            and self.range is UNSET
            and self.key <= f.U64_MAX
            and f.fast_series_ok(name)
        ):
            return
        super().check()
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class SeriesSum(Sum, tag="series.sum", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.sum."""


class CounterSeries(KeyRequest, tag="counter.series", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class SeriesPoints(CounterSeries, tag="series.points", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.series."""


class CounterDeleteRange(KeyRequest, tag="counter.delete_range", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class CounterReset(KeyRequest, tag="counter.reset", frozen=True, kw_only=True):
    pass


class KeysRequest(SeriesRequest, frozen=True, kw_only=True):
    keys: list[U64]

    def check(self) -> None:
        super().check()
        f.check_keys(self.keys)


class BatchSum(KeysRequest, tag="counter.batch_sum", frozen=True, kw_only=True):
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        super().check()
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class SeriesBatchSum(BatchSum, tag="series.batch_sum", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.batch_sum."""


class BatchReset(KeysRequest, tag="counter.batch_reset", frozen=True, kw_only=True):
    pass


class BatchDeleteRange(KeysRequest, tag="counter.batch_delete_range", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class MultiSumItem(msgspec.Struct, frozen=True, gc=False):
    series: str
    key: U64


class MultiSum(Request, tag="counter.multi_sum", frozen=True, kw_only=True):
    items: list[MultiSumItem]
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        if len(self.items) > f.MAX_BATCH:
            raise KarmaError.validation("Field items exceeds max size")
        for item in self.items:
            f.check_non_empty("items[].series", item.series)
            f.check_series_name("items[].series", item.series)
            f.check_u64("items[].key", item.key)
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class BatchAdd(SeriesRequest, tag="series.batch_add", frozen=True, kw_only=True):
    items: list[Item]

    def check(self) -> None:
        super().check()
        f.check_items(self.items, allow_zero=False)


class BatchIncrement(BatchAdd, tag="counter.batch_increment", frozen=True, kw_only=True):
    """karma 1.0 alias of series.batch_add."""


class BatchSet(SeriesRequest, tag="series.batch_set", frozen=True, kw_only=True):
    items: list[Item]

    def check(self) -> None:
        super().check()
        # a zero value deletes the bucket (karma 1.0 README)
        f.check_items(self.items, allow_zero=True)


AnyCounterRequest = (
    Increment
    | SeriesIncrement
    | Decrement
    | Sum
    | SeriesSum
    | CounterSeries
    | SeriesPoints
    | CounterDeleteRange
    | CounterReset
    | BatchSum
    | SeriesBatchSum
    | BatchReset
    | BatchDeleteRange
    | MultiSum
    | BatchAdd
    | BatchIncrement
    | BatchSet
)
