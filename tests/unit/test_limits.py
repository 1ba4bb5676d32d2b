"""Limit decisions (karma/core/limits.py) while effects are on their way to disk."""

from __future__ import annotations

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
