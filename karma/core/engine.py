"""Requests → answers (reads) or canonical mutations (writes), against one Store.

Reads are answered synchronously. Writes are turned into a Mutation and checked against the
current state *before* anything is logged, so the WAL never holds a write that fails
(karma 1.0 did log failing writes: DEFECTS.md #2). Applying the mutation is the WAL
writer's job (server/wal_writer.py), through `Engine.apply`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Final

import attrs
import msgspec
from msgspec import UNSET

from karma.core import mutations as m
from karma.core.budget import AnyBudget
from karma.core.counters import Counters
from karma.core.idempotency import IdempotencyTable, Record
from karma.core.ingest import Ingest
from karma.core.limits import Limits, adds_of
from karma.core.series import Series
from karma.core.store import SELF_CHECKING, Store
from karma.protocol import envelope
from karma.protocol import requests as r
from karma.protocol.optable import by_class
from karma.protocol.requests import limits as lr


@attrs.frozen
class Immediate:
    """A write that needs no logging: its answer is known (a repeated begin, a duplicate chunk)."""

    response: object


@attrs.define(eq=False)
class Engine:
    store: Store = attrs.field(factory=Store)
    counters: Counters = attrs.field(factory=Counters)
    idempotency: IdempotencyTable = attrs.field(factory=IdempotencyTable)
    ingest: Ingest = attrs.field(factory=Ingest)
    limits: Limits = attrs.field(factory=Limits)

    # --- writes ------------------------------------------------------------------------------
    def mutation_for(
        self, request: r.Request, today: int, now: int, *, logged: bool = True
    ) -> m.Mutation | Immediate:
        """The canonical mutation of a write request, checked against the current state.

        `logged=False` (no WAL): a mutation that `Store.apply` checks itself anyway is not
        checked here too; applying it raises the same error, having changed nothing.
        """
        mutation = self.normalize(request, today, now)
        if not logged and type(mutation) in SELF_CHECKING:
            return mutation
        return self.check(mutation)

    @staticmethod
    def normalize(request: r.Request, today: int, now: int) -> m.Mutation:
        return _NORMALIZE_BY_CLASS[type(request)](request, today, now)  # KeyError: not a write

    def check(self, mutation: m.Mutation) -> m.Mutation | Immediate:
        """Raise what applying would raise, or answer a write that changes nothing."""
        if type(mutation) in _STORE_MUTATIONS:  # the hot path: one dict lookup, no isinstance chain
            self.store.check(mutation)
            return mutation
        answer: object = None
        if isinstance(mutation, m.IngestBegin):
            answer = self.ingest.check_begin(mutation)
        elif isinstance(mutation, m.IngestChunk):
            answer = self.ingest.check_chunk(mutation, mutation.canon().digest())
            if answer is not None:
                self.ingest.chunks_skipped += 1
            elif self.ingest.active[mutation.stream_id].mode == "add":
                self.store.check(_as_batch_add(mutation))
        elif isinstance(mutation, m.IngestCommit):
            answer = self.ingest.check_commit(mutation)
        elif isinstance(mutation, m.IngestAbort):
            self.ingest.check_abort(mutation)
        elif isinstance(mutation, m.LIMIT_EFFECTS):
            self.check_adds(adds_of(mutation))
        elif not isinstance(mutation, m.IdempotencyPrune):
            self.store.check(mutation)
        return mutation if answer is None else Immediate(answer)

    def apply(
        self, mutation: m.Mutation, *, checked: bool = False, canon: tuple[str, str] | None = None
    ) -> object:
        """Apply a logged mutation; a keyed one is remembered under `canon` (the command and
        fingerprint of `mutation.canon()`) when the caller worked it out already."""
        response = self._apply(mutation, checked=checked)
        key = getattr(mutation, "idempotency_key", None)  # declared by Idempotent mutations
        if key is not None and isinstance(mutation, m.Idempotent):  # limit effects remember
            self._remember(mutation, key, response, canon)  # their own (_apply_limit)
        return response

    def _remember(
        self, mutation: m.Idempotent, key: str, response: object, canon: tuple[str, str] | None
    ) -> None:
        if canon is None:
            made = mutation.canon()
            canon = made.command, made.digest()
        record = Record(key, canon[0], canon[1], response, mutation.idem_created())
        self.idempotency.remember(record)

    def _apply(self, mutation: m.Mutation, *, checked: bool = False) -> object:
        if type(mutation) in _PLAIN_STORE_MUTATIONS:
            return self.store.apply(mutation, checked=checked)
        if isinstance(mutation, m.IngestBegin):
            return self.ingest.apply_begin(mutation)
        if isinstance(mutation, m.IngestChunk):
            return self.ingest.apply_chunk(self.store, mutation)
        if isinstance(mutation, m.IngestCommit):
            return self.ingest.apply_commit(self.store, mutation)
        if isinstance(mutation, m.IngestAbort):
            return self.ingest.apply_abort(mutation)
        if isinstance(mutation, m.IdempotencyPrune):
            return {"deleted": self.idempotency.prune(mutation.before, mutation.limit)}
        if isinstance(mutation, m.LIMIT_EFFECTS):
            return self._apply_limit(mutation)
        response = self.store.apply(mutation, checked=checked)
        if isinstance(mutation, m.BatchAdd | m.BatchSet):
            self._batch_write(len(mutation.items))
        elif isinstance(mutation, m.BatchReset | m.BatchDeleteRange):
            self._batch_write(len(mutation.keys))
        elif isinstance(mutation, m.DeleteBefore):
            self.counters.retention_count += 1
        elif isinstance(mutation, m.CompactSeries | m.CompactAll):
            self.counters.compact_count += 1
        return response

    # --- limits ------------------------------------------------------------------------------
    def check_adds(self, adds: list[m.Add]) -> None:
        """Raise what adding would raise (a total past 2^64-1), changing nothing."""
        for series, key, bucket, amount in adds:
            self.store.check(m.Increment(series=series, key=key, bucket=bucket, value=amount))

    def _apply_limit(self, mutation: m.LimitApply | m.LimitHold | m.LimitSettle) -> object:
        self.limits.unpend(mutation)
        adds = adds_of(mutation)
        self.check_adds(adds)  # all or nothing: every add is checked before the first lands
        self._add_all(adds)
        self._limit_state(mutation)
        return mutation.answer

    def _limit_state(self, mutation: m.LimitApply | m.LimitHold | m.LimitSettle) -> None:
        """What a limit effect changes besides counters: a keyed consume's record, holds."""
        if isinstance(mutation, m.LimitHold):
            self.limits.apply_hold(mutation)
            if not mutation.items:  # a denial's id is remembered as settled
                self._prune_settled(mutation.created_at_unix)
        elif isinstance(mutation, m.LimitSettle):
            self.limits.apply_settle(mutation)
            self._prune_settled(mutation.settled_at_unix)
        else:
            self.limits.entries += 1
            if mutation.idempotency_key is not None:
                record = Record(
                    mutation.idempotency_key,
                    LIMIT_CONSUME,
                    mutation.fingerprint or "",
                    mutation.answer,
                    mutation.idempotency_created_at_unix or 0,
                )
                self.idempotency.remember(record)

    def _prune_settled(self, now: int) -> None:
        """Settled ids are keys: the idempotency retention, by the entry's own time (so every
        node forgets the same ones at the same entry), and at most `limits.max_settled`."""
        self.limits.prune_settled(now, self.idempotency.max_age_seconds)

    def _add_all(self, adds: list[m.Add]) -> None:
        for series, key, bucket, amount in adds:
            self.store.pick(series).get_or_create(key).add(bucket, amount)

    def replay_limit(
        self,
        mutation: m.LimitApply | m.LimitHold | m.LimitSettle,
        *,
        series_behind: Callable[[str], bool],
        state_effect: bool,
    ) -> None:
        """A limit effect from the WAL or a master: each add only where that series' snapshot
        is older than the entry; holds, settlements and records only where the limits sidecar
        is."""
        adds = [add for add in adds_of(mutation) if series_behind(add[0])]
        self.check_adds(adds)  # as when it was applied live: all or nothing
        self._add_all(adds)
        if state_effect:
            self._limit_state(mutation)

    def limits_document(self, last_lsn: int) -> bytes:
        """`karma.limits.json`: holds, settled ids and the limit ops' idempotency records, as
        of WAL entry `last_lsn`."""
        document = self.limits.documents()
        # The LSN is in the document as well as in its .meta.json: the two files are replaced
        # one after the other, so after a kill in between only the document's own LSN says
        # which WAL entries it already holds (recovery._load_limits).
        document["last_lsn"] = last_lsn
        document["records"] = [
            record.document()
            for record in self.idempotency.records.values()
            if record.operation in LIMIT_OPERATIONS
        ]
        return _json(document) + b"\n"

    def load_limits(self, document: dict[str, Any]) -> None:
        self.limits.load(document)
        last = self.limits.last_settled_at()
        if last is not None:  # a file kept under a larger bound is cut to this one's
            self._prune_settled(last)
        self.idempotency.load(document.get("records") or [])

    def replay(self, mutation: m.Mutation, *, store_effect: bool, state_effect: bool) -> None:
        """Apply a WAL record during restore, partly when a snapshot already holds part of it.

        `store_effect`: the series snapshot is older than the record; `state_effect`: the
        idempotency/ingest snapshot is. A record older than both is skipped by the caller.
        """
        if store_effect and state_effect:
            self.apply(mutation)
        elif isinstance(mutation, m.IngestChunk | m.IngestCommit):
            if state_effect:
                self.ingest.replay_state_only(mutation)
        elif isinstance(mutation, m.IngestBegin | m.IngestAbort | m.IdempotencyPrune):
            if state_effect:
                self._apply(mutation)
        elif store_effect:
            self._apply(mutation)
        elif isinstance(mutation, m.Idempotent) and (key := mutation.idem_key()) is not None:
            response = _known_response(mutation)
            if response is not None:  # resets and range deletes repeat harmlessly without one
                self._remember(mutation, key, response, None)

    def _batch_write(self, size: int) -> None:
        self.counters.batch_write_count += 1
        self.counters.batch_write_item_count += size

    def idempotency_document(
        self, encode_series: Callable[[Series], bytes]
    ) -> tuple[bytes, int, int]:
        """`karma.idempotency.json`: records, committed and open streams, with their counts."""
        # karma 1.0's file keeps karma 1.0's records only: limit records go to karma.limits.json
        records = [
            record.document()
            for record in self.idempotency.records.values()
            if record.operation not in LIMIT_OPERATIONS
        ]
        streams = self.ingest.committed_documents()
        document: dict[str, object] = {"records": records, "committed_streams": streams}
        open_streams = self.ingest.open_documents(encode_series)
        if open_streams:  # an extra key karma 1.0 ignores; absent when empty, as karma writes it
            document["open_streams"] = open_streams
        return _json(document) + b"\n", len(records), len(streams)

    # --- reads -------------------------------------------------------------------------------
    def read(self, request: r.Request, budget: AnyBudget) -> object:
        return _READS_BY_CLASS[type(request)](self, request, budget)

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
        if day_range is None:
            values = series.totals(req.keys)
        else:
            values = [series.sum(key, day_range) for key in req.keys]
        return envelope.key_values(req.keys, values)

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
            bucket_count += len(counter)
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
                buckets += len(counter)
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


_NORMALIZE: Final[dict[type, Callable[[Any, int, int], m.Mutation]]] = {
    r.TreeCreate: lambda q, today, now: m.CreateSeries(series=q.name),
    r.TreeDrop: lambda q, today, now: m.DropSeries(series=q.name),
    r.Decrement: lambda q, today, now: _point(m.Decrement, q, today, now),
    r.Increment: lambda q, today, now: _point(m.Increment, q, today, now),
    r.BatchAdd: lambda q, today, now: m.BatchAdd(
        series=q.name, granularity="day", items=q.items, **_keyed(q, now)
    ),
    r.BatchSet: lambda q, today, now: m.BatchSet(
        series=q.name, granularity="day", items=q.items, **_keyed(q, now)
    ),
    r.BatchReset: lambda q, today, now: m.BatchReset(series=q.name, keys=q.keys, **_keyed(q, now)),
    r.BatchDeleteRange: lambda q, today, now: m.BatchDeleteRange(
        series=q.name, keys=q.keys, range=q.range, **_keyed(q, now)
    ),
    r.CounterDeleteRange: lambda q, today, now: m.DeleteRange(
        series=q.name, key=q.key, range=q.range, **_keyed(q, now)
    ),
    r.TreeDeleteRange: lambda q, today, now: m.SeriesDeleteRange(
        series=q.name, range=q.range, **_keyed(q, now)
    ),
    r.CounterReset: lambda q, today, now: m.Reset(series=q.name, key=q.key, **_keyed(q, now)),
    r.TreeReset: lambda q, today, now: m.SeriesReset(series=q.name, **_keyed(q, now)),
    r.DeleteBefore: lambda q, today, now: m.DeleteBefore(series=q.name, before=q.day),
    r.SeriesCompact: lambda q, today, now: m.CompactSeries(series=q.name),
    r.SystemCompact: lambda q, today, now: m.CompactAll(),
    r.IngestBegin: lambda q, today, now: m.IngestBegin(
        stream_id=q.stream_id, mode=q.mode, granularity=q.granularity
    ),
    r.IngestChunk: lambda q, today, now: m.IngestChunk(
        stream_id=q.stream_id, series=q.name, chunk_seq=q.chunk_seq, items=q.items
    ),
    r.IngestCommit: lambda q, today, now: m.IngestCommit(
        stream_id=q.stream_id, committed_at_unix=now
    ),
    r.IngestAbort: lambda q, today, now: m.IngestAbort(stream_id=q.stream_id),
    r.IdempotencyPrune: lambda q, today, now: m.IdempotencyPrune(
        before=q.before_unix, limit=r.opt(q.limit)
    ),
    # limit effects, as the WAL and a master carry them
    lr.LimitApply: lambda q, today, now: m.LimitApply(
        add=[tuple(a) for a in q.add],
        idempotency_key=q.key_text,
        idempotency_created_at_unix=r.opt(q.idempotency_created_at_unix),
        fingerprint=None if r.opt(q.fingerprint) is None else str(q.fingerprint),
        answer=q.answer,
    ),
    lr.LimitHold: lambda q, today, now: m.LimitHold(
        id=q.id,
        items=[tuple(a) for a in q.items],
        expires_at_unix_ms=q.expires_at_unix_ms,
        created_at_unix=q.created_at_unix,
        fingerprint=None if r.opt(q.fingerprint) is None else str(q.fingerprint),
        answer=q.answer,
    ),
    lr.LimitSettle: lambda q, today, now: m.LimitSettle(
        id=q.id,
        outcome=q.outcome,
        add=[tuple(a) for a in q.add],
        settled_at_unix=q.settled_at_unix,
        fingerprint=None if r.opt(q.fingerprint) is None else str(q.fingerprint),
        answer=q.answer,
    ),
}

#: idempotency records of limit ops: the same keyspace as karma 1.0's, kept in karma.limits.json
LIMIT_CONSUME: Final = "limit_consume"
LIMIT_OPERATIONS: Final = frozenset({LIMIT_CONSUME})


def _point(cls: type[m.PointMutation], q: r.Increment, today: int, now: int) -> m.PointMutation:
    bucket = q.bucket_or(today)
    key = q.idempotency_key
    if key is UNSET:  # the hot path: no keyword dict to build
        return cls(series=q.name, key=q.key, bucket=bucket, value=q.amount)
    created = q.idempotency_created_at_unix
    fingerprint = q.fingerprint
    return cls(
        series=q.name,
        key=q.key,
        bucket=bucket,
        value=q.amount,
        idempotency_key=str(key),
        fingerprint=None if fingerprint is UNSET else str(fingerprint),
        idempotency_created_at_unix=now if created is UNSET else created,
    )


def _keyed(request: r.Request, now: int) -> dict[str, Any]:
    """Idempotency fields of an eligible write, as its WAL entry carries them."""
    key = request.key_text
    if key is None:
        return {}
    created = r.opt(request.idempotency_created_at_unix)
    fingerprint = r.opt(request.fingerprint)
    return {
        "idempotency_key": key,
        "fingerprint": None if fingerprint is None else str(fingerprint),
        "idempotency_created_at_unix": now if created is None else created,
    }


def _known_response(mutation: m.Mutation) -> object:
    """The answer a write gave, when it follows from the write alone."""
    if isinstance(mutation, m.Increment | m.Decrement):
        return mutation.value
    if isinstance(mutation, m.BatchAdd):
        return {"applied": len(mutation.items), "total": sum(i[2] for i in mutation.items)}
    if isinstance(mutation, m.BatchSet):
        return {"applied": len(mutation.items)}
    if isinstance(mutation, m.Reset | m.SeriesReset):
        return "OK"
    if isinstance(mutation, m.DeleteRange | m.SeriesDeleteRange):
        return True
    return None


def _as_batch_add(chunk: m.IngestChunk) -> m.BatchAdd:
    return m.BatchAdd(series=chunk.series, granularity="day", items=chunk.items)


_json: Final = msgspec.json.Encoder().encode

_NOT_STORE: Final = (
    m.IngestBegin,
    m.IngestChunk,
    m.IngestCommit,
    m.IngestAbort,
    m.IdempotencyPrune,
)
#: mutations that only the Store checks and applies
_STORE_MUTATIONS: Final = frozenset(typing.get_args(m.AnyMutation)) - frozenset(_NOT_STORE)
#: ... and that no counter other than the command count follows
_PLAIN_STORE_MUTATIONS: Final = _STORE_MUTATIONS - {
    m.BatchAdd,
    m.BatchSet,
    m.BatchReset,
    m.BatchDeleteRange,
    m.DeleteBefore,
    m.CompactSeries,
    m.CompactAll,
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


_NORMALIZE_BY_CLASS: Final = by_class(_NORMALIZE)
_READS_BY_CLASS: Final = by_class(_READS)
#: Request classes (aliases included) the engine answers by itself; the others need the shell.
ENGINE_READS: Final = frozenset(_READS_BY_CLASS)
#: reads that walk a whole series and so run under the query-time budget (budget.tick)
SCANNING_READS: Final = frozenset(
    by_class(dict.fromkeys([r.TreeInfo, r.TreeSummary, r.TreeTop, r.TreeSeries]))
)
#: Request classes (aliases included) that change the store and go through the WAL.
WRITES: Final = frozenset(_NORMALIZE_BY_CLASS)
