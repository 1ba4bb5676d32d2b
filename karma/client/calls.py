"""The Call of every op but `limit.*` (that is `karma.client.limit_calls`): one builder per
client method, from the counters to the domain verbs.

Everything protocol-shaped — field names, day handling, result types — lives here once; what a
Call is, and when it may be resent, is `karma.client.call`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import msgspec

from karma.client.call import Call

T = TypeVar("T")
Day = dt.date | int
Item = tuple[int, Day, int]


class TreeInfo(msgspec.Struct, frozen=True):
    tree: str
    key_count: int
    bucket_count: int
    total: int
    branches: int


class KeyTotal(msgspec.Struct, frozen=True):
    key: int
    total: int


class KeysPage(msgspec.Struct, frozen=True):
    tree: str
    limit: int
    cursor: int | None
    next_cursor: int | None
    keys: list[KeyTotal]


class TopItem(msgspec.Struct, frozen=True):
    key: int
    value: int


class Health(msgspec.Struct, frozen=True):
    status: str  # "ok", or "unhealthy" while the data directory refuses writes
    uptime_seconds: int
    role: str
    wal_enabled: bool
    #: why it is unhealthy (e.g. "WAL write failed: No space left on device; …")
    storage_error: str | None = None


def day(value: Day) -> int:
    """A `datetime.date` or a YYYYMMDD int, as the protocol's day bucket."""
    if isinstance(value, dt.date):
        return value.year * 10000 + value.month * 100 + value.day
    return int(value)


def day_range(first: Day, last: Day) -> dict[str, int]:
    return {"from": day(first), "to": day(last)}


def today() -> int:
    return day(dt.datetime.now(dt.UTC).date())


def _fields(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _as(kind: type[T]) -> Callable[[Any], T]:
    return lambda raw: msgspec.convert(raw, kind)


def _identity(raw: Any) -> Any:
    return raw


def _int(raw: Any) -> int:
    return int(raw)


def _sums(raw: Any) -> dict[int, int]:
    return {int(item["key"]): int(item["value"]) for item in raw}


def _points(raw: Any) -> dict[int, int]:
    return {int(bucket): int(value) for bucket, value in raw.items()}


def _items(items: Iterable[Item]) -> list[list[int]]:
    return [[int(key), day(bucket), int(value)] for key, bucket, value in items]


# --- counters -----------------------------------------------------------------------------------
def increment(
    series: str,
    key: int,
    value: int = 1,
    *,
    bucket: Day | None = None,
    idempotency_key: str | None = None,
) -> Call[int]:
    return Call(
        "counter.increment",
        _fields(
            series=series,
            key=key,
            value=value,
            bucket=None if bucket is None else day(bucket),
            idempotency_key=idempotency_key,
        ),
        _int,
    )


def decrement(
    series: str,
    key: int,
    value: int = 1,
    *,
    bucket: Day | None = None,
    idempotency_key: str | None = None,
) -> Call[int]:
    return Call(
        "counter.decrement",
        _fields(
            series=series,
            key=key,
            value=value,
            bucket=None if bucket is None else day(bucket),
            idempotency_key=idempotency_key,
        ),
        _int,
    )


def sum(series: str, key: int, *, since: Day | None = None, until: Day | None = None) -> Call[int]:
    fields = _fields(series=series, key=key)
    if since is not None:
        fields["range"] = day_range(since, today() if until is None else until)
    return Call("counter.sum", fields, _int)


def series(series: str, key: int, since: Day, until: Day) -> Call[dict[int, int]]:
    return Call(
        "counter.series", {"series": series, "key": key, "range": day_range(since, until)}, _points
    )


def batch_sum(
    series: str, keys: Sequence[int], *, since: Day | None = None, until: Day | None = None
) -> Call[dict[int, int]]:
    fields: dict[str, Any] = {"series": series, "keys": list(keys)}
    if since is not None:
        fields["range"] = day_range(since, today() if until is None else until)
    return Call("counter.batch_sum", fields, _sums)


def multi_sum(
    items: Sequence[tuple[str, int]], *, since: Day | None = None, until: Day | None = None
) -> Call[dict[tuple[str, int], int]]:
    fields: dict[str, Any] = {"items": [{"series": s, "key": k} for s, k in items]}
    if since is not None:
        fields["range"] = day_range(since, today() if until is None else until)
    return Call(
        "counter.multi_sum",
        fields,
        lambda raw: {(i["series"], int(i["key"])): int(i["value"]) for i in raw},
    )


def batch_add(
    series: str, items: Iterable[Item], *, idempotency_key: str | None = None
) -> Call[dict[str, int]]:
    return Call(
        "series.batch_add",
        _fields(series=series, items=_items(items), idempotency_key=idempotency_key),
        _identity,
    )


def batch_set(
    series: str, items: Iterable[Item], *, idempotency_key: str | None = None
) -> Call[dict[str, int]]:
    return Call(
        "series.batch_set",
        _fields(series=series, items=_items(items), idempotency_key=idempotency_key),
        _identity,
    )


def reset(series: str, key: int | None = None, *, idempotency_key: str | None = None) -> Call[Any]:
    op = "tree.reset" if key is None else "counter.reset"
    return Call(op, _fields(series=series, key=key, idempotency_key=idempotency_key), _identity)


def batch_reset(
    series: str, keys: Sequence[int], *, idempotency_key: str | None = None
) -> Call[dict[str, int]]:
    return Call(
        "counter.batch_reset",
        _fields(series=series, keys=list(keys), idempotency_key=idempotency_key),
        _identity,
    )


def delete_range(
    series: str,
    since: Day,
    until: Day,
    *,
    key: int | None = None,
    idempotency_key: str | None = None,
) -> Call[Any]:
    op = "tree.delete_range" if key is None else "counter.delete_range"
    return Call(
        op,
        _fields(
            series=series, key=key, range=day_range(since, until), idempotency_key=idempotency_key
        ),
        _identity,
    )


def batch_delete_range(
    series: str, keys: Sequence[int], since: Day, until: Day, *, idempotency_key: str | None = None
) -> Call[dict[str, int]]:
    return Call(
        "counter.batch_delete_range",
        _fields(
            series=series,
            keys=list(keys),
            range=day_range(since, until),
            idempotency_key=idempotency_key,
        ),
        _identity,
    )


# --- series ---------------------------------------------------------------------------------------
def tree_create(series: str) -> Call[Any]:
    return Call("tree.create", {"series": series}, _identity)


def tree_drop(series: str) -> Call[Any]:
    return Call("tree.drop", {"series": series}, _identity)


def tree_list() -> Call[list[str]]:
    return Call("tree.list", {}, _as(list[str]))


def tree_info(series: str) -> Call[TreeInfo]:
    return Call("tree.info", {"series": series}, _as(TreeInfo))


def tree_keys(series: str, limit: int = 100, cursor: int | None = None) -> Call[KeysPage]:
    return Call("tree.keys", _fields(series=series, limit=limit, cursor=cursor), _as(KeysPage))


def tree_top(
    series: str, limit: int = 50, *, since: Day | None = None, until: Day | None = None
) -> Call[list[TopItem]]:
    fields = _fields(series=series, limit=limit)
    if since is not None:
        fields["range"] = day_range(since, today() if until is None else until)
    return Call("tree.top", fields, lambda raw: msgspec.convert(raw["items"], list[TopItem]))


def tree_summary(series: str, *, since: Day | None = None, until: Day | None = None) -> Call[Any]:
    fields: dict[str, Any] = {"series": series}
    if since is not None:
        fields["range"] = day_range(since, today() if until is None else until)
    return Call("tree.summary", fields, _identity)


def tree_series(series: str, since: Day, until: Day) -> Call[dict[int, dict[int, int]]]:
    return Call(
        "tree.series",
        {"series": series, "range": day_range(since, until)},
        lambda raw: {int(k): _points(v) for k, v in raw.items()},
    )


def delete_before(series: str, before: Day) -> Call[Any]:
    return Call("series.delete_before", {"series": series, "before": day(before)}, _identity)


def compact(series: str | None = None) -> Call[Any]:
    if series is None:
        return Call("system.compact", {}, _identity)
    return Call("series.compact", {"series": series}, _identity)


# --- ingest, snapshots, system -----------------------------------------------------------------
def ingest_begin(stream_id: str, mode: str = "add") -> Call[dict[str, Any]]:
    return Call("ingest.begin", {"stream_id": stream_id, "mode": mode}, _identity)


def ingest_chunk(
    stream_id: str,
    series: str,
    seq: int | None = None,
    items: Iterable[Item] | None = None,
    *,
    chunk_seq: int | None = None,
) -> Call[dict[str, Any]]:
    """Chunk number `seq` (from 1) of the stream: `[(key, day, value), ...]` for `series`.

    `chunk_seq=` (the protocol's field name) is accepted in place of `seq`: it was this
    function's parameter name before the documented `seq`.
    """
    if (seq is None) == (chunk_seq is None):
        raise TypeError("ingest_chunk() needs the chunk number as seq or chunk_seq, not both")
    if items is None:
        raise TypeError("ingest_chunk() missing its items")
    return Call(
        "ingest.chunk",
        {
            "stream_id": stream_id,
            "series": series,
            "chunk_seq": seq if chunk_seq is None else chunk_seq,
            "items": _items(items),
        },
        _identity,
    )


def ingest_commit(stream_id: str) -> Call[dict[str, Any]]:
    return Call("ingest.commit", {"stream_id": stream_id}, _identity)


def ingest_abort(stream_id: str) -> Call[dict[str, Any]]:
    return Call("ingest.abort", {"stream_id": stream_id}, _identity)


def simple(op: str, **fields: Any) -> Call[Any]:
    return Call(op, _fields(**fields), _identity)


def request(op: str, **fields: Any) -> Call[Any]:
    """Any op, raw: its `response` value (errors are raised). Fields that are None are left out."""
    return simple(op, **fields)


def health() -> Call[Health]:
    return Call("system.health", {}, _as(Health))


def ping() -> Call[Any]:
    return simple("system.ping")


def stats() -> Call[Any]:
    return simple("system.stats")


def metrics() -> Call[Any]:
    return simple("system.metrics")


def topology() -> Call[Any]:
    """`cluster.topology`: this node's role, the HA leader and term, the members (docs/ha.md)."""
    return simple("cluster.topology")


def snapshot_create_all() -> Call[Any]:
    return simple("snapshot.create_all")


def snapshot_list() -> Call[Any]:
    return simple("snapshot.list")


def snapshot_info() -> Call[Any]:
    return simple("snapshot.info")


def snapshot_verify() -> Call[Any]:
    return simple("snapshot.verify")


# --- the domain: limits and subjects ------------------------------------------------------------
def record_usage(
    limit: str,
    subject: int,
    amount: int = 1,
    *,
    day: Day | None = None,
    idempotency_key: str | None = None,
) -> Call[int]:
    """Count `amount` of `limit` used by `subject` on `day` (default: today, UTC)."""
    return increment(limit, subject, amount, bucket=day, idempotency_key=idempotency_key)


def usage(
    limit: str, subject: int, since: Day | None = None, until: Day | None = None
) -> Call[int]:
    """How much of `limit` `subject` used: in total, or from `since` to `until` (today).

    A limit nothing was recorded for yet has been used 0 times (not an error).
    """
    return attrs.evolve(sum(limit, subject, since=since, until=until), if_missing=lambda: 0)


def usages(
    limit: str, subjects: Sequence[int], since: Day | None = None, until: Day | None = None
) -> Call[dict[int, int]]:
    chosen = list(subjects)
    return attrs.evolve(
        batch_sum(limit, chosen, since=since, until=until),
        if_missing=lambda: dict.fromkeys(chosen, 0),
    )
