"""Limit decisions (karma/core/limits.py) while effects are on their way to disk."""

from __future__ import annotations

import json

import msgspec

from karma.core import compact
from karma.core import mutations as m
from karma.core import windows as w
from karma.core.engine import Engine
from karma.core.idempotency import IdempotencyTable
from karma.core.limits import Charge, Limits
from karma.core.store import Store

# spec/limits.md §8: now is 2026-11-24T15:00:00Z
TODAY = 20261124
NOW = 1795532400
NOW_MS = NOW * 1000
DAY = w.Calendar("day")


def charge(value: int = 0, maximum: int = 10) -> Charge:
    return Charge("tokens", 1, value, maximum, DAY, w.period(DAY, TODAY))


def held_limits(amount: int) -> Limits:
    limits = Limits()
    limits.apply_hold(
        m.LimitHold(
            id="r-1",
            items=[("tokens", 1, TODAY, amount)],
            expires_at_unix_ms=NOW_MS + 60_000,
            created_at_unix=NOW,
        )
    )
    return limits


def commit(value: int) -> m.LimitSettle:
    return m.LimitSettle(
        id="r-1", outcome="committed", add=[("tokens", 1, TODAY, value)], settled_at_unix=NOW
    )


def seen(limits: Limits, value: int = 0) -> tuple[int, int, bool]:
    [decision] = limits.decide(Store(), [charge(value)], TODAY, NOW, NOW_MS)
    return decision.used, decision.held, decision.allowed


def test_a_pending_commit_replaces_its_hold_instead_of_adding_to_it() -> None:
    limits = held_limits(8)
    assert seen(limits) == (0, 8, True)
    limits.pend(commit(3))
    # used + held stays 8, what either outcome of the write leaves: never 3 + 8
    assert seen(limits) == (3, 5, True)
    assert seen(limits, 2) == (3, 5, True)
    assert seen(limits, 3)[2] is False


def test_a_pending_commit_over_its_hold_counts_the_whole_commit() -> None:
    limits = held_limits(3)
    limits.pend(commit(5))
    assert seen(limits) == (5, 0, True)


def test_a_failed_commit_gives_the_hold_back_whole() -> None:
    limits = held_limits(8)
    settle = commit(3)
    limits.pend(settle)
    limits.unpend(settle)  # its WAL write failed
    assert seen(limits) == (0, 8, True)


def test_a_pending_void_keeps_counting_its_hold_until_it_is_written() -> None:
    limits = held_limits(8)
    limits.pend(m.LimitSettle(id="r-1", outcome="voided", add=[], settled_at_unix=NOW))
    assert seen(limits) == (0, 8, True)


def test_settled_ids_are_forgotten_after_the_idempotency_retention() -> None:
    engine = Engine(idempotency=IdempotencyTable(max_age_seconds=3600))
    for n, at in enumerate((NOW, NOW + 60, NOW + 7200)):
        hold_id = f"r-{n}"
        engine.apply(
            m.LimitHold(
                id=hold_id,
                items=[("tokens", 1, TODAY, 1)],
                expires_at_unix_ms=(at + 60) * 1000,
                created_at_unix=at,
            )
        )
        engine.apply(m.LimitSettle(id=hold_id, outcome="voided", add=[], settled_at_unix=at))
    # the third settlement is two hours later: the first two are past the one-hour retention
    assert list(engine.limits.settled) == ["r-2"]


# --- settled reservations, compact and bounded (issue 23) ------------------------------------
def settle_cycle(engine: Engine, hold_id: str, at: int, outcome: str = "committed") -> None:
    engine.apply(
        m.LimitHold(
            id=hold_id,
            items=[("tokens", 1, TODAY, 4)],
            expires_at_unix_ms=(at + 60) * 1000,
            created_at_unix=at,
            fingerprint=f"reserve {hold_id}",
            answer={"allowed": True, "id": hold_id, "status": "held", "held": 4},
        )
    )
    add = [("tokens", 1, TODAY, 1)] if outcome.startswith("committed") else []
    answer = None if outcome == "expired" else {"id": hold_id, "status": outcome, "value": 1}
    engine.apply(
        m.LimitSettle(
            id=hold_id,
            outcome=outcome,
            add=add,
            settled_at_unix=at,
            fingerprint=None if outcome == "expired" else "commit 1",
            answer=answer,
        )
    )


def test_pruning_by_count_keeps_the_newest_settled_ids() -> None:
    engine = Engine()
    engine.limits.max_settled = 3
    for n in range(5):
        settle_cycle(engine, f"r-{n}", NOW + n)
    assert list(engine.limits.settled) == ["r-2", "r-3", "r-4"]
    assert engine.limits.settled_pruned == 2


def test_a_late_commit_makes_an_expired_id_the_newest() -> None:
    engine = Engine()
    engine.limits.max_settled = 3
    settle_cycle(engine, "r-0", NOW, "expired")
    settle_cycle(engine, "r-1", NOW + 1)
    engine.apply(
        m.LimitSettle(
            id="r-0",
            outcome="committed_late",
            add=[("tokens", 1, TODAY, 2)],
            settled_at_unix=NOW + 2,
            fingerprint="commit 2",
            answer={"id": "r-0", "status": "committed_late", "value": 2},
        )
    )
    for n in (2, 3):
        settle_cycle(engine, f"r-{n}", NOW + 1 + n)
    # r-1 settled before r-0's late commit: it goes first, and r-0's older place is no one's
    assert list(engine.limits.settled) == ["r-0", "r-2", "r-3"]
    late = engine.limits.settled_record("r-0")
    assert late is not None
    assert (late.outcome, late.items, late.answer["value"]) == (
        "committed_late",
        [("tokens", 1, TODAY, 4)],
        2,
    )
    assert late.same_reserve("reserve r-0")
    assert late.same_settle("commit 2")
    assert late.reserve_answer == {"allowed": True, "id": "r-0", "status": "held", "held": 4}
    settle_cycle(engine, "r-4", NOW + 10)
    assert list(engine.limits.settled) == ["r-2", "r-3", "r-4"]


def test_a_replay_from_a_snapshot_prunes_as_the_live_engine_did() -> None:
    live = Engine(idempotency=IdempotencyTable(max_age_seconds=100))
    live.limits.max_settled = 4
    at = [NOW + n * 30 for n in range(12)]
    for n in range(6):
        settle_cycle(live, f"r-{n}", at[n])
    document = msgspec.json.decode(live.limits_document(0))
    restored = Engine(idempotency=IdempotencyTable(max_age_seconds=100))
    restored.limits.max_settled = 4
    restored.load_limits(document)
    for n in range(6, 12):
        settle_cycle(live, f"r-{n}", at[n])
        settle_cycle(restored, f"r-{n}", at[n])
    assert list(restored.limits.settled.items()) == list(live.limits.settled.items())
    # by age (100 s: four settlements 30 s apart) before the count bound of 4 binds
    assert list(live.limits.settled) == ["r-8", "r-9", "r-10", "r-11"]


def test_answers_are_replayed_exactly_from_their_compact_form() -> None:
    single = {
        "allowed": True,
        "id": "r-1",
        "status": "held",
        "expires_at_unix_ms": 1795532700000,
        "max": 2**64 - 1,
        "used": 0,
        "held": 4000,
        "remaining": 16000,
        "value": 4000,
        "window": {"from": 20261101, "to": 20261130},
        "reset_at_unix": 1796083200,
        "retry_after_s": None,
    }
    items = {"allowed": False, "id": "r-1", "denied": [1], "items": [single, {**single, "x": 1.5}]}
    for answer in (single, items, None, {"id": "someone else", "nested": [[1, True], {}]}):
        packed = compact.pack_answer(answer, "r-1")
        back = compact.unpack_answer(packed, "r-1")
        assert json.dumps(back) == json.dumps(answer)  # key order included
    assert len(compact.pack_answer(single, "r-1")) < 64


def test_a_settled_reservation_is_one_small_record() -> None:
    engine = Engine()
    settle_cycle(engine, "0123456789abcdef0123456789abcdef", NOW)
    [record] = engine.limits.settled.values()
    assert isinstance(record, bytes)
    assert len(record) < 100


def test_answers_of_many_items_are_kept_whole_and_do_not_grow_the_shape_table() -> None:
    item = {"allowed": True, "max": 10, "used": 1, "held": 0, "retry_after_s": None}
    before = len(compact._SHAPES)
    for n in range(50):
        items = [
            {**item, "allowed": k != n, "retry_after_s": k if k == n else None} for k in range(100)
        ]
        answer = {"allowed": False, "id": "r-1", "denied": [n], "items": items}
        assert compact.unpack_answer(compact.pack_answer(answer, "r-1"), "r-1") == answer
    assert len(compact._SHAPES) == before
