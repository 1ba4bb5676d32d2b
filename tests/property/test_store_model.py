"""The store against a plain-dict model: any sequence of writes leaves the same sums."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from karma.core import mutations as m
from karma.core.series import HighWater
from karma.core.store import Store
from karma.errors import KarmaError
from karma.protocol.fields import U64_MAX, DayRange

SERIES = st.sampled_from(["a", "b"])
KEYS = st.integers(0, 20)
DAYS = st.sampled_from([20260501, 20260502, 20260503, 20261231])
VALUES = st.one_of(st.integers(1, 1000), st.just(U64_MAX // 2), st.just(U64_MAX))
Model = dict[str, dict[int, dict[int, int]]]


class StoreMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store()
        self.model: Model = {}
        # the process-wide bound on totals starts over with the only store alive, so runs
        # exercise both the batch shortcut (small totals) and the exact check (huge ones)
        HighWater.total = 0

    def _counter(self, series: str, key: int) -> dict[int, int]:
        return self.model.setdefault(series, {}).setdefault(key, {})

    @rule(series=SERIES, key=KEYS, day=DAYS, value=VALUES)
    def increment(self, series: str, key: int, day: int, value: int) -> None:
        table = self.model.get(series, {}).get(key, {})
        overflow = table.get(day, 0) + value > U64_MAX or sum(table.values()) + value > U64_MAX
        mutation = m.Increment(series=series, key=key, bucket=day, value=value)
        if overflow:
            before = self.store.get(series).sum(key) if series in self.store.series else 0
            try:
                self.store.apply(mutation)
                raise AssertionError("an overflowing increment must be refused")
            except KarmaError:
                pass
            if series in self.store.series:
                assert self.store.get(series).sum(key) == before
            return
        assert self.store.apply(mutation) == value
        counter = self._counter(series, key)
        counter[day] = counter.get(day, 0) + value

    @rule(series=SERIES, items=st.lists(st.tuples(KEYS, DAYS, VALUES), max_size=5))
    def batch_add(self, series: str, items: list[tuple[int, int, int]]) -> None:
        """Checked first and then applied, as a logged write is; refused whole on overflow."""
        totals = {key: sum(self.model.get(series, {}).get(key, {}).values()) for key, _, _ in items}
        for key, _, value in items:
            totals[key] += value
        mutation = m.BatchAdd(series=series, granularity="day", items=items)
        if any(total > U64_MAX for total in totals.values()):
            for attempt in (self.store.check, self.store.apply):
                try:
                    attempt(mutation)
                    raise AssertionError("an overflowing batch must be refused")
                except KarmaError:
                    pass
            return  # and nothing changed: the invariant checks it
        self.store.check(mutation)
        answer = self.store.apply(mutation, checked=True)
        assert answer == {"applied": len(items), "total": sum(v for _, _, v in items)}
        self.model.setdefault(series, {})
        for key, day, value in items:
            counter = self._counter(series, key)
            counter[day] = counter.get(day, 0) + value

    @rule(series=SERIES, key=KEYS, day=DAYS, value=st.integers(1, 2000))
    def decrement(self, series: str, key: int, day: int, value: int) -> None:
        self.store.apply(m.Decrement(series=series, key=key, bucket=day, value=value))
        counter = self._counter(series, key)
        left = counter.get(day, 0) - value
        if left > 0:
            counter[day] = left
        else:
            counter.pop(day, None)

    @rule(series=SERIES, items=st.lists(st.tuples(KEYS, DAYS, st.integers(0, 50)), max_size=5))
    def batch_set(self, series: str, items: list[tuple[int, int, int]]) -> None:
        tables = {key: dict(self.model.get(series, {}).get(key, {})) for key, _, _ in items}
        for key, day, value in items:
            tables[key][day] = value
        mutation = m.BatchSet(series=series, granularity="day", items=items)
        if any(sum(table.values()) > U64_MAX for table in tables.values()):
            try:
                self.store.apply(mutation)
                raise AssertionError("an overflowing batch must be refused")
            except KarmaError:
                return  # and nothing changed: the invariant checks it
        self.store.apply(mutation)
        self.model.setdefault(series, {})
        for key, day, value in items:
            counter = self._counter(series, key)
            if value:
                counter[day] = value
            else:
                counter.pop(day, None)

    @rule(series=SERIES, key=KEYS, first=DAYS, last=DAYS)
    def delete_range(self, series: str, key: int, first: int, last: int) -> None:
        first, last = min(first, last), max(first, last)
        self.store.apply(m.DeleteRange(series=series, key=key, range=DayRange(first, last)))
        self.model.setdefault(series, {})
        counter = self.model[series].get(key)
        if counter is not None:
            for day in [d for d in counter if first <= d <= last]:
                del counter[day]

    @rule(series=SERIES, key=KEYS)
    def reset(self, series: str, key: int) -> None:
        self.store.apply(m.Reset(series=series, key=key))
        self.model.setdefault(series, {})
        if key in self.model[series]:
            self.model[series][key] = {}

    @rule(series=SERIES)
    def drop(self, series: str) -> None:
        if series not in self.model:
            try:
                self.store.apply(m.DropSeries(series=series))
                raise AssertionError("dropping a missing series must be refused")
            except KarmaError:
                return
        self.store.apply(m.DropSeries(series=series))
        del self.model[series]

    @rule()
    def compact(self) -> None:
        self.store.apply(m.CompactAll())
        for counters in self.model.values():
            for key in [k for k, table in counters.items() if not table]:
                del counters[key]

    @invariant()
    def sums_match(self) -> None:
        assert set(self.store.series) == set(self.model)
        for name, counters in self.model.items():
            series = self.store.get(name)
            assert set(series.counters) == set(counters)
            for key, table in counters.items():
                counter = series.counters[key]
                assert counter.table == table
                assert counter.total == sum(table.values())
                assert series.sum(key, DayRange(20260502, 20260503)) == sum(
                    v for d, v in table.items() if 20260502 <= d <= 20260503
                )


TestStoreMatchesModel = StoreMatchesModel.TestCase
