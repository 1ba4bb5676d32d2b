"""`limit.*` calls (docs/limits.md): decide in one round trip, with typed answers.

Every consume carries an idempotency key and every reservation an id; both are generated when
the caller gives none, so a retry after a lost answer replays the first decision instead of
charging twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from karma.client.call import Call

Window = dict[str, Any]


class LimitWindow(msgspec.Struct, frozen=True, rename={"first": "from", "last": "to"}):
    first: int
    last: int


class LimitItem(msgspec.Struct, frozen=True):
    """One limit's view: `used` counts committed usage, `held` open reservations."""

    max: int
    used: int
    held: int
    remaining: int
    value: int
    window: LimitWindow
    reset_at_unix: int
    retry_after_s: int | None
    allowed: bool = True


class LimitAnswer(msgspec.Struct, frozen=True):
    """A decision. `items` holds one entry per limit (one, for the single form)."""

    allowed: bool
    items: list[LimitItem]
    denied: list[int] = []
    retry_after_s: int | None = None
    id: str | None = None
    status: str | None = None
    expires_at_unix_ms: int | None = None

    @property
    def remaining(self) -> int:
        """The smallest remaining amount over the limits."""
        return min(item.remaining for item in self.items)


class Settlement(msgspec.Struct, frozen=True):
    id: str
    status: str
    released: int = 0
    value: int = 0
    over_reserved: int = 0


def _charge(
    series: str | None, key: int | None, value: int, maximum: int | None, window: Window | None
) -> dict[str, Any]:
    if series is None or key is None or maximum is None or window is None:
        raise TypeError("give series, key, max and window, or items=[...]")
    return {"series": series, "key": key, "value": value, "max": maximum, "window": window}


def _answer(raw: Any) -> LimitAnswer:
    """The single form's flat answer and the items form's, as one shape."""
    if "items" not in raw:
        item_fields = {k: v for k, v in raw.items() if k in LimitItem.__struct_fields__}
        raw = {**raw, "items": [item_fields], "denied": [] if raw["allowed"] else [0]}
        raw = {k: v for k, v in raw.items() if k in LimitAnswer.__struct_fields__}
    return msgspec.convert(raw, LimitAnswer)


def _fields(
    series: str | None,
    key: int | None,
    value: int,
    maximum: int | None,
    window: Window | None,
    items: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    if items is not None:
        return {"items": items}
    return _charge(series, key, value, maximum, window)


def consume(
    series: str | None = None,
    key: int | None = None,
    value: int = 1,
    *,
    max: int | None = None,
    window: Window | None = None,
    items: list[dict[str, Any]] | None = None,
    idempotency_key: str | None = None,
) -> Call[LimitAnswer]:
    """Charge `value` if it fits under `max` in `window`, all or nothing over `items`."""
    fields = _fields(series, key, value, max, window, items)
    fields["idempotency_key"] = idempotency_key or uuid.uuid4().hex
    return Call("limit.consume", fields, _answer)


def check(
    series: str | None = None,
    key: int | None = None,
    value: int = 1,
    *,
    max: int | None = None,
    window: Window | None = None,
    items: list[dict[str, Any]] | None = None,
) -> Call[LimitAnswer]:
    """The decision a consume would get, changing nothing (value 0: just the numbers)."""
    return Call("limit.check", _fields(series, key, value, max, window, items), _answer)


def reserve(
    series: str | None = None,
    key: int | None = None,
    value: int = 1,
    *,
    max: int | None = None,
    window: Window | None = None,
    items: list[dict[str, Any]] | None = None,
    ttl_s: int = 300,
    id: str | None = None,
) -> Call[LimitAnswer]:
    """Hold `value` (counted by every decision) until committed, voided or `ttl_s` passes."""
    fields = _fields(series, key, value, max, window, items)
    fields["id"] = id or uuid.uuid4().hex
    fields["ttl_s"] = ttl_s
    return Call("limit.reserve", fields, _answer)


def commit(
    id: str,
    value: int | None = None,
    *,
    values: list[int] | None = None,
) -> Call[Settlement]:
    """Record the actual amount (default: what was held); less releases the rest."""
    fields: dict[str, Any] = {"id": id}
    if value is not None:
        fields["value"] = value
    if values is not None:
        fields["values"] = values
    return Call("limit.commit", fields, lambda raw: msgspec.convert(raw, Settlement))


def void(id: str) -> Call[Settlement]:
    """Release a reservation without recording usage."""
    return Call("limit.void", {"id": id}, lambda raw: msgspec.convert(raw, Settlement))
