"""One series: subject key → per-day buckets, with a cached total per key.

Buckets keep insertion order, as karma 1.0's hashes do: `counter.series` and snapshots list
them in the order they were first written. A counter whose buckets were all removed stays
(with total 0) until a compact, as in karma 1.0: `tree.info` counts it as a key.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterator
from itertools import repeat
from typing import Final

import attrs

from karma.protocol.fields import DayRange

#: karma 1.0 stores keys in 9 hash branches (`key % 9`) and lists counters branch by branch.
BRANCHES: Final = 9


class HighWater:
    """The largest total any counter in this process has reached (never lowered).

    While it plus a batch's whole sum stays within 2^64-1, no key of the batch can overflow,
    and the per-key check is skipped: real totals sit far below 2^64, so batches almost
    always take that shortcut. Kept by every path that raises a total.
    """

    total: int = 0


class Counter:
    """One key's buckets as one flat array `[day, value, day, value, ...]`, plus the total.

    Not a dict per key: a 10-day dict costs ~350 bytes, this array ~230, and memory per point
    decides how many subjects fit on a machine (docs/performance.md). Insertion order is kept,
    as karma 1.0's hashes keep it. Lookups scan the days in C (`index` on a slice view would
    copy, so the scan steps over the pairs); a key rarely holds more than a year of days.
    """

    __slots__ = ("pairs", "total")

    def __init__(self, table: dict[int, int] | None = None, total: int = 0) -> None:
        self.pairs = array("Q")
        self.total = total
        if total > HighWater.total:
            HighWater.total = total
        if table:
            for day, value in table.items():
                self.pairs.append(day)
                self.pairs.append(value)

    @property
    def table(self) -> dict[int, int]:
        """The buckets as a dict in insertion order (snapshots, verification, tests)."""
        pairs = self.pairs
        return dict(zip(pairs[0::2], pairs[1::2], strict=True))

    @property
    def values(self) -> list[int]:
        return list(self.pairs[1::2])

    def __len__(self) -> int:
        return len(self.pairs) // 2

    def _find(self, day: int) -> int:
        """Index of `day`'s value in `pairs`, or -1."""
        pairs = self.pairs
        start = 0
        while True:
            try:
                at = pairs.index(day, start)
            except ValueError:
                return -1
            if at % 2 == 0:  # a day, not a value that happens to equal it
                return at + 1
            start = at + 1

    def get(self, day: int, default: int = 0) -> int:
        at = self._find(day)
        return self.pairs[at] if at >= 0 else default

    def sum_range(self, first_day: int, last_day: int) -> int:
        pairs = self.pairs
        return sum(
            v for d, v in zip(pairs[0::2], pairs[1::2], strict=True) if first_day <= d <= last_day
        )

    def points(self, first_day: int, last_day: int) -> dict[int, int]:
        pairs = self.pairs
        return {
            d: v
            for d, v in zip(pairs[0::2], pairs[1::2], strict=True)
            if first_day <= d <= last_day
        }

    def add(self, day: int, value: int) -> None:
        pairs = self.pairs
        if pairs and pairs[-2] == day:  # today's bucket is usually the last one written
            pairs[-1] += value
        else:
            at = self._find(day)
            if at >= 0:
                pairs[at] += value
            else:
                pairs.append(day)
                pairs.append(value)
        total = self.total = self.total + value
        if total > HighWater.total:
            HighWater.total = total

    def subtract(self, day: int, value: int) -> None:
        """Clamp at zero and drop an emptied bucket, as karma 1.0 does.

        A negative usage would break every limit check built on it.
        """
        at = self._find(day)
        if at < 0:
            return
        current = self.pairs[at]
        if current > value:
            self.pairs[at] = current - value
            self.total -= value
        else:
            del self.pairs[at - 1 : at + 1]
            self.total -= current

    def set(self, day: int, value: int) -> None:
        at = self._find(day)
        if at >= 0:
            self.total += value - self.pairs[at]
            if value:
                self.pairs[at] = value
            else:
                del self.pairs[at - 1 : at + 1]
        elif value:
            self.pairs.append(day)
            self.pairs.append(value)
            self.total += value
        if self.total > HighWater.total:
            HighWater.total = self.total

    def delete_range(self, first_day: int, last_day: int) -> None:
        pairs = self.pairs
        keep = array("Q")
        for d, v in zip(pairs[0::2], pairs[1::2], strict=True):
            if not first_day <= d <= last_day:
                keep.append(d)
                keep.append(v)
        if len(keep) != len(pairs):
            self.pairs = keep
            self.total = sum(keep[1::2])

    def reset(self) -> None:
        self.pairs = array("Q")
        self.total = 0

    def has_day_in(self, first_day: int, last_day: int) -> bool:
        return any(first_day <= day <= last_day for day in self.pairs[0::2])


@attrs.define(slots=True, eq=False)
class Series:
    counters: dict[int, Counter] = attrs.field(factory=dict)

    def get(self, key: int) -> Counter | None:
        return self.counters.get(key)

    def get_or_create(self, key: int) -> Counter:
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = Counter()
        return counter

    def totals(self, keys: list[int]) -> list[int]:
        """Each key's total (0 when missing), looked up at C speed: no Python per key."""
        return list(map(_TOTAL, map(self.counters.get, keys, repeat(_NO_COUNTER))))

    def sum(self, key: int, day_range: DayRange | None = None) -> int:
        counter = self.counters.get(key)
        if counter is None:
            return 0
        if day_range is None:
            return counter.total
        return counter.sum_range(day_range.first, day_range.last)

    def in_branch_order(self) -> list[int]:
        """Keys in karma 1.0's listing order: by `key % 9`, then by insertion."""
        return sorted(self.counters, key=lambda key: key % BRANCHES)

    def items(self) -> Iterator[tuple[int, Counter]]:
        return iter(self.counters.items())

    def values(self) -> Iterator[Counter]:
        return iter(self.counters.values())

    def compact(self) -> None:
        """Drop counters with nothing left, as karma 1.0's compact does."""
        for key in [k for k, c in self.counters.items() if c.total == 0]:
            del self.counters[key]

    @property
    def bucket_count(self) -> int:
        return sum(len(c) for c in self.counters.values())

    @property
    def total(self) -> int:
        return sum(c.total for c in self.counters.values())


_TOTAL: Final = operator.attrgetter("total")
#: what `totals` finds for a missing key; never written to
_NO_COUNTER: Final = Counter()
