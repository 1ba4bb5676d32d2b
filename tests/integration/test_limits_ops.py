"""The `limit.*` ops on a real socket and a real data directory: spec/limits.md §8's worked
examples, with windows around today's date (the spec's own examples are dated 2026-11-24)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from karma import days
from karma.core import windows as w
from tests.conftest import Connect
from tests.helpers import LineClient, start_server

S = "api_requests"
TOKENS = "llm_tokens"
MONTH = {"calendar": "month"}


def today() -> int:
    return days.today_from_unix(time.time())


def month() -> w.Period:
    return w.period(w.Calendar("month"), today())


def item_answer(
    *, allowed: bool, maximum: int, used: int, held: int, value: int, retry: int | None = None
) -> dict[str, Any]:
    """One limit's view in this month's window, as spec/limits.md §4 shapes it."""
    period = month()
    return {
        "allowed": allowed,
        "max": maximum,
        "used": used,
        "held": held,
        "remaining": max(0, maximum - used - held),
        "value": value,
        "window": {"from": period.first, "to": period.last},
        "reset_at_unix": period.reset_at_unix,
        "retry_after_s": retry,
    }


def wal_entries(directory: Path) -> list[dict[str, Any]]:
    wal = directory / "karma.wal"
    return [json.loads(line)["entry"] for line in wal.read_bytes().splitlines()]


def wal_size(directory: Path) -> int:
    return (directory / "karma.wal").stat().st_size


async def used(client: LineClient, series: str = S, key: int = 42) -> int:
    answer = await client.call("counter.sum", series=series, key=key)
    total: int = answer["response"]
    return total


async def give(client: LineClient, amount: int, series: str = S, key: int = 42) -> None:
    """Usage recorded today without a limit (counter.increment)."""
    answer = await client.call(
        "counter.increment", series=series, key=key, value=amount, bucket=today()
    )
    assert answer["success"], answer


# --- consume: E1, E2, E5, E6, E7 --------------------------------------------------------------


async def test_an_allowed_consume_adds_to_today_and_logs_one_apply(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E1: used was 999 of 1000."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 999)
    answer = await client.call("limit.consume", series=S, key=42, max=1000, window=MONTH)
    assert answer == {
        "protocol_version": 2,
        "success": True,
        "response": item_answer(allowed=True, maximum=1000, used=1000, held=0, value=1),
        "error_code": None,
    }
    assert wal_entries(tmp_path)[-1] == {
        "v": 2,
        "op": "limit.apply",
        "add": [[S, 42, today(), 1]],
    }
    assert await used(client) == 1000


async def test_a_denied_consume_changes_nothing_and_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E2: the same request again is a normal denial, with the seconds until the month resets."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 1000)
    size = wal_size(tmp_path)
    before = int(time.time())
    answer = await client.call("limit.consume", series=S, key=42, max=1000, window=MONTH)
    after = int(time.time())
    assert answer["success"] is True
    response = answer["response"]
    retry = response.pop("retry_after_s")
    reset = month().reset_at_unix
    assert reset - after <= retry <= reset - before
    assert response == {
        k: v
        for k, v in item_answer(allowed=False, maximum=1000, used=1000, held=0, value=1).items()
        if k != "retry_after_s"
    }
    assert "idempotent" not in answer  # a keyless consume: nothing to replay
    assert wal_size(tmp_path) == size
    assert await used(client) == 1000


async def test_a_keyed_consume_retried_replays_its_answer_and_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E5: a retry of an allowed consume gets the saved answer with idempotent:true."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    request = {"series": S, "key": 43, "max": 1000, "window": MONTH, "idempotency_key": "req-77"}
    first = await client.call("limit.consume", **request)
    assert first["idempotent"] is False
    assert first["response"]["allowed"] is True
    entry = wal_entries(tmp_path)[-1]
    assert entry["op"] == "limit.apply"
    assert entry["add"] == [[S, 43, today(), 1]]
    assert entry["idempotency_key"] == "req-77"
    assert entry["answer"] == first["response"]
    size = wal_size(tmp_path)
    for _ in range(3):
        again = await client.call("limit.consume", **request)
        assert again == {**first, "idempotent": True}
    assert wal_size(tmp_path) == size
    assert await used(client, key=43) == 1


async def test_a_keyed_denial_is_remembered_and_replayed_even_after_room_appears(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E6: a denial with a key is logged (add:[]) and stays a denial; a new key decides afresh;
    the same key with another payload conflicts."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 1000)
    request = {"series": S, "key": 42, "max": 1000, "window": MONTH, "idempotency_key": "req-78"}
    denied = await client.call("limit.consume", **request)
    assert denied["response"]["allowed"] is False
    assert denied["idempotent"] is False
    entry = wal_entries(tmp_path)[-1]
    assert (entry["op"], entry["add"], entry["idempotency_key"]) == ("limit.apply", [], "req-78")
    assert await used(client) == 1000
    # room appears: the denial is still the answer to req-78
    answer = await client.call("counter.decrement", series=S, key=42, value=10, bucket=today())
    assert answer["success"]
    assert await client.call("limit.consume", **request) == {**denied, "idempotent": True}
    fresh = await client.call("limit.consume", **{**request, "idempotency_key": "req-79"})
    assert fresh["response"]["allowed"] is True
    assert fresh["response"]["used"] == 991
    conflict = await client.call("limit.consume", **{**request, "max": 2000})
    assert conflict == {
        "protocol_version": 2,
        "success": False,
        "response": "Idempotency key was already used with a different request",
        "error_code": "idempotency_conflict",
    }
    assert await used(client) == 991


async def test_items_are_all_or_nothing(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E7: item 2 does not fit, so nothing is written for items 0 and 1 either."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 55)
    await give(client, 49500, series=TOKENS)
    size = wal_size(tmp_path)
    items = [
        {"series": S, "key": 42, "max": 100, "window": {"days": 1}},
        {"series": S, "key": 42, "max": 2000, "window": MONTH},
        {"series": TOKENS, "key": 42, "value": 900, "max": 50000, "window": MONTH},
    ]
    before = int(time.time())
    answer = await client.call("limit.consume", items=items)
    response = answer["response"]
    retry = response["items"][2].pop("retry_after_s")
    reset = month().reset_at_unix
    assert reset - int(time.time()) <= retry <= reset - before
    day = today()
    assert response == {
        "allowed": False,
        "denied": [2],
        "retry_after_s": retry,
        "items": [
            {
                "allowed": True,
                "max": 100,
                "used": 55,
                "held": 0,
                "remaining": 45,
                "value": 1,
                "window": {"from": day, "to": day},
                "reset_at_unix": w.period(w.Rolling(1), day).reset_at_unix,
                "retry_after_s": None,
            },
            item_answer(allowed=True, maximum=2000, used=55, held=0, value=1),
            {
                k: v
                for k, v in item_answer(
                    allowed=False, maximum=50000, used=49500, held=0, value=900
                ).items()
                if k != "retry_after_s"
            },
        ],
    }
    assert wal_size(tmp_path) == size
    assert (await used(client), await used(client, TOKENS)) == (55, 49500)
    # the same items with room for all: every series is charged once, in one entry
    items[2]["value"] = 500
    allowed = await client.call("limit.consume", items=items)
    assert allowed["response"]["allowed"] is True
    assert allowed["response"]["denied"] == []
    assert wal_entries(tmp_path)[-1]["add"] == [[S, 42, day, 1], [TOKENS, 42, day, 500]]
    assert (await used(client), await used(client, TOKENS)) == (56, 50000)


# --- reservations: E9-E12 -----------------------------------------------------------------------


def reserve_request(hold_id: str, value: int = 4000, **extra: Any) -> dict[str, Any]:
    return {
        "id": hold_id,
        "series": TOKENS,
        "key": 42,
        "value": value,
        "max": 50000,
        "window": MONTH,
        **extra,
    }


async def held(client: LineClient) -> int:
    answer = await client.call(
        "limit.check", series=TOKENS, key=42, value=0, max=50000, window=MONTH
    )
    amount: int = answer["response"]["held"]
    return amount


async def test_a_reservation_holds_then_a_smaller_commit_records_it_and_releases_the_rest(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E9, E10: 30000 of 50000 used; hold 4000, commit 612; a repeat replays, another value
    conflicts."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 30000, series=TOKENS)
    before_ms = int(time.time() * 1000)
    reserved = await client.call("limit.reserve", **reserve_request("r-1", ttl_s=300))
    after_ms = int(time.time() * 1000)
    assert reserved["idempotent"] is False
    response = dict(reserved["response"])
    expires = response.pop("expires_at_unix_ms")
    assert before_ms + 300_000 <= expires <= after_ms + 300_000
    assert response == {
        "id": "r-1",
        "status": "held",
        **item_answer(allowed=True, maximum=50000, used=30000, held=4000, value=4000),
    }
    assert list(reserved["response"])[:3] == ["allowed", "id", "status"]
    entry = wal_entries(tmp_path)[-1]
    assert (entry["op"], entry["id"], entry["items"]) == (
        "limit.hold",
        "r-1",
        [[TOKENS, 42, today(), 4000]],
    )
    assert await used(client, TOKENS) == 30000  # a hold is not usage
    assert await held(client) == 4000
    status = (await client.call("limit.reservation", id="r-1"))["response"]
    assert (status["status"], status["held"], status["expires_at_unix_ms"]) == (
        "held",
        4000,
        expires,
    )
    # the same reserve again replays; another payload under the same id conflicts
    again = await client.call("limit.reserve", **reserve_request("r-1", ttl_s=300))
    assert again == {**reserved, "idempotent": True}
    other = await client.call("limit.reserve", **reserve_request("r-1", 4001, ttl_s=300))
    assert other["error_code"] == "idempotency_conflict"
    assert other["response"] == 'Reservation "r-1" was already used with a different request'

    committed = await client.call("limit.commit", id="r-1", value=612)
    assert committed == {
        "protocol_version": 2,
        "success": True,
        "response": {
            "id": "r-1",
            "status": "committed",
            "value": 612,
            "released": 3388,
            "over_reserved": 0,
        },
        "idempotent": False,
        "error_code": None,
    }
    assert wal_entries(tmp_path)[-1]["add"] == [[TOKENS, 42, today(), 612]]
    assert (await used(client, TOKENS), await held(client)) == (30612, 0)
    size = wal_size(tmp_path)
    assert await client.call("limit.commit", id="r-1", value=612) == {
        **committed,
        "idempotent": True,
    }
    conflict = await client.call("limit.commit", id="r-1", value=700)
    assert conflict == {
        "protocol_version": 2,
        "success": False,
        "response": 'Reservation "r-1" was already committed with value 612',
        "error_code": "idempotency_conflict",
    }
    void = await client.call("limit.void", id="r-1")
    assert void["error_code"] == "idempotency_conflict"
    assert wal_size(tmp_path) == size
    assert await used(client, TOKENS) == 30612
    assert (await client.call("limit.reservation", id="r-1"))["response"]["status"] == "committed"


async def test_committing_more_than_was_held_records_the_whole_value(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E10: the work is done, so its cost is recorded even past the hold (and past max)."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 40000, series=TOKENS)
    for hold_id, value in (("r-2", 4000), ("r-3", 7)):
        answer = await client.call("limit.reserve", **reserve_request(hold_id, value))
        assert answer["response"]["status"] == "held"
    answer = await client.call("limit.commit", id="r-2", value=5000)
    assert answer["response"] == {
        "id": "r-2",
        "status": "committed",
        "value": 5000,
        "released": 0,
        "over_reserved": 1000,
    }
    assert (await used(client, TOKENS), await held(client)) == (45000, 7)
    # a commit without a value records what was held
    whole = await client.call("limit.commit", id="r-3")
    assert (whole["response"]["value"], whole["response"]["released"]) == (7, 0)
    assert (await used(client, TOKENS), await held(client)) == (45007, 0)
    # a denied reserve holds nothing, and is remembered as denied
    denied = await client.call("limit.reserve", **reserve_request("r-4", 5000))
    assert (denied["response"]["allowed"], denied["response"]["status"]) == (False, "denied")
    assert denied["response"]["held"] == 0
    assert (await client.call("limit.reservation", id="r-4"))["response"]["status"] == "denied"
    conflict = await client.call("limit.commit", id="r-4")
    assert conflict["response"] == 'Reservation "r-4" was already denied'
    assert await used(client, TOKENS) == 45007


async def test_a_voided_reservation_cannot_be_committed(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E11."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 1, series=TOKENS)
    assert (await client.call("limit.reserve", **reserve_request("r-3")))["success"]
    voided = await client.call("limit.void", id="r-3")
    assert voided == {
        "protocol_version": 2,
        "success": True,
        "response": {"id": "r-3", "status": "voided", "released": 4000},
        "idempotent": False,
        "error_code": None,
    }
    assert await held(client) == 0
    assert await client.call("limit.void", id="r-3") == {**voided, "idempotent": True}
    assert await client.call("limit.commit", id="r-3", value=10) == {
        "protocol_version": 2,
        "success": False,
        "response": 'Reservation "r-3" was already voided',
        "error_code": "idempotency_conflict",
    }
    assert await used(client, TOKENS) == 1


async def wait_status(client: LineClient, hold_id: str, status: str) -> dict[str, Any]:
    while True:
        answer = await client.call("limit.reservation", id=hold_id)
        if answer["response"]["status"] == status:
            found: dict[str, Any] = answer["response"]
            return found
        await trio.sleep(0.05)


async def test_an_expired_reservation_is_settled_by_the_sweeper_and_can_still_be_committed(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E12: the master writes `limit.settle` expired soon after the TTL; a late commit still
    records its usage (committed_late), a late void answers expired."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await give(client, 100, series=TOKENS)
    for hold_id in ("r-4", "r-5"):
        answer = await client.call("limit.reserve", **reserve_request(hold_id, ttl_s=1))
        assert answer["response"]["status"] == "held"
    assert await held(client) == 8000
    with trio.fail_after(4):  # the TTL, plus the sweeper's wake-up (at most 1 s), plus slack
        for hold_id in ("r-4", "r-5"):
            await wait_status(client, hold_id, "expired")
    expiries = [e for e in wal_entries(tmp_path) if e["op"] == "limit.settle"]
    assert [(e["id"], e["outcome"], e["add"]) for e in expiries] == [
        ("r-4", "expired", []),
        ("r-5", "expired", []),
    ]
    assert (await used(client, TOKENS), await held(client)) == (100, 0)

    late = await client.call("limit.commit", id="r-4", value=900)
    assert late["response"] == {
        "id": "r-4",
        "status": "committed_late",
        "value": 900,
        "released": 0,
        "over_reserved": 0,
    }
    assert late["idempotent"] is False
    assert await client.call("limit.commit", id="r-4", value=900) == {**late, "idempotent": True}
    assert await used(client, TOKENS) == 1000
    void = await client.call("limit.void", id="r-5")
    assert void["response"] == {"id": "r-5", "status": "expired", "released": 0}
    assert void["idempotent"] is True
    assert await used(client, TOKENS) == 1000


# --- errors: E13, capacity, internal ops -------------------------------------------------------


async def test_bad_requests_are_refused_with_their_exact_messages(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """E13 and spec/limits.md §7."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    day = today()
    base = {"series": S, "key": 42, "max": 1000}
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        (
            "limit.consume",
            {**base, "window": {"days": 7, "calendar": "month"}},
            "validation_error",
            "Field window must have exactly one of days, calendar, months, from",
        ),
        (
            "limit.consume",
            {**base, "window": {"months": 1, "anchor": 20260231}},
            "validation_error",
            "Field window.anchor must be a valid YYYYMMDD day",
        ),
        (
            "limit.consume",
            {**base, "value": 0, "window": {"days": 1}},
            "validation_error",
            "Field value must be greater than 0",
        ),
        (
            "limit.consume",
            {**base, "bucket": 20261101, "window": {"days": 1}},
            "validation_error",
            "Field bucket is not supported by limit.consume",
        ),
        (
            "limit.consume",
            {"series": S, "key": 42, "window": {"days": 1}},
            "validation_error",
            "Field max is required",
        ),
        (
            "limit.consume",
            {**base, "window": {"from": 20000101, "to": 20000102}},
            "validation_error",
            f"Field window must contain today {day}",
        ),
        (
            "limit.consume",
            {
                "items": [
                    {**base, "value": 1, "window": {"days": 1}},
                    {**base, "value": 2, "window": MONTH},
                ]
            },
            "validation_error",
            "Items for series api_requests key 42 disagree on value",
        ),
        ("limit.commit", {"id": "r-9"}, "not_found", 'Reservation "r-9" not found'),
        ("limit.void", {"id": "r-9"}, "not_found", 'Reservation "r-9" not found'),
        ("limit.reservation", {"id": "r-9"}, "not_found", 'Reservation "r-9" not found'),
        (
            "limit.check",
            {**base, "series": "nosuch", "window": {"days": 1}},
            "not_found",
            'Tree "nosuch" not found',
        ),
    ]
    size = wal_size(tmp_path)
    for op, fields, code, message in cases:
        answer = await client.call(op, **fields)
        assert (answer["error_code"], answer["response"]) == (code, message), (op, fields)
    tz = await client.call("limit.consume", **base, window={"days": 1, "tz": "Asia/Shanghai"})
    assert tz["error_code"] == "validation_error"
    assert wal_size(tmp_path) == size


@pytest.mark.parametrize("op", ["limit.apply", "limit.hold", "limit.settle"])
async def test_effect_entries_sent_by_a_client_are_unknown_commands(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect, op: str
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    fields = {
        "add": [[S, 42, today(), 1000]],
        "id": "x",
        "items": [[S, 42, today(), 1]],
        "outcome": "committed",
        "expires_at_unix_ms": 1,
        "created_at_unix": 1,
        "settled_at_unix": 1,
    }
    answer = await client.call(op, **fields)
    assert answer["error_code"] == "unknown_command"
    assert (await client.call("tree.list"))["response"] == []


async def test_open_reservations_past_the_configured_maximum_are_refused(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, max_open_reservations=2)
    client = await connect(server.port)
    for hold_id in ("a", "b"):
        assert (await client.call("limit.reserve", **reserve_request(hold_id, 1)))["success"]
    full = await client.call("limit.reserve", **reserve_request("c", 1))
    assert full == {
        "protocol_version": 2,
        "success": False,
        "response": "Open reservations limit 2 reached",
        "error_code": "capacity_exceeded",
    }
    # a refused reserve is not remembered: once there is room, the same id is decided
    assert (await client.call("limit.void", id="a"))["success"]
    again = await client.call("limit.reserve", **reserve_request("c", 1))
    assert again["response"]["status"] == "held"
    # replaying a known id needs no room
    assert (await client.call("limit.reserve", **reserve_request("b", 1)))["idempotent"] is True
    status = (await client.call("limit.status"))["response"]
    assert (status["open_reservations"], status["max_open_reservations"]) == (2, 2)


# --- restart ---------------------------------------------------------------------------------


@asynccontextmanager
async def running(directory: Path, *, graceful: bool) -> AsyncIterator[int]:
    """A server on `directory` for the block; then stopped gracefully (a final snapshot) or
    cancelled, which leaves only what the WAL holds."""
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, directory)
        yield server.port
        if graceful:
            server.shutdown.set()
        else:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["wal_only", "snapshot_between", "final_snapshot"])
async def test_a_restart_keeps_holds_settlements_and_keyed_answers(
    tmp_path: Path, how: str
) -> None:
    request = {"series": S, "key": 42, "max": 5, "window": MONTH}
    async with running(tmp_path, graceful=how == "final_snapshot") as port:
        client = await LineClient.connect(port)
        first = await client.call("limit.consume", **request, value=4, idempotency_key="c-1")
        denied = await client.call("limit.consume", **request, value=4, idempotency_key="c-2")
        assert denied["response"]["allowed"] is False
        reserved = {}
        for hold_id in ("h-open", "h-done", "h-void"):
            reserved[hold_id] = await client.call("limit.reserve", **reserve_request(hold_id, 10))
            assert reserved[hold_id]["response"]["status"] == "held"
        if how == "snapshot_between":
            assert (await client.call("snapshot.create_all"))["success"]
        committed = await client.call("limit.commit", id="h-done", value=3)
        voided = await client.call("limit.void", id="h-void")
        await client.aclose()
    sidecar = tmp_path / "karma.limits.json"
    assert sidecar.exists() is (how != "wal_only")
    async with running(tmp_path, graceful=False) as port:
        client = await LineClient.connect(port)
        assert await client.call("limit.consume", **request, value=4, idempotency_key="c-1") == {
            **first,
            "idempotent": True,
        }
        assert await client.call("limit.consume", **request, value=4, idempotency_key="c-2") == {
            **denied,
            "idempotent": True,
        }
        for hold_id, answer in reserved.items():
            again = await client.call("limit.reserve", **reserve_request(hold_id, 10))
            assert again == {**answer, "idempotent": True}
        open_hold = (await client.call("limit.reservation", id="h-open"))["response"]
        assert (open_hold["status"], open_hold["held"]) == ("held", 10)
        assert await held(client) == 10
        assert await client.call("limit.commit", id="h-done", value=3) == {
            **committed,
            "idempotent": True,
        }
        assert await client.call("limit.void", id="h-void") == {**voided, "idempotent": True}
        assert await used(client) == 4
        assert await used(client, TOKENS) == 3
        status = (await client.call("limit.status"))["response"]
        assert (status["open_reservations"], status["settled_reservations"]) == (1, 2)
        await client.aclose()


async def test_a_snapshot_cut_between_the_limits_file_and_its_meta_counts_no_hold_twice(
    tmp_path: Path,
) -> None:
    """A kill after `snapshot.create_all` replaced karma.limits.json but before it replaced
    the file's .meta.json (and so before the WAL was truncated): the newer document, the older
    LSN, and the WAL since that LSN. Replaying the holds the document already has must not
    count them again."""
    meta = tmp_path / "karma.limits.json.meta.json"
    async with running(tmp_path, graceful=False) as port:
        client = await LineClient.connect(port)
        await give(client, 1, series=TOKENS)
        assert (await client.call("limit.reserve", **reserve_request("h-1")))["success"]
        assert (await client.call("snapshot.create_all"))["success"]
        older_meta = meta.read_bytes()
        for hold_id in ("h-2", "h-3"):
            assert (await client.call("limit.reserve", **reserve_request(hold_id)))["success"]
        assert (await client.call("limit.commit", id="h-3", value=5))["success"]
        wal_since = (tmp_path / "karma.wal").read_bytes()
        assert (await client.call("snapshot.create_all"))["success"]
        await client.aclose()
    meta.write_bytes(older_meta)
    (tmp_path / "karma.wal").write_bytes(wal_since)
    async with running(tmp_path, graceful=False) as port:
        client = await LineClient.connect(port)
        assert await held(client) == 8000
        assert await used(client, TOKENS) == 6
        statuses = [
            (await client.call("limit.reservation", id=hold_id))["response"]["status"]
            for hold_id in ("h-1", "h-2", "h-3")
        ]
        assert statuses == ["held", "held", "committed"]
        status = (await client.call("limit.status"))["response"]
        assert status["open_reservations"] == 2
        for hold_id in ("h-1", "h-2"):
            assert (await client.call("limit.void", id=hold_id))["success"]
        assert await held(client) == 0
        await client.aclose()
