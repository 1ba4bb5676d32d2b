"""One series: subject key → per-day buckets, with a cached total per key.

Buckets keep insertion order, as karma 1.0's hashes do: `counter.series` and snapshots list
them in the order they were first written. A counter whose buckets were all removed stays
(with total 0) until a compact, as in karma 1.0: `tree.info` counts it as a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import attrs

from karma.protocol.fields import DayRange

#: karma 1.0 stores keys in 9 hash branches (`key % 9`) and lists counters branch by branch.
BRANCHES: Final = 9


#: One int object per distinct day: buckets repeat across millions of keys, and an int decoded
#: from JSON is a fresh 28-byte object each time (memory benchmark: 86 -> see docs/performance.md).
_DAYS: dict[int, int] = {}


def intern_day(day: int) -> int:
    return _DAYS.setdefault(day, day)


@attrs.define(slots=True, eq=False)
class Counter:
    table: dict[int, int] = attrs.field(factory=dict)
    total: int = 0

    def sum_range(self, first_day: int, last_day: int) -> int:
        return sum(v for day, v in self.table.items() if first_day <= day <= last_day)

    def points(self, first_day: int, last_day: int) -> dict[int, int]:
        return {day: v for day, v in self.table.items() if first_day <= day <= last_day}

    def add(self, day: int, value: int) -> None:
        table = self.table
        if day in table:
            table[day] += value
        else:
            table[intern_day(day)] = value
        self.total += value

    def subtract(self, day: int, value: int) -> None:
        """Clamp at zero and drop an emptied bucket, as karma 1.0 does.

        A negative usage would break every limit check built on it.
        """
        current = self.table.get(day)
        if current is None:
            return
        if current > value:
            self.table[day] = current - value
            self.total -= value
        else:
            del self.table[day]
            self.total -= current

    def set(self, day: int, value: int) -> None:
        self.total += value - self.table.get(day, 0)
        if value:
            self.table[intern_day(day)] = value
        else:
            self.table.pop(day, None)

    def delete_range(self, first_day: int, last_day: int) -> None:
        for day in [d for d in self.table if first_day <= d <= last_day]:
            self.total -= self.table.pop(day)

    def reset(self) -> None:
        self.table = {}
        self.total = 0

    def has_day_in(self, first_day: int, last_day: int) -> bool:
        return any(first_day <= day <= last_day for day in self.table)


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
        return sum(len(c.table) for c in self.counters.values())

    @property
    def total(self) -> int:
        return sum(c.total for c in self.counters.values())


Tick = Callable[[], None]
