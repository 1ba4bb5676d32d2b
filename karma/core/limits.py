"""Limits (spec/limits.md): decide a charge in one step, hold reservations, apply effects.

Pure and synchronous, like the rest of `core/`. The node decides a request and submits the
effect (a `limit.*` mutation) in the same synchronous step, so racing requests are decided in
arrival order: an allowed effect counts as *pending* from its decision until its WAL batch is
applied (or fails), and every later decision sees it. Memory changes only when the effect is
applied, after the WAL write, like every other write.

Holds are reserved amounts on (series, key, the bucket of the reserve day). Decisions count
the holds that are not overdue; `counter.sum` and the `.tree` files never see them. Expiry is a
WAL effect written by the master (`limit.settle` `expired`), so every node agrees on it.

When a hold is overdue is decided on a monotonic clock, never the wall clock, which steps: each
node gives a hold a *deadline* on its own monotonic clock the first time it looks at it
(`bound_expiries`), from what is left of its TTL by the wall clock then, at most the TTL. A
stepped wall clock can so shorten a hold's life (to zero at most), never lengthen it.
"""

from __future__ import annotations

import collections
from typing import Any, Final

import attrs

from karma.core import compact as c
from karma.core import mutations as m
from karma.core import windows as w
from karma.core.store import Store
from karma.errors import ErrorCode, KarmaError

Pair = tuple[str, int]
SETTLED_OUTCOMES: Final = c.SETTLED_OUTCOMES
#: the deadline of a hold no clock has bounded yet: never overdue (the server bounds every hold
#: before it compares one with its clock)
UNBOUND: Final = 2**62


@attrs.frozen
class Bounded:
    """A hold whose recorded expiry lay more than its TTL beyond the wall clock: moved back."""

    id: str
    was_ms: int
    now_ms: int


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
    """An open reservation: its items count in decisions; its fingerprint and answer are kept
    compact (core/compact.py) for a retried reserve."""

    id: str
    items: list[m.Add]
    expires_at_ms: int
    created_at: int
    key: bytes
    packed_answer: bytes
    #: when it is overdue, on the monotonic clock of this node (ms; see `Limits.bound_expiries`)
    deadline_ms: int = UNBOUND

    @property
    def ttl_ms(self) -> int:
        """Its TTL: the reserve stamps `created_at` and the expiry from one clock reading, and
        TTLs are whole seconds, so the sub-second part of the difference is dropped."""
        return max(0, (self.expires_at_ms - self.created_at * 1000) // 1000 * 1000)

    @property
    def answer(self) -> Any:
        return c.unpack_answer(self.packed_answer, self.id)

    def same_reserve(self, fingerprint: str) -> bool:
        return self.key == c.fingerprint_key(fingerprint)

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "items": [list(item) for item in self.items],
            "expires_at_unix_ms": self.expires_at_ms,
            "created_at_unix": self.created_at,
            "key": self.key.hex(),
            "answer": self.answer,
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
    #: settled reservations kept (the newest, in settlement order: see `prune_settled`)
    max_settled: int = 1_000_000
    holds: dict[str, Hold] = attrs.field(factory=dict)
    #: id → compact record (core/compact.py), in settlement order
    settled: dict[str, bytes] = attrs.field(factory=dict)
    #: settled records forgotten, by age or by count, since start
    settled_pruned: int = 0
    #: settled ids in settlement order, oldest first; an id settled again (a late commit after
    #: its expiry) is in it twice, and `_stale` counts its older places. A dict alone keeps the
    #: order too, but finding its first key after many deletions at the front walks over every
    #: deleted slot (~100 µs per settle at a million records)
    _order: collections.deque[str] = attrs.field(factory=collections.deque)
    _stale: dict[str, int] = attrs.field(factory=dict)
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
    #: holds added since the last `bound_expiries`: they have no deadline yet
    _unbound: list[str] = attrs.field(factory=list)
    #: id(a pending hold's mutation) → its deadline, decided with it (see `pend`)
    _planned: dict[int, int] = attrs.field(factory=dict)
    #: (hold id, deadline) of the hold just unpended: its `apply_hold` comes next, or never
    _arriving: tuple[str, int] | None = None

    def emptied(self) -> Limits:
        """No holds and no settled ids, with these bounds (and the count of pruned ids, which
        a metric shows as a counter that never goes back)."""
        return Limits(self.max_open, self.max_settled, settled_pruned=self.settled_pruned)

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
            if self.holds[hold_id].deadline_ms <= now_ms:
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
    def pend(self, mutation: m.Mutation, deadline_ms: int | None = None) -> None:
        """`deadline_ms`: a hold's deadline on the monotonic clock, reckoned from its decision,
        so the WAL write's time does not lengthen its life."""
        adds, holds = _effects(mutation)
        if not (adds or holds):
            return
        token = id(mutation)
        self._pending[token] = (adds, holds)
        if deadline_ms is not None and isinstance(mutation, m.LimitHold):
            self._planned[token] = deadline_ms
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
        planned = self._planned.pop(token, None)
        if planned is not None and isinstance(mutation, m.LimitHold):
            # the engine applies it right after this (or the write failed: overwritten by
            # the next one, and `apply_hold` checks the id)
            self._arriving = (mutation.id, planned)
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
        arriving, self._arriving = self._arriving, None
        key = c.fingerprint_key(mutation.fingerprint)
        packed = c.pack_answer(mutation.answer, mutation.id)
        if not mutation.items:  # a denied reserve: remember the id and its answer
            record = c.pack_settled(
                "denied", mutation.created_at_unix, (key, b""), (packed, None), []
            )
            self._settled(mutation.id, record)
            return
        hold = Hold(
            mutation.id,
            list(mutation.items),
            mutation.expires_at_unix_ms,
            mutation.created_at_unix,
            key,
            packed,
        )
        if arriving is not None and arriving[0] == hold.id:
            hold.deadline_ms = arriving[1]  # decided with it on this node: no need to bound
        self._add_hold(hold)

    def _add_hold(self, hold: Hold) -> None:
        self.holds[hold.id] = hold
        for series, key, bucket, amount in hold.items:
            parts = self._held.setdefault((series, key), {}).setdefault(hold.id, [])
            parts.append((bucket, amount))
        if hold.deadline_ms != UNBOUND:
            return
        self._unbound.append(hold.id)
        if len(self._unbound) > 2 * len(self.holds) + 1024:
            # a node that never looks (a replica nobody asks) would keep every id: drop the
            # settled ones, amortised over the appends that made the list this long
            self._unbound = [i for i in self._unbound if i in self.holds]

    def apply_settle(self, mutation: m.LimitSettle) -> None:
        self.entries += 1
        if mutation.outcome == "expired" and mutation.id not in self.holds:
            return  # settled meanwhile (a late commit): an expiry only ends an open hold
        hold = self.holds.pop(mutation.id, None)
        previous = self.settled.get(mutation.id)
        reserve_key, reserve_answer, items = b"", None, []
        if hold is not None:
            for series, key, _bucket, _amount in hold.items:
                by_id = self._held.get((series, key))
                if by_id is not None:
                    by_id.pop(hold.id, None)
                    if not by_id:
                        del self._held[(series, key)]
            items, reserve_key, reserve_answer = hold.items, hold.key, hold.packed_answer
        elif previous is not None:  # an expired hold committed late
            done = c.unpack_settled(mutation.id, previous)
            items, reserve_key = done.items, done.reserve_key
            reserve_answer = c.reserve_answer_of(previous)
        settle_answer = None
        if mutation.answer is not None:
            settle_answer = c.pack_answer(mutation.answer, mutation.id)
        record = c.pack_settled(
            mutation.outcome,
            mutation.settled_at_unix,
            (reserve_key, c.fingerprint_key(mutation.fingerprint)),
            (reserve_answer, settle_answer),
            items,
        )
        self._settled(mutation.id, record)

    def _settled(self, hold_id: str, record: bytes) -> None:
        if self.settled.pop(hold_id, None) is not None:  # re-inserted last: settlement order
            self._stale[hold_id] = self._stale.get(hold_id, 0) + 1
        self.settled[hold_id] = record
        self._order.append(hold_id)

    def _oldest_settled(self) -> str | None:
        order, stale = self._order, self._stale
        while order:
            sid = order[0]
            older = stale.get(sid)
            if not older:
                return sid
            order.popleft()  # a place the id held before it was settled again
            if older == 1:
                del stale[sid]
            else:
                stale[sid] = older - 1
        return None

    def settled_record(self, hold_id: str) -> c.Settled | None:
        record = self.settled.get(hold_id)
        return None if record is None else c.unpack_settled(hold_id, record)

    def bound_expiries(self, wall_ms: int, mono_ms: int) -> list[Bounded]:
        """Give each hold added since the last call its deadline on the monotonic clock: what
        its expiry leaves by the wall clock `wall_ms`, kept within 0..TTL. An expiry more than
        its TTL ahead (written by a clock ahead of this one: before a restart, or on another
        node) is brought back to `wall_ms` + TTL, and returned to be logged.

        On the node that reserved it this runs within moments of the reserve, so the deadline
        is its TTL from then whatever the wall clock does afterwards; the snapshot keeps the
        (possibly brought back) wall-clock expiry for the next start."""
        moved = []
        for hold_id in self._unbound:
            hold = self.holds.get(hold_id)
            if hold is None or hold.deadline_ms != UNBOUND:
                continue  # settled meanwhile, or added twice
            ttl = hold.ttl_ms
            if hold.expires_at_ms - wall_ms > ttl:
                moved.append(Bounded(hold.id, hold.expires_at_ms, wall_ms + ttl))
                hold.expires_at_ms = wall_ms + ttl
            hold.deadline_ms = mono_ms + max(0, hold.expires_at_ms - wall_ms)
        self._unbound.clear()
        return moved

    def overdue(self, now_ms: int) -> list[Hold]:
        """Holds past their deadline at monotonic `now_ms`."""
        return [hold for hold in self.holds.values() if hold.deadline_ms <= now_ms]

    def next_expiry_ms(self) -> int | None:
        """The nearest deadline (monotonic ms)."""
        return min((hold.deadline_ms for hold in self.holds.values()), default=None)

    # --- snapshot sidecar -------------------------------------------------------------------
    def documents(self) -> dict[str, Any]:
        return {
            "holds": [hold.document() for hold in self.holds.values()],
            "settled": [c.unpack_settled(i, r).document() for i, r in self.settled.items()],
        }

    def load(self, document: dict[str, Any]) -> None:
        """A `karma.limits.json`, today's or one written before issue 23 (whole fingerprints
        instead of their keys)."""
        for raw in document.get("holds") or []:
            hold_id = str(raw["id"])
            if "key" in raw:
                key = bytes.fromhex(str(raw["key"]))
            else:
                key = c.fingerprint_key(raw.get("fingerprint"))
            self._add_hold(
                Hold(
                    hold_id,
                    [c.add_of(item) for item in raw.get("items") or []],
                    int(raw["expires_at_unix_ms"]),
                    int(raw.get("created_at_unix", 0)),
                    key,
                    c.pack_answer(raw.get("answer"), hold_id),
                )
            )
        for raw in document.get("settled") or []:
            self._settled(*c.load_settled(raw))

    def last_settled_at(self) -> int | None:
        """When the most recently settled id was settled (what `prune_settled` last saw)."""
        last = next(reversed(self.settled), None)
        return None if last is None else c.settled_at(self.settled[last])

    def prune_settled(self, now: int, max_age: int) -> int:
        """Forget settled ids, oldest first: those settled more than `max_age` seconds before
        `now` (they are keys too, kept for the idempotency retention; 0 keeps them), then the
        oldest beyond `max_settled`.

        `now` is the time in the settling WAL entry, never a clock read here, so the master,
        a replay and a replica forget the same ids at the same entry. Settled ids are kept in
        settlement order, so this stops at the first one young enough: no scan of the rest.
        """
        pruned = 0
        while (oldest := self._oldest_settled()) is not None:
            too_old = max_age and c.settled_at(self.settled[oldest]) < now - max_age
            if not too_old and len(self.settled) <= self.max_settled:
                break
            self._order.popleft()
            del self.settled[oldest]
            pruned += 1
        self.settled_pruned += pruned
        return pruned


def _effects(mutation: m.Mutation) -> tuple[list[m.Add], list[m.Add]]:
    if isinstance(mutation, m.LimitApply | m.LimitSettle):
        return list(mutation.add), []
    if isinstance(mutation, m.LimitHold):
        return [], list(mutation.items)
    return [], []


def adds_of(mutation: m.Mutation) -> list[m.Add]:
    return _effects(mutation)[0]
