"""Requests → answers (reads) or canonical mutations (writes), against one Store.

Reads are answered synchronously. Writes are turned into a Mutation and checked against the
current state *before* anything is logged, so the WAL never holds a write that fails
(karma 1.0 did log failing writes: DEFECTS.md #2). Applying the mutation is the WAL
writer's job (server/wal_writer.py), through `Engine.apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import attrs

from karma.core import mutations as m
from karma.core.budget import AnyBudget
from karma.core.counters import Counters
from karma.core.store import Store
from karma.protocol import requests as r
from karma.protocol.optable import ALL_CLASSES

T = TypeVar("T")


@attrs.define(eq=False)
class Engine:
    store: Store = attrs.field(factory=Store)
    counters: Counters = attrs.field(factory=Counters)

    # --- writes ------------------------------------------------------------------------------
    def mutation_for(self, request: r.Request, today: int) -> m.Mutation:
        """The canonical mutation of a write request, checked against the current state."""
        mutation = _lookup(_NORMALIZE, type(request))(request, today)
        self.store.check(mutation)
        return mutation

    def apply(self, mutation: m.Mutation) -> object:
        response = self.store.apply(mutation)
        if isinstance(mutation, m.BatchAdd | m.BatchSet):
            self._batch_write(len(mutation.items))
        elif isinstance(mutation, m.BatchReset | m.BatchDeleteRange):
            self._batch_write(len(mutation.keys))
        elif isinstance(mutation, m.DeleteBefore):
            self.counters.retention_count += 1
        elif isinstance(mutation, m.CompactSeries | m.CompactAll):
            self.counters.compact_count += 1
        return response

    def _batch_write(self, size: int) -> None:
        self.counters.batch_write_count += 1
        self.counters.batch_write_item_count += size

    # --- reads -------------------------------------------------------------------------------
    def read(self, request: r.Request, budget: AnyBudget) -> object:
        return _lookup(_READS, type(request))(self, request, budget)

    def sum(self, req: r.Sum, budget: AnyBudget) -> object:
        return self.store.get(req.name).sum(req.key, r.opt(req.range))

    def counter_series(self, req: r.CounterSeries, budget: AnyBudget) -> object:
        counter = self.store.get(req.name).get(req.key)
        return {} if counter is None else counter.points(req.range.first, req.range.last)

    def batch_sum(self, req: r.BatchSum, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        self.counters.batch_read_count += 1
        self.counters.batch_read_key_count += len(req.keys)
        day_range = r.opt(req.range)
        return [{"key": key, "value": series.sum(key, day_range)} for key in req.keys]

    def multi_sum(self, req: r.MultiSum, budget: AnyBudget) -> object:
        answer = []
        for item in req.items:
            series = self.store.get(item.series)
            answer.append(
                {
                    "series": item.series,
                    "key": item.key,
                    "value": series.sum(item.key, r.opt(req.range)),
                }
            )
        self.counters.batch_read_count += 1
        self.counters.batch_read_key_count += len(req.items)
        return answer

    def tree_list(self, req: r.TreeList, budget: AnyBudget) -> object:
        return list(self.store.series)

    def tree_info(self, req: r.TreeInfo, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        key_count = bucket_count = total = 0
        for counter in series.values():
            budget.tick()
            key_count += 1
            bucket_count += len(counter.table)
            total += counter.total
        return {
            "tree": req.name,
            "key_count": key_count,
            "bucket_count": bucket_count,
            "total": total,
            "branches": 9,
        }

    def tree_keys(self, req: r.TreeKeys, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        limit = r.opt(req.limit) or r.TREE_KEYS_DEFAULT_LIMIT
        after = -1 if req.cursor is None else req.cursor
        keys = sorted(key for key in series.counters if key > after)
        page = keys[:limit]
        more = len(keys) > len(page)
        return {
            "tree": req.name,
            "limit": limit,
            "cursor": req.cursor,
            "next_cursor": page[-1] if more and page else None,
            "keys": [{"key": key, "total": series.counters[key].total} for key in page],
        }

    def tree_summary(self, req: r.TreeSummary, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        active = buckets = total = 0
        day_range = r.opt(req.range)
        for counter in series.values():
            budget.tick()
            if day_range is None:
                active += 1
                buckets += len(counter.table)
                total += counter.total
                continue
            points = counter.points(day_range.first, day_range.last)
            value = sum(points.values())
            if value > 0:
                active += 1
                total += value
                buckets += len(points)
        if day_range is None:
            return {
                "tree": req.name,
                "total": total,
                "active_keys": active,
                "bucket_count": buckets,
            }
        return {
            "tree": req.name,
            "range_from": day_range.first,
            "range_to": day_range.last,
            "total": total,
            "active_keys": active,
            "bucket_count": buckets,
        }

    def tree_top(self, req: r.TreeTop, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        limit = r.opt(req.limit) or r.TREE_TOP_DEFAULT_LIMIT
        ranked = []
        day_range = r.opt(req.range)
        for key, counter in series.items():
            budget.tick()
            value = (
                counter.total
                if day_range is None
                else counter.sum_range(day_range.first, day_range.last)
            )
            if value > 0:
                ranked.append((-value, key))
        ranked.sort()
        return {
            "tree": req.name,
            "limit": limit,
            "items": [{"key": key, "value": -neg} for neg, key in ranked[:limit]],
        }

    def tree_series(self, req: r.TreeSeries, budget: AnyBudget) -> object:
        series = self.store.get(req.name)
        answer: dict[int, dict[int, int]] = {}
        for key in series.in_branch_order():
            budget.tick()
            answer[key] = series.counters[key].points(req.range.first, req.range.last)
        return answer


def _lookup(table: dict[type, T], cls: type) -> T:
    """The entry for `cls` or its nearest base (aliases are subclasses of their op)."""
    for parent in cls.__mro__:
        found = table.get(parent)
        if found is not None:
            return found
    raise LookupError(f"no entry for {cls.__name__}")


_NORMALIZE: Final[dict[type, Callable[[Any, int], m.Mutation]]] = {
    r.TreeCreate: lambda q, today: m.CreateSeries(series=q.name),
    r.TreeDrop: lambda q, today: m.DropSeries(series=q.name),
    r.Decrement: lambda q, today: m.Decrement(
        series=q.name,
        key=q.key,
        bucket=q.bucket_or(today),
        value=q.amount,
        idempotency_key=q.idempotency_key,
    ),
    r.Increment: lambda q, today: m.Increment(
        series=q.name,
        key=q.key,
        bucket=q.bucket_or(today),
        value=q.amount,
        idempotency_key=q.idempotency_key,
    ),
    r.BatchAdd: lambda q, today: m.BatchAdd(
        series=q.name, granularity="day", items=q.items, idempotency_key=q.idempotency_key
    ),
    r.BatchSet: lambda q, today: m.BatchSet(
        series=q.name, granularity="day", items=q.items, idempotency_key=q.idempotency_key
    ),
    r.BatchReset: lambda q, today: m.BatchReset(
        series=q.name, keys=q.keys, idempotency_key=q.idempotency_key
    ),
    r.BatchDeleteRange: lambda q, today: m.BatchDeleteRange(
        series=q.name, keys=q.keys, range=q.range, idempotency_key=q.idempotency_key
    ),
    r.CounterDeleteRange: lambda q, today: m.DeleteRange(
        series=q.name, key=q.key, range=q.range, idempotency_key=q.idempotency_key
    ),
    r.TreeDeleteRange: lambda q, today: m.SeriesDeleteRange(
        series=q.name, range=q.range, idempotency_key=q.idempotency_key
    ),
    r.CounterReset: lambda q, today: m.Reset(
        series=q.name, key=q.key, idempotency_key=q.idempotency_key
    ),
    r.TreeReset: lambda q, today: m.SeriesReset(series=q.name, idempotency_key=q.idempotency_key),
    r.DeleteBefore: lambda q, today: m.DeleteBefore(series=q.name, before=q.day),
    r.SeriesCompact: lambda q, today: m.CompactSeries(series=q.name),
    r.SystemCompact: lambda q, today: m.CompactAll(),
}

_READS: Final[dict[type, Callable[[Engine, Any, AnyBudget], object]]] = {
    r.Sum: Engine.sum,
    r.CounterSeries: Engine.counter_series,
    r.BatchSum: Engine.batch_sum,
    r.MultiSum: Engine.multi_sum,
    r.TreeList: Engine.tree_list,
    r.TreeInfo: Engine.tree_info,
    r.TreeKeys: Engine.tree_keys,
    r.TreeSummary: Engine.tree_summary,
    r.TreeTop: Engine.tree_top,
    r.TreeSeries: Engine.tree_series,
}


def _with_aliases(table: dict[type, object]) -> frozenset[type]:
    return frozenset(cls for cls in ALL_CLASSES if any(issubclass(cls, base) for base in table))


#: Request classes (aliases included) the engine answers by itself; the others need the shell.
ENGINE_READS: Final = _with_aliases(_READS)  # type: ignore[arg-type]
#: Request classes (aliases included) that change the store and go through the WAL.
WRITES: Final = _with_aliases(_NORMALIZE)  # type: ignore[arg-type]
