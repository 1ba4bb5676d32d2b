"""The `limit.*` ops on a node: decide, submit the effect, answer (spec/limits.md).

Each decision is one synchronous step that decides, submits its effect and returns its answer
for later (`Later`): racing requests are decided in the order they reach this module, each
seeing the effects decided before it as pending, and the connection goes on reading while the
answer waits. An allowed effect is answered when its WAL batch is applied; a denial that writes
nothing is answered once everything submitted before it is durable, so no answer rests on a
write that could still fail. If a flush fails, every write behind it fails too (wal_writer's
`_fail_behind`), so a decision that counted a rolled-back effect is never acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from karma.core import mutations as m
from karma.core import windows as w
from karma.core.compact import Settled
from karma.core.limits import Charge, ItemDecision
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope
from karma.protocol.requests import limits as lr
from karma.protocol.requests import opt
from karma.server.claims import Busy, Claim, Later, Outcome
from karma.server.context import Context
from karma.server.wal_writer import Pending
from karma.storage import files, snapshot_files

_canonical: Final = msgspec.json.Encoder(order="sorted")


def _mono_ms(ctx: Context) -> int:
    """Monotonic ms, what holds expire by: every hold added since the last call gets its
    deadline first (core/limits.py, `bound_expiries`), and one whose recorded expiry lay more
    than its TTL ahead of the wall clock is logged."""
    clocks = ctx.clocks
    mono = clocks.mono_ms()
    for moved in ctx.engine.limits.bound_expiries(clocks.wall_ms(), mono):
        ctx.log.warning(
            "limit.expiry_bounded",
            id=moved.id,
            expires_at_unix_ms=moved.was_ms,
            now_expires_at_unix_ms=moved.now_ms,
        )
    return mono


def bound_loaded_holds(ctx: Context) -> None:
    """At start: the holds restored from snapshots and the WAL get their deadlines now, and
    those whose expiry lay more than a TTL ahead of this clock are logged before any client
    asks."""
    _mono_ms(ctx)


# --- the request's charges -------------------------------------------------------------------
def charges_of(req: lr.ChargeRequest, today: int) -> list[Charge]:
    charges = []
    values: dict[tuple[str, int], int] = {}
    for item in req.charges():
        name = lr.item_name(item)
        key = opt(item.key)
        maximum = opt(item.max)
        assert key is not None
        assert maximum is not None
        value = lr.item_value(item)
        window = w.parse_window(item.window, today)
        seen = values.setdefault((name, key), value)
        if seen != value:
            raise KarmaError.validation(f"Items for series {name} key {key} disagree on value")
        charges.append(Charge(name, key, value, maximum, window, w.period(window, today)))
    return charges


def _fingerprint(op: str, req: lr.ChargeRequest, *extra: object) -> str:
    """Over the request as sent, not the day the server chose: a retry after midnight
    replays its first answer instead of conflicting."""
    charges = [
        {
            "series": lr.item_name(item),
            "key": opt(item.key),
            "value": lr.item_value(item),
            "max": opt(item.max),
            "window": item.window,
        }
        for item in req.charges()
    ]
    return hashlib.sha256(_canonical.encode([op, charges, *extra])).hexdigest()


def _adds(charges: list[Charge], today: int) -> list[m.Add]:
    """One add per (series, key), whatever the number of items naming it."""
    seen: dict[tuple[str, int], int] = {}
    for charge in charges:
        seen[(charge.series, charge.key)] = charge.value
    return [(series, key, today, value) for (series, key), value in seen.items()]


def _item_answer(decision: ItemDecision, *, used_plus: int, held_plus: int) -> dict[str, Any]:
    charge = decision.charge
    used = decision.used + used_plus
    held = decision.held + held_plus
    return {
        "allowed": decision.allowed,
        "max": charge.maximum,
        "used": used,
        "held": held,
        "remaining": max(0, charge.maximum - used - held),
        "value": charge.value,
        "window": {"from": charge.period.first, "to": charge.period.last},
        "reset_at_unix": charge.period.reset_at_unix,
        "retry_after_s": decision.retry_after_s,
    }


def _answer(
    req: lr.ChargeRequest,
    decisions: list[ItemDecision],
    *,
    consume: bool = False,
    hold: bool = False,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    allowed = all(d.allowed for d in decisions)
    items = [
        _item_answer(
            d,
            used_plus=d.charge.value if allowed and consume else 0,
            held_plus=d.charge.value if allowed and hold else 0,
        )
        for d in decisions
    ]
    start = {"allowed": allowed, **(head or {})}
    if isinstance(req.items, list):
        denied = [i for i, d in enumerate(decisions) if not d.allowed]
        retries = [d.retry_after_s for d in decisions if not d.allowed]
        retry = None if not retries or None in retries else max(r for r in retries if r is not None)
        return {**start, "denied": denied, "retry_after_s": retry, "items": items}
    single = items[0]
    del single["allowed"]
    return {**start, **single}


# --- effects ---------------------------------------------------------------------------------


def _constant(data: bytes) -> Callable[[Pending], bytes]:
    return lambda _pending: data


def _effect(
    ctx: Context,
    mutation: m.Mutation,
    data: bytes,
    claim: str | None = None,
    fingerprint: str = "",
    deadline_ms: int | None = None,
) -> bytes | Later:
    """Submit one effect, answered `data` once applied; until then it counts as pending. A
    hold's `deadline_ms` (monotonic) is its TTL from the decision."""
    engine = ctx.engine
    if ctx.writer is None:
        engine.apply(mutation)
        _mono_ms(ctx)  # the new hold's deadline: its TTL from now
        return data
    engine.limits.pend(mutation, deadline_ms)  # applied (or failed) batches unpend it
    return Later(ctx.claims.submit(mutation, claim, fingerprint), _constant(data))


def _after_pending(ctx: Context, data: bytes) -> bytes | Later:
    """A denial writes nothing, but it may rest on pending effects: answer once they are in
    (with their error if they failed)."""
    last = None if ctx.writer is None else ctx.writer.unfinished()
    return data if last is None else Later(last, _constant(data))


def _copy(ctx: Context, claim: Claim, key: str, fingerprint: str) -> Later:
    """A keyed consume whose key is being written: the first one's answer, or its conflict."""
    return Later(claim.pending, ctx.claims.replay(claim, key, fingerprint), duplicate=True)


# --- ops ---------------------------------------------------------------------------------------
def consume(ctx: Context, req: lr.LimitConsume) -> Outcome:
    engine = ctx.engine
    key = req.key_text
    today, now = ctx.clock()
    charges = charges_of(req, today)
    fingerprint = claim = None
    if key is not None:
        fingerprint = _fingerprint("limit.consume", req)
        saved = engine.idempotency.lookup(key, fingerprint)
        if saved is not None:
            return envelope.encode_idempotent(saved.response, replayed=True)
        claim = "key:" + key
        first = ctx.claims.get(claim)
        if first is not None:
            return _copy(ctx, first, key, fingerprint)
    decisions = engine.limits.decide(engine.store, charges, today, now, _mono_ms(ctx))
    allowed = all(d.allowed for d in decisions)
    answer = _answer(req, decisions, consume=True)
    if not allowed and key is None:
        return _after_pending(ctx, envelope.encode_ok(answer))
    adds = _adds(charges, today) if allowed else []
    engine.check_adds(adds)
    mutation = m.LimitApply(
        add=adds,
        idempotency_key=key,
        idempotency_created_at_unix=None if key is None else now,
        fingerprint=None if key is None else fingerprint,
        answer=None if key is None else answer,
    )
    if key is None or fingerprint is None:
        return _effect(ctx, mutation, envelope.encode_ok(answer))
    data = envelope.encode_idempotent(answer, replayed=False)
    return _effect(ctx, mutation, data, claim, fingerprint)


def check(ctx: Context, req: lr.LimitCheck) -> Outcome:
    engine = ctx.engine
    today, now = ctx.clock()
    charges = charges_of(req, today)
    for charge in charges:
        if charge.series not in engine.store.series and not engine.limits.knows(charge.series):
            engine.store.get(charge.series)  # not_found, as every read of a missing series
    decisions = engine.limits.decide(engine.store, charges, today, now, _mono_ms(ctx))
    return _after_pending(ctx, envelope.encode_ok(_answer(req, decisions)))


def _busy(ctx: Context, claim: str) -> Busy | None:
    """Another request is writing this reservation id: this one is decided after it."""
    first = ctx.claims.get(claim)
    return None if first is None else Busy(first.pending)


def reserve(ctx: Context, req: lr.LimitReserve) -> Outcome:
    engine = ctx.engine
    limits = engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    today, now = ctx.clock()
    charges = charges_of(req, today)
    fingerprint = _fingerprint("limit.reserve", req, req.ttl)
    claim = f"id:{hold_id}"
    if (busy := _busy(ctx, claim)) is not None:
        return busy
    replay = _known_reservation(ctx, hold_id, fingerprint)
    if replay is not None:
        return envelope.encode_idempotent(replay, replayed=True)
    limits.check_capacity()
    # the expiry and the creation time from one reading: the TTL is their difference
    # (`Hold.ttl_ms`), what bounds the hold's life on any node that loads it later
    wall_ms, mono_ms = ctx.clocks.wall_ms(), _mono_ms(ctx)
    now = wall_ms // 1000
    expires = wall_ms + req.ttl * 1000
    decisions = limits.decide(engine.store, charges, today, now, mono_ms)
    allowed = all(d.allowed for d in decisions)
    head = {"id": hold_id, "status": "held" if allowed else "denied", "expires_at_unix_ms": expires}
    answer = _answer(req, decisions, hold=True, head=head)
    mutation = m.LimitHold(
        id=hold_id,
        items=_adds(charges, today) if allowed else [],
        expires_at_unix_ms=expires,
        created_at_unix=now,
        fingerprint=fingerprint,
        answer=answer,
    )
    data = envelope.encode_idempotent(answer, replayed=False)
    return _effect(ctx, mutation, data, claim, deadline_ms=mono_ms + req.ttl * 1000)


def _known_reservation(ctx: Context, hold_id: str, fingerprint: str) -> Any:
    limits = ctx.engine.limits
    hold = limits.holds.get(hold_id)
    if hold is not None:
        if not hold.same_reserve(fingerprint):
            raise _id_conflict(hold_id)
        return hold.answer
    done = limits.settled_record(hold_id)
    if done is not None:
        if not done.same_reserve(fingerprint):
            raise _id_conflict(hold_id)
        return done.reserve_answer
    return None


def _id_conflict(hold_id: str) -> KarmaError:
    return KarmaError(
        ErrorCode.IDEMPOTENCY_CONFLICT,
        f'Reservation "{hold_id}" was already used with a different request',
    )


def _not_found(hold_id: str) -> KarmaError:
    return KarmaError(ErrorCode.NOT_FOUND, f'Reservation "{hold_id}" not found')


def commit(ctx: Context, req: lr.LimitCommit) -> Outcome:
    limits = ctx.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    claim = f"id:{hold_id}"
    if (busy := _busy(ctx, claim)) is not None:
        return busy
    fingerprint = hashlib.sha256(
        _canonical.encode(["limit.commit", opt(req.value), opt(req.values)])
    ).hexdigest()
    hold = limits.holds.get(hold_id)
    done = None if hold is not None else limits.settled_record(hold_id)
    _, now = ctx.clock()
    if hold is None:
        if done is None:  # never reserved, or settled so long ago it was forgotten
            raise _not_found(hold_id)
        if done.outcome in ("committed", "committed_late"):
            if not done.same_settle(fingerprint):
                raise KarmaError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    f'Reservation "{hold_id}" was already committed with value'
                    f" {_committed_value(done)}",
                )
            return envelope.encode_idempotent(done.answer, replayed=True)
        if done.outcome != "expired":
            raise KarmaError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                f'Reservation "{hold_id}" was already {done.outcome}',
            )
        items = done.items  # expired: a commit still records the usage, late
        late = True
    else:
        items = hold.items
        late = hold.deadline_ms <= _mono_ms(ctx)
    amounts = _commit_amounts(req, items)
    add = [(s, k, b, v) for (s, k, b, _held), v in zip(items, amounts, strict=True) if v]
    held = sum(item[3] for item in items)
    value = sum(amounts)
    answer = {
        "id": hold_id,
        "status": "committed_late" if late else "committed",
        "value": value,
        "released": 0 if late else max(0, held - value),
        "over_reserved": 0 if late else max(0, value - held),
    }
    ctx.engine.check_adds(add)
    mutation = m.LimitSettle(
        id=hold_id,
        outcome="committed_late" if late else "committed",
        add=add,
        settled_at_unix=now,
        fingerprint=fingerprint,
        answer=answer,
    )
    return _effect(ctx, mutation, envelope.encode_idempotent(answer, replayed=False), claim)


def _committed_value(done: Settled) -> int:
    answer = done.answer
    return int(answer.get("value", 0)) if isinstance(answer, dict) else 0


def _commit_amounts(req: lr.LimitCommit, items: list[m.Add]) -> list[int]:
    values = opt(req.values)
    if values is not None:
        if len(values) != len(items):
            raise KarmaError.validation(f"Field values must hold {len(items)} values, one per item")
        return list(values)
    value = opt(req.value)
    if value is None:
        return [item[3] for item in items]
    if len(items) != 1:
        raise KarmaError.validation("Field values is required for a reservation of several items")
    return [value]


def void(ctx: Context, req: lr.LimitVoid) -> Outcome:
    limits = ctx.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    claim = f"id:{hold_id}"
    if (busy := _busy(ctx, claim)) is not None:
        return busy
    hold = limits.holds.get(hold_id)
    done = None if hold is not None else limits.settled_record(hold_id)
    _, now = ctx.clock()
    fingerprint = "void"
    if hold is None:
        if done is None:
            raise _not_found(hold_id)
        if done.outcome == "voided":
            return envelope.encode_idempotent(done.answer, replayed=True)
        if done.outcome == "expired":
            return envelope.encode_idempotent(
                {"id": hold_id, "status": "expired", "released": 0}, replayed=True
            )
        raise KarmaError(
            ErrorCode.IDEMPOTENCY_CONFLICT, f'Reservation "{hold_id}" was already {done.outcome}'
        )
    if hold.deadline_ms <= _mono_ms(ctx):  # overdue: the expiry is written first, then told
        told = {"id": hold_id, "status": "expired", "released": 0}
        return _effect(
            ctx, _expiry(hold_id, now), envelope.encode_idempotent(told, replayed=True), claim
        )
    answer = {"id": hold_id, "status": "voided", "released": sum(i[3] for i in hold.items)}
    mutation = m.LimitSettle(
        id=hold_id,
        outcome="voided",
        add=[],
        settled_at_unix=now,
        fingerprint=fingerprint,
        answer=answer,
    )
    return _effect(ctx, mutation, envelope.encode_idempotent(answer, replayed=False), claim)


def _expiry(hold_id: str, now: int) -> m.LimitSettle:
    return m.LimitSettle(id=hold_id, outcome="expired", add=[], settled_at_unix=now)


async def reservation(ctx: Context, req: lr.LimitReservation) -> bytes:
    limits = ctx.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    hold = limits.holds.get(hold_id)
    if hold is not None:
        status = "held" if hold.deadline_ms > _mono_ms(ctx) else "overdue"
        answer = {
            "id": hold_id,
            "status": status,
            "items": [_item(i) for i in hold.items],
            "held": sum(i[3] for i in hold.items),
            "expires_at_unix_ms": hold.expires_at_ms,
            "created_at_unix": hold.created_at,
        }
        return envelope.encode_ok(answer)
    done = limits.settled_record(hold_id)
    if done is None:
        raise _not_found(hold_id)
    return envelope.encode_ok(
        {
            "id": hold_id,
            "status": done.outcome,
            "items": [_item(i) for i in done.items],
            "settled_at_unix": done.at,
            "answer": done.answer,
        }
    )


def _item(add: m.Add) -> dict[str, Any]:
    series, key, bucket, amount = add
    return {"series": series, "key": key, "bucket": bucket, "amount": amount}


async def status(ctx: Context, req: lr.LimitStatus) -> bytes:
    limits = ctx.engine.limits
    meta = await trio.to_thread.run_sync(snapshot_files.limits_meta, ctx.directory)
    return envelope.encode_ok(
        {
            "open_reservations": len(limits.holds),
            "settled_reservations": len(limits.settled),
            "max_open_reservations": limits.max_open,
            "max_settled_reservations": limits.max_settled,
            "settled_reservations_pruned": limits.settled_pruned,
            "limit_entries_applied": limits.entries,
            "limits_snapshot": meta,
        }
    )


async def snapshot_fetch_chunk(ctx: Context, req: lr.LimitSnapshotFetchChunk) -> bytes:
    path = ctx.directory / snapshot_files.LIMITS
    meta = await trio.to_thread.run_sync(snapshot_files.limits_meta, ctx.directory)
    if meta is None:
        raise KarmaError(ErrorCode.NOT_FOUND, "Limits snapshot not found")
    try:
        data = await trio.to_thread.run_sync(files.read_regular, path)
    except OSError as exc:
        raise KarmaError(ErrorCode.NOT_FOUND, "Limits snapshot not found") from exc
    # the document, not its sidecar, is what is sent: a kill between writing the two leaves a
    # stale size there, which would stall every replica's bootstrap until the next snapshot
    meta["bytes"] = len(data)
    offset = opt(req.offset) or 0
    limit = opt(req.limit) or 1_048_576 // 2
    piece = data[offset : offset + limit]
    return envelope.encode_ok(
        {
            "metadata": meta,
            "offset": offset,
            "limit": limit,
            "bytes": len(piece),
            "total_bytes": len(data),
            "next_offset": offset + len(piece),
            "done": offset + len(piece) >= len(data),
            "data_base64": base64.b64encode(piece).decode(),
        }
    )


async def expire_holds(ctx: Context) -> None:
    """The master's sweeper: write the expiry of every overdue hold (slaves never expire).
    Deadlines are monotonic: a step of the wall clock neither hastens nor delays one."""
    while True:
        limits = ctx.engine.limits
        next_ms = limits.next_expiry_ms()
        wait = 1.0 if next_ms is None else max(0.0, (next_ms - _mono_ms(ctx)) / 1000)
        await trio.sleep(min(wait, 1.0))  # new holds may expire sooner than the one we knew
        for hold in limits.overdue(_mono_ms(ctx)):
            claim = f"id:{hold.id}"
            if claim in ctx.claims.inflight:
                continue  # a commit or void is settling it right now
            # The list was taken before this loop's first await: a commit or void may have
            # settled this hold since. An expiry written after it would overwrite the
            # acknowledged outcome with "expired", and a retried commit would then record
            # its usage a second time (found by tests/process/test_limits_race.py).
            if hold.id not in limits.holds:
                continue
            _, now = ctx.clock()
            later = _effect(ctx, _expiry(hold.id, now), b"", claim)
            if isinstance(later, Later):
                with trio.CancelScope(shield=True):
                    await later.pending.done.wait()
                if later.pending.error is not None:
                    error = later.pending.error.message
                    ctx.log.warning("limit.expiry_failed", id=hold.id, error=error)
                    break  # the disk refuses: try again on the next round


#: decided in one synchronous step; answered later (the node wraps a Later or Busy: answers.py)
DECISIONS: Final[dict[type, Callable[[Context, Any], Outcome]]] = {
    lr.LimitConsume: consume,
    lr.LimitCheck: check,
    lr.LimitReserve: reserve,
    lr.LimitCommit: commit,
    lr.LimitVoid: void,
}

#: awaited by the connection (they read files, or only read)
HANDLERS: Final[dict[type, Callable[[Context, Any], Awaitable[bytes]]]] = {
    lr.LimitReservation: reservation,
    lr.LimitStatus: status,
    lr.LimitSnapshotFetchChunk: snapshot_fetch_chunk,
}
