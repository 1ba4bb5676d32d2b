"""Canonical mutations: the WAL entry schema, field for field in karma 1.0's order.

A request is the tolerant wire form (aliases, `tree`, `date`, a missing bucket); a mutation is
what happened: canonical op name, `series` always set, the bucket resolved to a day, no token.
Encoded, a mutation is exactly the `entry` object karma 1.0 writes in `karma.wal`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from karma.core.fingerprint import Canon
from karma.protocol.fields import DayRange, Item


class Mutation(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """The payload of a WAL entry; `v` and `op` are written in front of it by `encode`."""

    OP: ClassVar[str] = ""


class Idempotent(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    """A mutation that may carry an idempotency key (karma 1.0's eligible commands).

    The key fields are declared by each subclass, after its own fields: karma 1.0 writes them
    last in the WAL entry, and msgspec writes base-class fields first.
    """

    def idem_key(self) -> str | None:
        value = getattr(self, "idempotency_key", None)
        return value if isinstance(value, str) else None

    def idem_created(self) -> int:
        value = getattr(self, "idempotency_created_at_unix", None)
        return value if isinstance(value, int) else 0

    def canon(self) -> Canon:
        raise NotImplementedError


class SeriesMutation(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    series: str


class CreateSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.create"


class DropSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.drop"


class PointMutation(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    """One key, one day, one amount: increments and decrements."""

    COMMAND: ClassVar[str] = ""
    key: int
    bucket: int
    value: int
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        # one f-string, not five builder calls: every keyed increment is hashed through here
        # (the same text as Canon(...).text("series", ...).unsigned("key", ...)..., tested)
        command, series = self.COMMAND, self.series
        return Canon.of(
            command,
            f"command:s:{len(command)}:{command}\nseries:s:{len(series.encode())}:{series}\n"
            f"key:u:{self.key}\nbucket:u:{self.bucket}\nvalue:u:{self.value}\n",
        )


class Increment(PointMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.increment"
    COMMAND: ClassVar[str] = "increment"


class Decrement(PointMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.decrement"
    COMMAND: ClassVar[str] = "decrement"


class BatchAdd(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.batch_add"
    granularity: str
    items: list[Item]
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return Canon("batch_add").text("series", self.series).items(self.items)


class BatchSet(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.batch_set"
    granularity: str
    items: list[Item]
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return Canon("batch_set").text("series", self.series).items(self.items)


class BatchReset(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.batch_reset"
    keys: list[int]
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return Canon("batch_reset").text("series", self.series).keys(self.keys)


class BatchDeleteRange(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.batch_delete_range"
    keys: list[int]
    range: DayRange
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return (
            Canon("batch_delete_range")
            .text("series", self.series)
            .keys(self.keys)
            .unsigned("range_from", self.range.first)
            .unsigned("range_to", self.range.last)
        )


class DeleteRange(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.delete_range"
    key: int
    range: DayRange
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return (
            Canon("delete")
            .text("series", self.series)
            .unsigned("key", self.key)
            .unsigned("range_from", self.range.first)
            .unsigned("range_to", self.range.last)
        )


class SeriesDeleteRange(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.delete_range"
    range: DayRange
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return (
            Canon("delete")
            .text("series", self.series)
            .unsigned("key", None)
            .unsigned("range_from", self.range.first)
            .unsigned("range_to", self.range.last)
        )


class Reset(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.reset"
    key: int
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return Canon("reset").text("series", self.series).unsigned("key", self.key)


class SeriesReset(SeriesMutation, Idempotent, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.reset"
    idempotency_key: str | None = None
    fingerprint: str | None = None
    idempotency_created_at_unix: int | None = None

    def canon(self) -> Canon:
        return Canon("reset").text("series", self.series).unsigned("key", None)


class DeleteBefore(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.delete_before"
    before: int


class CompactSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.compact"


class CompactAll(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "system.compact"


class IngestBegin(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "ingest.begin"
    stream_id: str
    mode: str
    granularity: str | None = None

    def canon(self) -> Canon:
        return (
            Canon("ingest_begin")
            .text("stream_id", self.stream_id)
            .text("mode", self.mode)
            .text("granularity", self.granularity)
        )


class IngestChunk(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "ingest.chunk"
    stream_id: str
    series: str
    chunk_seq: int
    items: list[Item]

    def canon(self) -> Canon:
        return (
            Canon("ingest_chunk")
            .text("stream_id", self.stream_id)
            .text("series", self.series)
            .unsigned("chunk_seq", self.chunk_seq)
            .items(self.items)
        )


class IngestCommit(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "ingest.commit"
    stream_id: str
    # not written by karma 1.0 (which stamps the replay time); it ignores unknown fields
    committed_at_unix: int | None = None


class IngestAbort(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "ingest.abort"
    stream_id: str


class IdempotencyPrune(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "idempotency.prune"
    before: int
    limit: int | None = None


# --- limit effects (spec/limits.md §6): what a decision did, replayed without deciding again ------
#: [series, key, bucket, amount]
Add = tuple[str, int, int, int]


class LimitApply(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    """An allowed consume's adds; a denied keyed consume has none (its answer is remembered)."""

    OP: ClassVar[str] = "limit.apply"
    add: list[Add]
    idempotency_key: str | None = None
    idempotency_created_at_unix: int | None = None
    fingerprint: str | None = None
    answer: Any = None


class LimitHold(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    """A reservation: held amounts (none when it was denied: the id is remembered)."""

    OP: ClassVar[str] = "limit.hold"
    id: str
    items: list[Add]
    expires_at_unix_ms: int
    created_at_unix: int
    fingerprint: str | None = None
    answer: Any = None


class LimitSettle(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    """A reservation's end: committed (adds), committed_late, voided or expired."""

    OP: ClassVar[str] = "limit.settle"
    id: str
    outcome: str
    add: list[Add]
    settled_at_unix: int
    fingerprint: str | None = None
    answer: Any = None


LIMIT_EFFECTS: Final = (LimitApply, LimitHold, LimitSettle)

AnyMutation = (
    CreateSeries
    | DropSeries
    | Increment
    | Decrement
    | BatchAdd
    | BatchSet
    | BatchReset
    | BatchDeleteRange
    | DeleteRange
    | SeriesDeleteRange
    | Reset
    | SeriesReset
    | DeleteBefore
    | CompactSeries
    | CompactAll
)

_encoder = msgspec.json.Encoder()


def encode(mutation: Mutation) -> bytes:
    """The entry object exactly as karma 1.0 writes it: `{"v":2,"op":…,…fields}`."""
    payload = _encoder.encode(mutation)
    head = b'{"v":2,"op":"' + mutation.OP.encode() + b'"'
    return head + b"}" if payload == b"{}" else head + b"," + payload[1:]
