"""Canonical mutations: the WAL entry schema, field for field in karma 1.0's order.

A request is the tolerant wire form (aliases, `tree`, `date`, a missing bucket); a mutation is
what happened: canonical op name, `series` always set, the bucket resolved to a day, no token.
Encoded, a mutation is exactly the `entry` object karma 1.0 writes in `karma.wal`.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from karma.protocol.fields import DayRange, Item


class Mutation(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """The payload of a WAL entry; `v` and `op` are written in front of it by `encode`."""

    OP: ClassVar[str] = ""


class SeriesMutation(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    series: str


class CreateSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.create"


class DropSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.drop"


class Increment(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.increment"
    key: int
    bucket: int
    value: int
    idempotency_key: str | None = None


class Decrement(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.decrement"
    key: int
    bucket: int
    value: int
    idempotency_key: str | None = None


class BatchAdd(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.batch_add"
    granularity: str
    items: list[Item]
    idempotency_key: str | None = None


class BatchSet(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.batch_set"
    granularity: str
    items: list[Item]
    idempotency_key: str | None = None


class BatchReset(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.batch_reset"
    keys: list[int]
    idempotency_key: str | None = None


class BatchDeleteRange(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.batch_delete_range"
    keys: list[int]
    range: DayRange
    idempotency_key: str | None = None


class DeleteRange(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.delete_range"
    key: int
    range: DayRange
    idempotency_key: str | None = None


class SeriesDeleteRange(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.delete_range"
    range: DayRange
    idempotency_key: str | None = None


class Reset(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "counter.reset"
    key: int
    idempotency_key: str | None = None


class SeriesReset(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "tree.reset"
    idempotency_key: str | None = None


class DeleteBefore(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.delete_before"
    before: int


class CompactSeries(SeriesMutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "series.compact"


class CompactAll(Mutation, kw_only=True, omit_defaults=True, frozen=True):
    OP: ClassVar[str] = "system.compact"


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
