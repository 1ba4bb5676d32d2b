"""Snapshot, recovery and idempotency maintenance ops on a live server with a real directory."""

from __future__ import annotations

import base64
from pathlib import Path

import trio

from tests.conftest import Connect
from tests.helpers import start_server

S = "api_requests"
B1 = 20260501


async def test_fetch_and_fetch_chunk_return_the_file_bytes(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, max_request_bytes=1 << 20)
    client = await connect(server.port)
    await client.call("series.batch_add", series=S, items=[[k, B1, k + 1] for k in range(200)])
    assert (await client.call("snapshot.create_all"))["response"] == "OK"
    name = Path((await client.call("snapshot.list"))["response"][0]).name
    on_disk = (tmp_path / name).read_bytes()
    whole = (await client.call("snapshot.fetch", file=name))["response"]
    assert base64.b64decode(whole["data_base64"]) == on_disk
    assert whole["metadata"]["bytes"] == len(on_disk)
    pieces, offset = [], 0
    while True:
        chunk = (await client.call("snapshot.fetch_chunk", file=name, offset=offset, limit=300))[
            "response"
        ]
        pieces.append(base64.b64decode(chunk["data_base64"]))
        offset = chunk["next_offset"]
        if chunk["done"]:
            break
    assert b"".join(pieces) == on_disk
    too_far = await client.call("snapshot.fetch_chunk", file=name, offset=len(on_disk) + 1)
    assert too_far["response"] == "Field offset exceeds snapshot size"


async def test_snapshot_load_restores_a_series_from_its_file(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await client.call("counter.increment", series=S, key=1, value=5, bucket=B1)
    await client.call("snapshot.create", series=S)
    await client.call("counter.increment", series=S, key=1, value=100, bucket=B1)
    name = Path((await client.call("snapshot.list"))["response"][0]).name
    loaded = await client.call("snapshot.load", file=name)
    assert loaded["response"] == f'Tree "{S}" loaded'
    assert (await client.call("counter.sum", series=S, key=1))["response"] == 5
    missing = await client.call("snapshot.load", file="1_nosuch.tree")
    assert missing["error_code"] == "not_found"


async def test_snapshot_info_and_verify_describe_the_directory(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await client.call("counter.increment", series=S, key=1, bucket=B1)
    await client.call("snapshot.create_all")
    await client.call("counter.increment", series=S, key=2, bucket=B1)
    info = (await client.call("snapshot.info"))["response"]
    assert info["dump_count"] == 1
    assert info["last_snapshot_lsn"] == 1
    assert info["idempotency_snapshot"]["record_count"] == 0
    verify = (await client.call("snapshot.verify"))["response"]
    assert verify["status"] == "ok"  # snapshot, then more writes: karma 1.0 said it failed
    assert (verify["restore_snapshot_lsn"], verify["wal_last_lsn"], verify["keys"]) == (1, 2, 2)


async def test_idempotency_prune_and_its_snapshot_chunks(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    for n in range(3):
        await client.call("counter.increment", series=S, key=1, bucket=B1, idempotency_key=f"e{n}")
    none_yet = await client.call("idempotency.snapshot_fetch_chunk")
    assert none_yet["error_code"] == "not_found"
    await client.call("snapshot.create_all")
    chunk = (await client.call("idempotency.snapshot_fetch_chunk", offset=0))["response"]
    assert b'"key":"e0"' in base64.b64decode(chunk["data_base64"])
    assert chunk["metadata"]["record_count"] == 3
    pruned = await client.call("idempotency.prune", before="2999-01-01T00:00:00Z", limit=2)
    assert pruned["response"] == {"deleted": 2}
    stats = (await client.call("system.stats"))["response"]
    assert (stats["idempotency_record_count"], stats["idempotency_pruned"]) == (1, 2)
    again = await client.call("counter.increment", series=S, key=1, bucket=B1, idempotency_key="e0")
    assert again["idempotent"] is False  # pruned: the key is new again


async def test_recovery_checkpoints_are_kept_in_recovery_json(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    answer = await client.call("recovery.checkpoint", source="export", offset=7, event_id="b-9")
    assert answer["response"]["offset"] == "7"
    status = (await client.call("recovery.status", source="export"))["response"]
    assert status["checkpoint_count"] == 1
    assert b'"source":"export"' in (tmp_path / "recovery.json").read_bytes()
    empty = await client.call("recovery.checkpoint", source="x")
    assert empty["response"] == "Field offset or event_id is required"


async def test_a_checkpoint_field_not_given_is_answered_as_null(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    answer = (await client.call("recovery.checkpoint", source="other", event_id="e"))["response"]
    assert list(answer) == ["source", "offset", "event_id", "updated_at_unix"]
    assert (answer["offset"], answer["event_id"]) == (None, "e")
    status = (await client.call("recovery.status", source="other"))["response"]
    assert status["checkpoints"] == [answer]
