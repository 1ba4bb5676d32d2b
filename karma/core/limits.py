"""Limits (spec/limits.md): decide a charge in one step, hold reservations, apply effects.

Pure and synchronous, like the rest of `core/`. The node decides a request and submits the
effect (a `limit.*` mutation) in the same synchronous step, so racing requests are decided in
arrival order: an allowed effect counts as *pending* from its decision until its WAL batch is
applied (or fails), and every later decision sees it. Memory changes only when the effect is
applied, after the WAL write, like every other write.

Holds are reserved amounts on (series, key, the bucket of the reserve day). Decisions count
the holds that are not overdue; `counter.sum` and the `.tree` files never see them. Expiry is a
WAL effect written by the master (`limit.settle` `expired`), so every node agrees on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import attrs

from karma.core import mutations as m
from karma.core import windows as w
from karma.core.store import Store
from karma.errors import ErrorCode, KarmaError

Pair = tuple[str, int]
#: Outcomes of a settled reservation; "denied" is a reserve that held nothing.
SETTLED_OUTCOMES: Final = ("committed", "committed_late", "voided", "expired", "denied")


@attrs.frozen
class Charge:
    series: str
    key: int
    value: int
    maximum: int
    window: w.Window
    period: w.Period


@attrs.define(eq=False, slots=True)
class Hold:
    id: str
    items: list[m.Add]
    expires_at_ms: int
    created_at: int
    fingerprint: str
    answer: Any

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "items": [list(item) for item in self.items],
            "expires_at_unix_ms": self.expires_at_ms,
            "created_at_unix": self.created_at,
            "fingerprint": self.fingerprint,
            "answer": self.answer,
        }


@attrs.define(eq=False, slots=True)
class Settled:
    """A reservation that is over; kept so that retries replay and conflicts are caught."""

    id: str
    outcome: str
    items: list[m.Add]
    reserve_fingerprint: str
    reserve_answer: Any
    settle_fingerprint: str | None
    answer: Any
    at: int

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "outcome": self.outcome,
            "items": [list(item) for item in self.items],
            "reserve_fingerprint": self.reserve_fingerprint,
            "reserve_answer": self.reserve_answer,
            "settle_fingerprint": self.settle_fingerprint,
            "answer": self.answer,
            "at": self.at,
        }


@attrs.define(eq=False, slots=True)
class ItemDecision:
    charge: Charge
    used: int
    held: int
    allowed: bool
    retry_after_s: int | None


@attrs.define(eq=False)
class Limits:
    max_open: int = 1_000_000
    holds: dict[str, Hold] = attrs.field(factory=dict)
    settled: dict[str, Settled] = attrs.field(factory=dict)
    #: (series, key) → hold id → [(bucket, amount)]: what a decision sums without a scan
    _held: dict[Pair, dict[str, list[tuple[int, int]]]] = attrs.field(factory=dict)
    #: decided but not yet applied: id(mutation) → its adds and its holds
    _pending: dict[int, tuple[list[m.Add], list[m.Add]]] = attrs.field(factory=dict)
    _pending_adds: dict[Pair, list[tuple[int, int, int]]] = attrs.field(factory=dict)
    _pending_holds: dict[Pair, list[tuple[int, int, int]]] = attrs.field(factory=dict)
    #: hold id → the adds of its commit, decided but not yet applied (see `_held_in`)
    _settling: dict[str, list[m.Add]] = attrs.field(factory=dict)
    #: limit.* effects applied since start (live, replayed or replicated)
    entries: int = 0

    # --- deciding ---------------------------------------------------------------------------
    def decide(
        self, store: Store, charges: list[Charge], today: int, now_unix: int, now_ms: int
    ) -> list[ItemDecision]:
        """Each charge against committed usage, pending effects and live holds."""
        decisions = []
        for charge in charges:
            used = self._used(store, charge)
            held = self._held_in(charge, now_ms)
            allowed = used + held + charge.value <= charge.maximum
            retry = None
            if not allowed:
                buckets = self._buckets(store, charge)
                retry = w.retry_after_s(
                    charge.window,
                    charge.period,
                    today,
                    now_unix,
                    buckets,
                    held,
                    charge.value,
                    charge.maximum,
                )
            decisions.append(ItemDecision(charge, used, held, allowed, retry))
        return decisions

    def _used(self, store: Store, charge: Charge) -> int:
        series = store.series.get(charge.series)
        counter = None if series is None else series.get(charge.key)
        used = 0 if counter is None else counter.sum_range(charge.period.first, charge.period.last)
        for _token, bucket, amount in self._pending_adds.get((charge.series, charge.key), ()):
            if charge.period.first <= bucket <= charge.period.last:
                used += amount
        return used

    def _buckets(self, store: Store, charge: Charge) -> dict[int, int]:
        series = store.series.get(charge.series)
        counter = None if series is None else series.get(charge.key)
        points = {} if counter is None else counter.points(charge.period.first, charge.period.last)
        for _token, bucket, amount in self._pending_adds.get((charge.series, charge.key), ()):
            if charge.period.first <= bucket <= charge.period.last:
                points[bucket] = points.get(bucket, 0) + amount
        return points

    def _held_in(self, charge: Charge, now_ms: int) -> int:
        pair = (charge.series, charge.key)
        first, last = charge.period.first, charge.period.last
        held = 0
        for hold_id, parts in self._held.get(pair, {}).items():
            if self.holds[hold_id].expires_at_ms <= now_ms:
                continue  # overdue: every node ignores it, before the master writes the expiry
            amount = sum(amount for bucket, amount in parts if first <= bucket <= last)
            settling = self._settling.get(hold_id)
            if settling is not None:
                # Its commit is on its way to disk, and that pending add (counted in `used`)
                # replaces the hold: counting both would make used + held pass max, and deny
                # requests (for good, when keyed) that fit whether the commit lands or not.
                # The hold still counts for what the commit does not add, so the sum is
                # max(hold, add): enough for either outcome of the write.
                added = sum(a for s, k, b, a in settling if (s, k) == pair and first <= b <= last)
                amount = max(0, amount - added)
            held += amount
        for _token, bucket, amount in self._pending_holds.get(pair, ()):
            if first <= bucket <= last:
                held += amount
        return held

    def knows(self, series: str) -> bool:
        """Holds or pending effects name `series` (a reserve does not create it in the store)."""
        return any(
            pair[0] == series
            for table in (self._held, self._pending_adds, self._pending_holds)
            for pair in table
        )

    def check_capacity(self) -> None:
        open_now = len(self.holds) + sum(1 for _, holds in self._pending.values() if holds)
        if open_now >= self.max_open:
            raise KarmaError(
                ErrorCode.CAPACITY_EXCEEDED, f"Open reservations limit {self.max_open} reached"
            )

    # --- pending effects --------------------------------------------------------------------
    def pend(self, mutation: m.Mutation) -> None:
        adds, holds = _effects(mutation)
        if not (adds or holds):
            return
        token = id(mutation)
        self._pending[token] = (adds, holds)
        if isinstance(mutation, m.LimitSettle):
            self._settling[mutation.id] = adds
        for series, key, bucket, amount in adds:
            self._pending_adds.setdefault((series, key), []).append((token, bucket, amount))
        for series, key, bucket, amount in holds:
            self._pending_holds.setdefault((series, key), []).append((token, bucket, amount))

    def unpend(self, mutation: m.Mutation) -> None:
        """The effect is applied, or its WAL write failed: it is no longer pending."""
        token = id(mutation)
        found = self._pending.pop(token, None)
        if found is None:
            return
        if isinstance(mutation, m.LimitSettle):
            self._settling.pop(mutation.id, None)
        adds, holds = found
        for table, parts in ((self._pending_adds, adds), (self._pending_holds, holds)):
            for series, key, _bucket, _amount in parts:
                rows = table.get((series, key))
                if rows is None:
                    continue
                rows[:] = [row for row in rows if row[0] != token]
                if not rows:
                    del table[(series, key)]

    # --- applying effects -------------------------------------------------------------------
    def apply_hold(self, mutation: m.LimitHold) -> None:
        self.entries += 1
        fingerprint = mutation.fingerprint or ""
        if not mutation.items:  # a denied reserve: remember the id and its answer
            self.settled[mutation.id] = Settled(
                mutation.id,
                "denied",
                [],
                fingerprint,
                mutation.answer,
                None,
                mutation.answer,
                mutation.created_at_unix,
            )
            return
        hold = Hold(
            mutation.id,
            list(mutation.items),
            mutation.expires_at_unix_ms,
            mutation.created_at_unix,
            fingerprint,
            mutation.answer,
        )
        self._add_hold(hold)

    def _add_hold(self, hold: Hold) -> None:
        self.holds[hold.id] = hold
        for series, key, bucket, amount in hold.items:
            parts = self._held.setdefault((series, key), {}).setdefault(hold.id, [])
            parts.append((bucket, amount))

    def apply_settle(self, mutation: m.LimitSettle) -> None:
        self.entries += 1
        if mutation.outcome == "expired" and mutation.id not in self.holds:
            return  # settled meanwhile (a late commit): an expiry only ends an open hold
        hold = self.holds.pop(mutation.id, None)
        previous = self.settled.get(mutation.id)
        if hold is not None:
            for series, key, _bucket, _amount in hold.items:
                by_id = self._held.get((series, key))
                if by_id is not None:
                    by_id.pop(hold.id, None)
                    if not by_id:
                        del self._held[(series, key)]
            items, fingerprint, answer = hold.items, hold.fingerprint, hold.answer
        elif previous is not None:  # an expired hold committed late
            items = previous.items
            fingerprint = previous.reserve_fingerprint
            answer = previous.reserve_answer
        else:
            items, fingerprint, answer = [], "", None
        self.settled.pop(mutation.id, None)  # re-inserted last: settlement order (prune_settled)
        self.settled[mutation.id] = Settled(
            mutation.id,
            mutation.outcome,
            items,
            fingerprint,
            answer,
            mutation.fingerprint,
            mutation.answer,
            mutation.settled_at_unix,
        )

    def overdue(self, now_ms: int) -> list[Hold]:
        return [hold for hold in self.holds.values() if hold.expires_at_ms <= now_ms]

    def next_expiry_ms(self) -> int | None:
        return min((hold.expires_at_ms for hold in self.holds.values()), default=None)

    # --- snapshot sidecar -------------------------------------------------------------------
    def documents(self) -> dict[str, Any]:
        return {
            "holds": [hold.document() for hold in self.holds.values()],
            "settled": [done.document() for done in self.settled.values()],
        }

    def load(self, document: dict[str, Any]) -> None:
        for raw in document.get("holds") or []:
            self._add_hold(
                Hold(
                    str(raw["id"]),
                    [_add(item) for item in raw.get("items") or []],
                    int(raw["expires_at_unix_ms"]),
                    int(raw.get("created_at_unix", 0)),
                    str(raw.get("fingerprint") or ""),
                    raw.get("answer"),
                )
            )
        for raw in document.get("settled") or []:
            self.settled[str(raw["id"])] = Settled(
                str(raw["id"]),
                str(raw["outcome"]),
                [_add(item) for item in raw.get("items") or []],
                str(raw.get("reserve_fingerprint") or ""),
                raw.get("reserve_answer"),
                raw.get("settle_fingerprint"),
                raw.get("answer"),
                int(raw.get("at", 0)),
            )

    def prune_settled(self, before_unix: int) -> int:
        """Forget settled ids older than `before_unix`, oldest first (they are keys too, kept
        for the idempotency retention). Settled ids are kept in settlement order, so this
        stops at the first one young enough: no scan of the rest."""
        pruned = 0
        for sid in list(self.settled):
            if self.settled[sid].at >= before_unix:
                break
            del self.settled[sid]
            pruned += 1
        return pruned


def _add(item: Iterable[Any]) -> m.Add:
    series, key, bucket, amount = item
    return (str(series), int(key), int(bucket), int(amount))


def _effects(mutation: m.Mutation) -> tuple[list[m.Add], list[m.Add]]:
    if isinstance(mutation, m.LimitApply | m.LimitSettle):
        return list(mutation.add), []
    if isinstance(mutation, m.LimitHold):
        return [], list(mutation.items)
    return [], []


def adds_of(mutation: m.Mutation) -> list[m.Add]:
    return _effects(mutation)[0]
