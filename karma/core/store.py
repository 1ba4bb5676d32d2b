"""The series catalog and `apply`, the one place the data changes.

`apply` is total and deterministic: it either changes the store and returns the answer, or
raises KarmaError having changed nothing. Live writes, WAL replay and (later) replication all
go through it, so they reach the same state from the same mutations. `check` runs the same
preconditions without changing anything: the engine calls it before a mutation is logged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

import attrs

from karma.core import mutations as m
from karma.core.series import Counter, HighWater, Series
from karma.errors import KarmaError
from karma.protocol.fields import U64_MAX

Handler = Callable[["Store", Any], object]
_VALUE: Final = operator.itemgetter(2)  # of a batch item [key, bucket, value]


@attrs.define(eq=False)
class Store:
    series: dict[str, Series] = attrs.field(factory=dict)

    # --- reads -------------------------------------------------------------------------------
    def get(self, name: str) -> Series:
        found = self.series.get(name)
        if found is None:
            raise KarmaError.series_not_found(name)
        return found

    def pick(self, name: str) -> Series:
        """The series, created empty if missing: karma 1.0's behaviour for every write."""
        found = self.series.get(name)
        if found is None:
            found = self.series[name] = Series()
        return found

    @property
    def key_count(self) -> int:
        return sum(len(s.counters) for s in self.series.values())

    # --- writes ------------------------------------------------------------------------------
    def check(self, mutation: m.Mutation) -> None:
        """Raise what `apply` would raise, changing nothing."""
        checker = _CHECKS.get(type(mutation))
        if checker is not None:
            checker(self, mutation)

    def apply(self, mutation: m.Mutation, *, checked: bool = False) -> object:
        """Apply; `checked=True` skips the preconditions when `check` just ran, with nothing
        in between (no await), so the state they saw is the state applied to."""
        cls = type(mutation)
        if not checked and cls not in SELF_CHECKING:
            self.check(mutation)
        return _APPLY[cls](self, mutation)

    def _create(self, mut: m.CreateSeries) -> object:
        self.pick(mut.series)
        return "OK"

    def _drop(self, mut: m.DropSeries) -> object:
        del self.series[mut.series]
        return "OK"

    def _increment(self, mut: m.Increment) -> object:
        counter = self.pick(mut.series).get_or_create(mut.key)
        value = mut.value
        if counter.total + value > U64_MAX:  # _check_increment's rule, inline: the hottest write
            raise _overflow(mut)
        counter.add(mut.bucket, value)
        # karma 1.0 answers the amount added, not the bucket's new value (golden:
        # increment_returns_bucket_value answers 6 after 5 + 6)
        return mut.value

    def _decrement(self, mut: m.Decrement) -> object:
        self.pick(mut.series).get_or_create(mut.key).subtract(mut.bucket, mut.value)
        return mut.value

    def _batch_add(self, mut: m.BatchAdd) -> object:
        counters = self.pick(mut.series).counters
        get = counters.get
        high = HighWater.total
        # Counter.add inlined for its common case (the bucket is the key's last one): a call
        # per item was a quarter of a 1000-item batch
        for key, bucket, value in mut.items:
            counter = get(key)
            if counter is None:
                counter = counters[key] = Counter()
            pairs = counter.pairs
            if pairs and pairs[-2] == bucket:
                pairs[-1] += value
                total = counter.total = counter.total + value
                if total > high:
                    high = total
            else:
                counter.add(bucket, value)
        if high > HighWater.total:
            HighWater.total = high
        return {"applied": len(mut.items), "total": sum(map(_VALUE, mut.items))}

    def _batch_set(self, mut: m.BatchSet) -> object:
        series = self.pick(mut.series)
        for key, bucket, value in mut.items:
            series.get_or_create(key).set(bucket, value)
        return {"applied": len(mut.items)}

    def _batch_reset(self, mut: m.BatchReset) -> object:
        series = self.get(mut.series)
        reset = missing = 0
        for key in mut.keys:
            counter = series.get(key)
            if counter is None or not counter.pairs:
                missing += 1
                continue
            counter.reset()
            reset += 1
        return {"reset": reset, "missing": missing}

    def _batch_delete_range(self, mut: m.BatchDeleteRange) -> object:
        series = self.get(mut.series)
        first, last = mut.range.first, mut.range.last
        deleted = missing = 0
        for key in mut.keys:
            counter = series.get(key)
            if counter is None or not counter.pairs:
                missing += 1
            elif counter.has_day_in(first, last):
                counter.delete_range(first, last)
                deleted += 1
        return {"deleted": deleted, "missing": missing}

    def _delete_range(self, mut: m.DeleteRange) -> object:
        counter = self.pick(mut.series).get(mut.key)
        if counter is not None:
            counter.delete_range(mut.range.first, mut.range.last)
        return True

    def _series_delete_range(self, mut: m.SeriesDeleteRange) -> object:
        for counter in self.pick(mut.series).values():
            counter.delete_range(mut.range.first, mut.range.last)
        return True

    def _reset(self, mut: m.Reset) -> object:
        counter = self.pick(mut.series).get(mut.key)
        if counter is not None:
            counter.reset()
        return "OK"

    def _series_reset(self, mut: m.SeriesReset) -> object:
        for counter in self.pick(mut.series).values():
            counter.reset()
        return "OK"

    def _delete_before(self, mut: m.DeleteBefore) -> object:
        series = self.get(mut.series)
        for counter in series.values():
            counter.delete_range(0, mut.before - 1)
        series.compact()
        return "OK"

    def _compact_series(self, mut: m.CompactSeries) -> object:
        self.get(mut.series).compact()
        return "OK"

    def _compact_all(self, mut: m.CompactAll) -> object:
        for series in self.series.values():
            series.compact()
        return "OK"


# --- preconditions (checked before logging, and again at apply) ------------------------------
def _must_exist(store: Store, mut: m.SeriesMutation) -> None:
    store.get(mut.series)


def _check_increment(store: Store, mut: m.Increment) -> None:
    """A bucket never holds more than its key's total, so the total alone decides overflow."""
    series = store.series.get(mut.series)
    counter = series.get(mut.key) if series is not None else None
    if counter is not None and counter.total + mut.value > U64_MAX:
        raise _overflow(mut)


def _overflow(mut: m.Increment) -> KarmaError:
    return KarmaError.validation(f"Counter overflow key={mut.key} bucket={mut.bucket}")


def _check_batch_add(store: Store, mut: m.BatchAdd) -> None:
    """All-or-nothing: refuse the batch if any key's total would pass 2^64-1.

    A bucket never holds more than its key's total, so checking totals covers buckets too.
    """
    if HighWater.total + sum(map(_VALUE, mut.items)) <= U64_MAX:
        return  # no total can pass 2^64-1 (see HighWater)
    series = store.series.get(mut.series)
    added: dict[int, int] = {}
    for key, _, value in mut.items:
        added[key] = added.get(key, 0) + value
    for key, amount in added.items():
        counter = series.get(key) if series is not None else None
        if (counter.total if counter is not None else 0) + amount > U64_MAX:
            bucket = next(b for k, b, _ in reversed(mut.items) if k == key)
            raise KarmaError.validation(f"Counter overflow in batch item key={key} bucket={bucket}")


def _check_batch_set(store: Store, mut: m.BatchSet) -> None:
    series = store.series.get(mut.series)
    written: dict[tuple[int, int], int] = {}
    totals: dict[int, int] = {}
    last_bucket: dict[int, int] = {}
    for key, bucket, value in mut.items:
        counter = series.get(key) if series is not None else None
        if key not in totals:
            totals[key] = counter.total if counter is not None else 0
        old = written.get((key, bucket))
        if old is None:
            old = counter.get(bucket) if counter is not None else 0
        written[key, bucket] = value
        totals[key] += value - old
        last_bucket[key] = bucket
    for key, total in totals.items():
        if total > U64_MAX:  # the batch is all-or-nothing: only the final totals matter
            bucket = last_bucket[key]
            raise KarmaError.validation(f"Counter overflow in batch item key={key} bucket={bucket}")


def _check_drop(store: Store, mut: m.DropSeries) -> None:
    store.get(mut.series)


_CHECKS: Final[dict[type, Callable[[Store, Any], None]]] = {
    m.Increment: _check_increment,
    m.BatchAdd: _check_batch_add,
    m.BatchSet: _check_batch_set,
    m.DropSeries: _check_drop,
    m.BatchReset: _must_exist,
    m.BatchDeleteRange: _must_exist,
    m.DeleteBefore: _must_exist,
    m.CompactSeries: _must_exist,
}

#: mutations whose apply runs its own preconditions (cheaper than check, then apply)
SELF_CHECKING: Final = frozenset({m.Increment})

_APPLY: Final[dict[type, Handler]] = {
    m.CreateSeries: Store._create,
    m.DropSeries: Store._drop,
    m.Increment: Store._increment,
    m.Decrement: Store._decrement,
    m.BatchAdd: Store._batch_add,
    m.BatchSet: Store._batch_set,
    m.BatchReset: Store._batch_reset,
    m.BatchDeleteRange: Store._batch_delete_range,
    m.DeleteRange: Store._delete_range,
    m.SeriesDeleteRange: Store._series_delete_range,
    m.Reset: Store._reset,
    m.SeriesReset: Store._series_reset,
    m.DeleteBefore: Store._delete_before,
    m.CompactSeries: Store._compact_series,
    m.CompactAll: Store._compact_all,
}
