"""The `limit.*` ops on a node: decide, submit the effect, answer (spec/limits.md).

Each mutating op decides and submits its effect in one synchronous step (no `await` between),
so racing requests are decided in the order they reach this module, each seeing the effects
decided before it as pending. An allowed effect is answered when its WAL batch is applied; a
denial that writes nothing is answered once everything submitted before it is durable, so no
answer rests on a write that could still fail.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from karma.core import mutations as m
from karma.core import windows as w
from karma.core.compact import Settled
from karma.core.limits import Charge, ItemDecision
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope
from karma.protocol import limit_requests as lr
from karma.protocol.requests import opt
from karma.storage import files, snapshot_files

if TYPE_CHECKING:
    from karma.server.node import Node

_canonical: Final = msgspec.json.Encoder(order="sorted")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
async def _effect(node: Node, mutation: m.Mutation) -> None:
    """Log and apply one effect; while its batch is on its way it counts as pending."""
    engine = node.engine
    if node.writer is None:
        engine.apply(mutation)
        return
    engine.limits.pend(mutation)  # applied (or failed) batches unpend it in the writer
    pending = node.writer.submit_nowait(mutation)
    with trio.CancelScope(shield=True):  # decided is decided: the client may go, the effect stays
        await pending.done.wait()
    if pending.error is not None:
        raise pending.error


async def _durable_so_far(node: Node) -> None:
    """A denial writes nothing, but it may rest on pending effects: answer once they are in."""
    if node.writer is not None:
        error = await node.writer.barrier()
        if error is not None:
            raise error


async def _once(node: Node, name: str) -> None:
    """Wait while another request with the same key or id is being written."""
    while (busy := node.inflight.get(name)) is not None:
        await busy.wait()


# --- ops ---------------------------------------------------------------------------------------
async def consume(node: Node, req: lr.LimitConsume) -> bytes:
    engine = node.engine
    key = req.key_text
    today, now = node.clock()
    charges = charges_of(req, today)
    fingerprint = _fingerprint("limit.consume", req)
    claim = f"key:{key}"
    if key is not None:
        await _once(node, claim)
        saved = engine.idempotency.lookup(key, fingerprint)
        if saved is not None:
            return envelope.encode_idempotent(saved.response, replayed=True)
        today, now = node.clock()
        charges = charges_of(req, today)
    decisions = engine.limits.decide(engine.store, charges, today, now, _now_ms())
    allowed = all(d.allowed for d in decisions)
    answer = _answer(req, decisions, consume=True)
    if not allowed and key is None:
        await _durable_so_far(node)
        return envelope.encode_ok(answer)
    adds = _adds(charges, today) if allowed else []
    engine.check_adds(adds)
    mutation = m.LimitApply(
        add=adds,
        idempotency_key=key,
        idempotency_created_at_unix=None if key is None else now,
        fingerprint=None if key is None else fingerprint,
        answer=None if key is None else answer,
    )
    if key is None:
        await _effect(node, mutation)
        return envelope.encode_ok(answer)
    await _claimed(node, claim, mutation)
    return envelope.encode_idempotent(answer, replayed=False)


async def check(node: Node, req: lr.LimitCheck) -> bytes:
    engine = node.engine
    today, now = node.clock()
    charges = charges_of(req, today)
    for charge in charges:
        if charge.series not in engine.store.series and not engine.limits.knows(charge.series):
            engine.store.get(charge.series)  # not_found, as every read of a missing series
    decisions = engine.limits.decide(engine.store, charges, today, now, _now_ms())
    await _durable_so_far(node)
    return envelope.encode_ok(_answer(req, decisions))


async def reserve(node: Node, req: lr.LimitReserve) -> bytes:
    engine = node.engine
    limits = engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    today, now = node.clock()
    charges = charges_of(req, today)
    fingerprint = _fingerprint("limit.reserve", req, req.ttl)
    claim = f"id:{hold_id}"
    await _once(node, claim)
    replay = _known_reservation(node, hold_id, fingerprint)
    if replay is not None:
        return envelope.encode_idempotent(replay, replayed=True)
    today, now = node.clock()
    charges = charges_of(req, today)
    limits.check_capacity()
    now_ms = _now_ms()
    expires = now_ms + req.ttl * 1000
    decisions = limits.decide(engine.store, charges, today, now, now_ms)
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
    await _claimed(node, claim, mutation)
    return envelope.encode_idempotent(answer, replayed=False)


def _known_reservation(node: Node, hold_id: str, fingerprint: str) -> Any:
    limits = node.engine.limits
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


async def commit(node: Node, req: lr.LimitCommit) -> bytes:
    limits = node.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    claim = f"id:{hold_id}"
    await _once(node, claim)
    fingerprint = hashlib.sha256(
        _canonical.encode(["limit.commit", opt(req.value), opt(req.values)])
    ).hexdigest()
    hold = limits.holds.get(hold_id)
    done = None if hold is not None else limits.settled_record(hold_id)
    _, now = node.clock()
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
        late = hold.expires_at_ms <= _now_ms()
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
    node.engine.check_adds(add)
    mutation = m.LimitSettle(
        id=hold_id,
        outcome="committed_late" if late else "committed",
        add=add,
        settled_at_unix=now,
        fingerprint=fingerprint,
        answer=answer,
    )
    await _claimed(node, claim, mutation)
    return envelope.encode_idempotent(answer, replayed=False)


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


async def void(node: Node, req: lr.LimitVoid) -> bytes:
    limits = node.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    claim = f"id:{hold_id}"
    await _once(node, claim)
    hold = limits.holds.get(hold_id)
    done = None if hold is not None else limits.settled_record(hold_id)
    _, now = node.clock()
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
    if hold.expires_at_ms <= _now_ms():  # overdue: the expiry is written first, then told
        await _claimed(node, claim, _expiry(hold_id, now))
        return envelope.encode_idempotent(
            {"id": hold_id, "status": "expired", "released": 0}, replayed=True
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
    await _claimed(node, claim, mutation)
    return envelope.encode_idempotent(answer, replayed=False)


def _expiry(hold_id: str, now: int) -> m.LimitSettle:
    return m.LimitSettle(id=hold_id, outcome="expired", add=[], settled_at_unix=now)


async def _claimed(node: Node, claim: str, mutation: m.Mutation) -> None:
    """The effect of a keyed or id'd request: retries of the same key or id wait for it."""
    node.inflight[claim] = done = trio.Event()
    try:
        await _effect(node, mutation)
    finally:
        del node.inflight[claim]
        done.set()


async def reservation(node: Node, req: lr.LimitReservation) -> bytes:
    limits = node.engine.limits
    hold_id = opt(req.id)
    assert hold_id is not None
    hold = limits.holds.get(hold_id)
    if hold is not None:
        status = "held" if hold.expires_at_ms > _now_ms() else "overdue"
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


async def status(node: Node, req: lr.LimitStatus) -> bytes:
    limits = node.engine.limits
    meta = await trio.to_thread.run_sync(snapshot_files.limits_meta, node.directory)
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


async def snapshot_fetch_chunk(node: Node, req: lr.LimitSnapshotFetchChunk) -> bytes:
    path = node.directory / snapshot_files.LIMITS
    meta = await trio.to_thread.run_sync(snapshot_files.limits_meta, node.directory)
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


async def expire_holds(node: Node) -> None:
    """The master's sweeper: write the expiry of every overdue hold (slaves never expire)."""
    while True:
        limits = node.engine.limits
        next_ms = limits.next_expiry_ms()
        wait = 1.0 if next_ms is None else max(0.0, (next_ms - _now_ms()) / 1000)
        await trio.sleep(min(wait, 1.0))  # new holds may expire sooner than the one we knew
        for hold in limits.overdue(_now_ms()):
            claim = f"id:{hold.id}"
            if claim in node.inflight:
                continue  # a commit or void is settling it right now
            # The list was taken before this loop's first await: a commit or void may have
            # settled this hold since. An expiry written after it would overwrite the
            # acknowledged outcome with "expired", and a retried commit would then record
            # its usage a second time (found by tests/process/test_limits_race.py).
            if hold.id not in limits.holds:
                continue
            _, now = node.clock()
            try:
                await _claimed(node, claim, _expiry(hold.id, now))
            except KarmaError as exc:
                node.log.warning("limit.expiry_failed", id=hold.id, error=exc.message)
                break  # the disk refuses: try again on the next round


HANDLERS: Final[dict[type, Callable[[Node, Any], Awaitable[bytes]]]] = {
    lr.LimitConsume: consume,
    lr.LimitCheck: check,
    lr.LimitReserve: reserve,
    lr.LimitCommit: commit,
    lr.LimitVoid: void,
    lr.LimitReservation: reservation,
    lr.LimitStatus: status,
    lr.LimitSnapshotFetchChunk: snapshot_fetch_chunk,
}
