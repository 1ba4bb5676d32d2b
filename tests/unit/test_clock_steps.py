"""What a stepped wall clock may change (docs/limits.md, "When the clock steps"): hold
deadlines, the day a node writes to, the idempotency table a restart loads."""

from __future__ import annotations

import io
import json

from karma.core import mutations as m
from karma.core.idempotency import IdempotencyTable, Record
from karma.core.limits import UNBOUND, Bounded, Limits
from karma.observability.logs import Logger
from karma.server.clock import NodeClock, day_start_unix

NOW = 1795532400  # 2026-11-24T15:00:00Z
NOW_MS = NOW * 1000
DAY = 86_400
MONO = 5_000_000  # any monotonic reading


def hold(hold_id: str, created: int, ttl_s: int) -> m.LimitHold:
    return m.LimitHold(
        id=hold_id,
        items=[("tokens", 1, 20261124, 5)],
        expires_at_unix_ms=created * 1000 + 250 + ttl_s * 1000,  # the reserve's milliseconds
        created_at_unix=created,
    )


def test_a_loaded_hold_gets_what_is_left_of_its_ttl_on_the_monotonic_clock() -> None:
    limits = Limits()
    limits.apply_hold(hold("h", NOW - 100, ttl_s=600))
    assert limits.holds["h"].deadline_ms == UNBOUND  # never overdue until bounded
    assert limits.bound_expiries(NOW_MS, MONO) == []
    assert limits.holds["h"].deadline_ms == MONO + 500_250
    assert limits.overdue(MONO + 500_249) == []
    assert [h.id for h in limits.overdue(MONO + 500_250)] == ["h"]


def test_an_expiry_more_than_its_ttl_ahead_is_brought_back_to_now_plus_ttl() -> None:
    """Written by a clock a day ahead of this one (a restart after a step back)."""
    limits = Limits()
    limits.apply_hold(hold("h", NOW + DAY, ttl_s=600))
    moved = limits.bound_expiries(NOW_MS, MONO)
    assert moved == [Bounded("h", (NOW + DAY) * 1000 + 250 + 600_000, NOW_MS + 600_000)]
    assert limits.holds["h"].expires_at_ms == NOW_MS + 600_000  # what the next snapshot keeps
    assert limits.holds["h"].deadline_ms == MONO + 600_000
    assert json.loads(json.dumps(limits.documents()))["holds"][0]["expires_at_unix_ms"] == (
        NOW_MS + 600_000
    )


def test_an_expiry_behind_the_clock_is_overdue_at_once() -> None:
    """Written by a clock 8 days behind this one (a restart after a step forward)."""
    limits = Limits()
    limits.apply_hold(hold("h", NOW - 8 * DAY, ttl_s=600))
    assert limits.bound_expiries(NOW_MS, MONO) == []
    assert limits.holds["h"].deadline_ms == MONO
    assert [h.id for h in limits.overdue(MONO)] == ["h"]


def test_a_hold_decided_on_this_node_keeps_the_deadline_of_its_decision() -> None:
    """Its WAL write may take a while, and the wall clock may step meanwhile."""
    limits = Limits()
    mutation = hold("h", NOW, ttl_s=5)
    limits.pend(mutation, deadline_ms=MONO + 5_000)
    limits.unpend(mutation)  # what the engine does before applying it
    limits.apply_hold(mutation)
    assert limits.holds["h"].deadline_ms == MONO + 5_000
    assert limits.bound_expiries(NOW_MS - 2 * 3600 * 1000, MONO + 900) == []  # nothing to bound
    assert limits.holds["h"].deadline_ms == MONO + 5_000


def test_a_failed_hold_write_leaves_no_deadline_for_a_later_hold() -> None:
    limits = Limits()
    failed = hold("h", NOW, ttl_s=5)
    limits.pend(failed, deadline_ms=MONO + 5_000)
    limits.unpend(failed)  # the write failed: never applied
    other = hold("other", NOW, ttl_s=60)
    limits.apply_hold(other)  # replicated, say: no decision here
    assert limits.holds["other"].deadline_ms == UNBOUND
    limits.bound_expiries(NOW_MS, MONO)
    assert limits.holds["other"].deadline_ms == MONO + 60_000  # never more than its TTL


def test_the_ids_waiting_for_a_deadline_stay_bounded_when_nobody_asks() -> None:
    limits = Limits()
    for i in range(5000):
        limits.apply_hold(hold(f"h{i}", NOW, ttl_s=60))
        limits.apply_settle(
            m.LimitSettle(id=f"h{i}", outcome="voided", add=[], settled_at_unix=NOW)
        )
    assert len(limits._unbound) <= 1024 + 1


def record(key: str, created: int) -> Record:
    return Record(key, "counter.increment", "f-" + key, 1, created)


def test_a_restart_loads_the_keys_the_running_node_honoured() -> None:
    """A with the clock 30 days ahead, then B with it corrected: the running node keeps both
    (the age rule runs from each stored record's time), so the loaded table must too."""
    running = IdempotencyTable(max_age_seconds=7 * DAY)
    running.remember(record("A", NOW + 30 * DAY))
    running.remember(record("B", NOW))
    assert set(running.records) == {"A", "B"}
    loaded = IdempotencyTable(max_age_seconds=7 * DAY)
    loaded.load(json.loads(json.dumps(running.documents())))
    assert list(loaded.records) == ["A", "B"]  # the order they were stored in
    # and the next store applies the rule as it would have on the running node
    loaded.remember(record("C", NOW + 40 * DAY))
    running.remember(record("C", NOW + 40 * DAY))
    assert list(loaded.records) == list(running.records) == ["C"]


def test_loading_applies_a_lowered_count_limit_oldest_stored_first() -> None:
    documents = [record(k, NOW + i).document() for i, k in enumerate("abcde")]
    table = IdempotencyTable(max_records=3)
    table.load(documents)
    assert list(table.records) == ["c", "d", "e"]
    assert table.pruned == 2


class FakeWall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_day_never_goes_backwards_and_a_step_back_is_logged_once() -> None:
    midnight = day_start_unix(20261125)
    wall = FakeWall(midnight + 20)
    stream = io.StringIO()
    clock = NodeClock(Logger(stream=stream), wall=wall)
    assert clock.today() == (20261125, midnight + 20)
    assert clock.behind_s() == 0
    wall.now = midnight - 40  # stepped back over midnight
    assert clock.today() == (20261125, midnight - 40)
    assert clock.behind_s() == 40
    wall.now = midnight - 39
    assert clock.today()[0] == 20261125
    [behind] = events(stream)
    assert (behind["event"], behind["day"], behind["wall_day"], behind["gap_s"]) == (
        "clock.behind",
        20261125,
        20261124,
        40,
    )
    wall.now = midnight + 1  # caught up
    assert clock.today()[0] == 20261125
    assert clock.behind_s() == 0
    assert [e["event"] for e in events(stream)] == ["clock.behind", "clock.caught_up"]


def test_a_forward_step_is_followed() -> None:
    wall = FakeWall(NOW)
    clock = NodeClock(Logger(enabled=False), wall=wall)
    assert clock.today()[0] == 20261124
    wall.now = NOW + 8 * DAY
    assert clock.today()[0] == 20261202
    assert clock.behind_s() == 0
