"""The `limit.*` ops (spec/limits.md): requests clients send, and the WAL effect entries.

A charge is `series, key, value, max, window` — given at the top level, or as `items`. The
window is validated when the request is decided (it needs today's date: core/windows.py), so
`check()` here covers only what does not depend on the clock.

`limit.apply`, `limit.hold` and `limit.settle` are WAL entries, not client commands: they record
effects (what was added or held) so that replay and replicas never decide a limit again. They
decode like requests so that WAL replay and replication read them as every other entry; the
gate refuses them from clients (`OpSpec.internal`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64
from karma.protocol.requests.base import Request, opt

#: `items` per request: enough for a plan's limits over a few series, small enough to decide
#: in one pass without a budget.
MAX_ITEMS = 100
#: A reservation id is the client's (persisted before it sends the reserve, as TigerBeetle
#: advises), so it is bounded like an idempotency key.
MAX_ID_BYTES = 128
TTL_DEFAULT_S = 300
TTL_MAX_S = 604_800


class LimitItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    series: str | UnsetType = UNSET
    tree: str | UnsetType = UNSET
    key: U64 | UnsetType = UNSET
    value: U64 | UnsetType = UNSET
    max: U64 | UnsetType = UNSET
    window: Any = UNSET
    bucket: Any = UNSET
    date: Any = UNSET


class ChargeRequest(Request, frozen=True, kw_only=True):
    """The single form's fields, or `items`; consume, check and reserve share them."""

    series: str | UnsetType = UNSET
    tree: str | UnsetType = UNSET
    key: U64 | UnsetType = UNSET
    value: U64 | UnsetType = UNSET
    max: U64 | UnsetType = UNSET
    window: Any = UNSET
    bucket: Any = UNSET
    date: Any = UNSET
    items: list[LimitItem] | UnsetType = UNSET

    #: a check may ask "would 0 fit" (a peek); a consume or reserve must charge something
    ZERO_OK = False

    def charges(self) -> list[LimitItem]:
        """The request's charges in order: its items, or its top-level fields as one."""
        items = opt(self.items)
        if items is not None:
            return items
        return [
            LimitItem(
                series=self.series,
                tree=self.tree,
                key=self.key,
                value=self.value,
                max=self.max,
                window=self.window,
                bucket=self.bucket,
                date=self.date,
            )
        ]

    def check(self) -> None:
        items = opt(self.items)
        op = str(self.__struct_config__.tag)
        if items is not None:
            single = (self.series, self.tree, self.key, self.value, self.max, self.window)
            if any(v is not UNSET for v in single):
                raise KarmaError.validation(
                    "Field items cannot be combined with single-item fields"
                )
            if not 1 <= len(items) <= MAX_ITEMS:
                raise KarmaError.validation(f"Field items must hold 1 to {MAX_ITEMS} items")
        for number, item in enumerate(self.charges()):
            where = "" if items is None else f"items[{number}]."
            _check_item(item, where, op, zero_ok=self.ZERO_OK)


def _check_item(item: LimitItem, where: str, op: str, *, zero_ok: bool) -> None:
    if item.bucket is not UNSET or item.date is not UNSET:
        field = "bucket" if item.bucket is not UNSET else "date"
        raise KarmaError.validation(f"Field {where}{field} is not supported by {op}")
    name = opt(item.tree) if item.tree is not UNSET else opt(item.series)
    if name is None:
        raise KarmaError.required(f"{where}series")
    f.check_series_name(f"{where}series", name)
    if isinstance(item.key, UnsetType):
        raise KarmaError.required(f"{where}key")
    f.check_u64(f"{where}key", item.key)
    if isinstance(item.max, UnsetType):
        raise KarmaError.required(f"{where}max")
    f.check_u64(f"{where}max", item.max)
    if item.window is UNSET:
        raise KarmaError.required(f"{where}window")
    if not isinstance(item.value, UnsetType):
        f.check_u64(f"{where}value", item.value)
        if item.value == 0 and not zero_ok:
            raise KarmaError.validation(f"Field {where}value must be greater than 0")


def item_name(item: LimitItem) -> str:
    name = opt(item.tree) if item.tree is not UNSET else opt(item.series)
    assert name is not None  # checked
    return name


def item_value(item: LimitItem) -> int:
    value = opt(item.value)
    return 1 if value is None else value


class LimitConsume(ChargeRequest, tag="limit.consume", frozen=True, kw_only=True):
    pass


class LimitCheck(ChargeRequest, tag="limit.check", frozen=True, kw_only=True):
    ZERO_OK = True


class LimitReserve(ChargeRequest, tag="limit.reserve", frozen=True, kw_only=True):
    id: str | UnsetType = UNSET
    ttl_s: int | UnsetType = UNSET

    def check(self) -> None:
        _check_id(self.id)
        ttl = opt(self.ttl_s)
        if ttl is not None and not 1 <= ttl <= TTL_MAX_S:
            raise KarmaError.validation(f"Field ttl_s must be from 1 to {TTL_MAX_S}")
        super().check()

    @property
    def ttl(self) -> int:
        ttl = opt(self.ttl_s)
        return TTL_DEFAULT_S if ttl is None else ttl


def _check_id(value: str | UnsetType) -> None:
    if isinstance(value, UnsetType):
        raise KarmaError.required("id")
    if not value or len(value.encode()) > MAX_ID_BYTES:
        raise KarmaError.validation(f"Field id must be 1 to {MAX_ID_BYTES} bytes")


class LimitCommit(Request, tag="limit.commit", frozen=True, kw_only=True):
    id: str | UnsetType = UNSET
    value: U64 | UnsetType = UNSET
    values: list[U64] | UnsetType = UNSET

    def check(self) -> None:
        _check_id(self.id)
        if self.value is not UNSET and self.values is not UNSET:
            raise KarmaError.validation("Field value cannot be combined with values")
        for amount in opt(self.values) or ([] if self.value is UNSET else [self.value]):
            f.check_u64("value", amount)


class LimitVoid(Request, tag="limit.void", frozen=True, kw_only=True):
    id: str | UnsetType = UNSET

    def check(self) -> None:
        _check_id(self.id)


class LimitReservation(Request, tag="limit.reservation", frozen=True, kw_only=True):
    id: str | UnsetType = UNSET

    def check(self) -> None:
        _check_id(self.id)


class LimitStatus(Request, tag="limit.status", frozen=True, kw_only=True):
    pass


class LimitSnapshotFetchChunk(Request, tag="limit.snapshot_fetch_chunk", frozen=True, kw_only=True):
    offset: U64 | UnsetType = UNSET
    limit: int | UnsetType = UNSET


# --- WAL effect entries (internal: refused from clients) --------------------------------------
#: [series, key, bucket, amount]
Add = tuple[str, int, int, int]


# `idempotency_key`, `fingerprint` and `idempotency_created_at_unix` are Request's own fields
class LimitApply(Request, tag="limit.apply", frozen=True, kw_only=True):
    add: list[Add]
    answer: Any = None


class LimitHold(Request, tag="limit.hold", frozen=True, kw_only=True):
    id: str
    items: list[Add]
    expires_at_unix_ms: int
    created_at_unix: int
    answer: Any = None


class LimitSettle(Request, tag="limit.settle", frozen=True, kw_only=True):
    id: str
    outcome: str
    add: list[Add]
    settled_at_unix: int
    answer: Any = None


AnyLimitRequest = (
    LimitConsume
    | LimitCheck
    | LimitReserve
    | LimitCommit
    | LimitVoid
    | LimitReservation
    | LimitStatus
    | LimitSnapshotFetchChunk
    | LimitApply
    | LimitHold
    | LimitSettle
)
