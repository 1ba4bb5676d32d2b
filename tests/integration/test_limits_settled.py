"""Settled reservations are remembered compactly and within bounds (issue 23): the newest
`--max-settled-reservations`, for at most the idempotency age; a retry of a forgotten one is
`not_found` and never charges; `karma.limits.json` from before issue 23 still loads."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import LineClient, start_server

TOKENS = "llm_tokens"
MONTH = {"calendar": "month"}
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "limits_before_issue23"


@asynccontextmanager
async def running(directory: Path, *, graceful: bool = False, **options: Any) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, directory, **options)
        yield server.port
        if graceful:
            server.shutdown.set()
        else:
            nursery.cancel_scope.cancel()


def reserve_request(hold_id: str, value: int = 10) -> dict[str, Any]:
    return {
        "id": hold_id,
        "series": TOKENS,
        "key": 42,
        "value": value,
        "max": 10**9,
        "window": MONTH,
    }


async def cycle(client: LineClient, hold_id: str, value: int = 1) -> None:
    """Reserve, then commit at once: what an LLM-budget client does per call."""
    assert (await client.call("limit.reserve", **reserve_request(hold_id)))["success"]
    assert (await client.call("limit.commit", id=hold_id, value=value))["success"]


async def used(client: LineClient) -> int:
    total: int = (await client.call("counter.sum", series=TOKENS, key=42))["response"]
    return total


async def known(client: LineClient, ids: list[str]) -> dict[str, Any]:
    """Each id's `limit.reservation` answer (a forgotten one's is not_found)."""
    return {hold_id: await client.call("limit.reservation", id=hold_id) for hold_id in ids}


async def test_settled_ids_past_the_cap_are_forgotten_oldest_first(tmp_path: Path) -> None:
    async with running(tmp_path, max_settled_reservations=3) as port:
        client = await LineClient.connect(port)
        ids = [f"r-{n}" for n in range(6)]
        for hold_id in ids:
            await cycle(client, hold_id)
        states = await known(client, ids)
        assert [states[i]["error_code"] for i in ids[:3]] == ["not_found"] * 3
        assert [states[i]["response"]["status"] for i in ids[3:]] == ["committed"] * 3
        status = (await client.call("limit.status"))["response"]
        assert status["settled_reservations"] == 3
        assert status["max_settled_reservations"] == 3
        assert status["settled_reservations_pruned"] == 3
        await client.aclose()


async def test_a_commit_retried_after_its_record_was_pruned_never_charges_twice(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, max_settled_reservations=2) as port:
        client = await LineClient.connect(port)
        await cycle(client, "r-0", value=5)
        again = await client.call("limit.commit", id="r-0", value=5)
        assert again["idempotent"] is True  # still remembered: replayed
        for hold_id in ("r-1", "r-2"):
            await cycle(client, hold_id)
        assert await used(client) == 7
        late = await client.call("limit.commit", id="r-0", value=5)
        assert late == {
            "protocol_version": 2,
            "success": False,
            "response": 'Reservation "r-0" not found',
            "error_code": "not_found",
        }
        assert (await client.call("limit.void", id="r-0"))["error_code"] == "not_found"
        assert await used(client) == 7
        await client.aclose()


@pytest.mark.parametrize("how", ["wal_only", "snapshot_between", "final_snapshot"])
async def test_a_restart_remembers_exactly_the_ids_the_server_had(tmp_path: Path, how: str) -> None:
    ids = [f"r-{n}" for n in range(8)]
    async with running(
        tmp_path, graceful=how == "final_snapshot", max_settled_reservations=3
    ) as port:
        client = await LineClient.connect(port)
        for n, hold_id in enumerate(ids):
            await cycle(client, hold_id)
            if n == 3 and how == "snapshot_between":
                assert (await client.call("snapshot.create_all"))["success"]
        before = await known(client, ids)
        await client.aclose()
    async with running(tmp_path, max_settled_reservations=3) as port:
        client = await LineClient.connect(port)
        assert await known(client, ids) == before
        assert [i for i in ids if before[i]["success"]] == ids[-3:]
        assert await used(client) == 8
        await client.aclose()


async def test_karma_limits_json_stays_within_the_cap(tmp_path: Path) -> None:
    ids = [f"r-{n}" for n in range(10)]
    async with running(tmp_path, max_settled_reservations=3) as port:
        client = await LineClient.connect(port)
        for hold_id in ids:
            await cycle(client, hold_id)
        assert (await client.call("snapshot.create_all"))["success"]
        await client.aclose()
    document = json.loads((tmp_path / "karma.limits.json").read_bytes())
    assert [settled["id"] for settled in document["settled"]] == ids[-3:]
    # a server started with a smaller cap cuts the file's list to the newest it may keep
    async with running(tmp_path, max_settled_reservations=2) as port:
        client = await LineClient.connect(port)
        states = await known(client, ids[-3:])
        assert [states[i]["success"] for i in ids[-3:]] == [False, True, True]
        await client.aclose()


async def test_a_limits_file_written_before_issue_23_loads_and_its_retries_replay(
    tmp_path: Path,
) -> None:
    """tests/fixtures/limits_before_issue23: written by f31a55a, whose karma.limits.json kept
    whole fingerprints and answers; every first answer it gave comes back on a retry."""
    for path in FIXTURE.iterdir():
        if path.name not in ("answers.json", "generate.py"):
            shutil.copy(path, tmp_path / path.name)
    recorded = json.loads((FIXTURE / "answers.json").read_text())
    # no age pruning: the file's ids were settled long before this test runs
    async with running(tmp_path, idempotency_max_age_seconds=0) as port:
        client = await LineClient.connect(port)
        for name, request in recorded["requests"].items():
            fields = {k: v for k, v in request.items() if k != "op"}
            again = await client.call(request["op"], **fields)
            assert again == {**recorded["answers"][name], "idempotent": True}, name
        conflict = await client.call("limit.commit", id="r-done", value=700)
        assert conflict["error_code"] == "idempotency_conflict"
        assert conflict["response"] == 'Reservation "r-done" was already committed with value 612'
        states = await known(client, ["r-done", "r-void", "r-denied", "r-late", "r-expired"])
        statuses = [state["response"]["status"] for state in states.values()]
        assert statuses == ["committed", "voided", "denied", "committed_late", "expired"]
        # open for five minutes after the file was written, expired by a server started later
        opened = (await client.call("limit.reservation", id="r-open"))["response"]
        assert opened["status"] in ("held", "overdue", "expired")
        assert await used(client) == 612 + 7
        await client.aclose()
