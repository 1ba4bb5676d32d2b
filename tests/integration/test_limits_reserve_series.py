"""A held reserve creates its series, as an allowed consume and counter.increment do: once the
hold has settled (expired or voided), `limit.check` answers `allowed` with `used` 0, not
`not_found` (issue 26, item 3). A denied reserve creates nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.conftest import Connect
from tests.helpers import LineClient, start_server

FRESH = "fresh_tokens"
MONTH = {"calendar": "month"}


def charge(**extra: Any) -> dict[str, Any]:
    return {"series": FRESH, "key": 7, "value": 10, "max": 100, "window": MONTH, **extra}


async def check(client: LineClient) -> dict[str, Any]:
    answer: dict[str, Any] = await client.call("limit.check", **charge(value=1))
    return answer


async def wait_status(client: LineClient, hold_id: str, status: str) -> None:
    while True:
        answer = await client.call("limit.reservation", id=hold_id)
        if answer["response"]["status"] == status:
            return
        await trio.sleep(0.05)


async def test_a_hold_on_a_fresh_series_left_to_expire_leaves_the_series_at_zero(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    reserved = await client.call("limit.reserve", id="r-1", ttl_s=1, **charge())
    assert reserved["response"]["status"] == "held"
    assert (await client.call("tree.list"))["response"] == [FRESH]
    with trio.fail_after(30):  # the TTL and the sweeper's wake-up; generous under load
        await wait_status(client, "r-1", "expired")
    answer = await check(client)
    assert answer["success"], answer
    item = answer["response"]
    assert (item["allowed"], item["used"], item["held"]) == (True, 0, 0)
    assert (await client.call("counter.sum", series=FRESH, key=7))["response"] == 0


async def test_the_series_survives_a_restart_from_the_wal_and_a_void(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    first = tmp_path / "a"
    first.mkdir()
    async with trio.open_nursery() as inner:
        server = await start_server(inner, first)
        client = await connect(server.port)
        assert (await client.call("limit.reserve", id="r-2", **charge()))["success"]
        voided = await client.call("limit.void", id="r-2")
        assert voided["response"]["status"] == "voided"
        answer = await check(client)
        assert (answer["response"]["allowed"], answer["response"]["used"]) == (True, 0)
        inner.cancel_scope.cancel()  # no shutdown snapshot: the restart reads the WAL only
    server = await start_server(nursery, first)
    client = await connect(server.port)
    answer = await check(client)
    assert answer["success"], answer
    assert (answer["response"]["allowed"], answer["response"]["used"]) == (True, 0)


async def test_a_denied_reserve_creates_no_series(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    denied = await client.call("limit.reserve", id="r-3", **charge(value=101))
    assert denied["response"]["status"] == "denied"
    assert (await client.call("tree.list"))["response"] == []
    assert (await check(client))["error_code"] == "not_found"
