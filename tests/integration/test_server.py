"""The server as a trio task on a real loopback socket, with a real data directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import trio

from tests.conftest import Connect
from tests.helpers import start_server

S = "api_requests"
B1 = 20260501


def inc(key: int, value: int = 1, bucket: int = B1, series: str = S) -> bytes:
    return (
        json.dumps(
            {
                "v": 2,
                "op": "counter.increment",
                "series": series,
                "key": key,
                "bucket": bucket,
                "value": value,
            }
        ).encode()
        + b"\n"
    )


async def test_a_pipeline_is_answered_in_order_and_reads_see_earlier_writes(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    burst = (
        inc(1) * 50 + b'{"v":2,"op":"counter.sum","series":"api_requests","key":1}\n' + inc(1, 2)
    )
    await client.send_raw(burst)
    answers = [await client.reply() for _ in range(52)]
    assert [a["response"] for a in answers[:50]] == [1] * 50
    assert answers[50]["response"] == 50
    assert answers[51]["response"] == 2
    assert (await client.call("counter.sum", series=S, key=1))["response"] == 52


async def test_a_client_that_waits_for_each_answer_can_then_pipeline_and_split_lines(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """After lone requests the server waits for readiness before reading (no eager recv):
    whatever the client does next — a burst, a line in pieces, a pause — is still answered."""
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    with trio.fail_after(10):
        for _ in range(3):  # one request in flight at a time
            await client.send_raw(inc(7))
            assert (await client.reply())["response"] == 1
        await client.send_raw(inc(7) * 40)  # then a pipelined burst
        assert [(await client.reply())["response"] for _ in range(40)] == [1] * 40
        for _ in range(3):
            await client.send_raw(inc(7))
            assert (await client.reply())["response"] == 1
        line = inc(7, 5)
        await client.send_raw(line[:10])  # a line in two pieces, with a pause between
        await trio.sleep(0.05)
        await client.send_raw(line[10:])
        assert (await client.reply())["response"] == 5
        assert (await client.call("counter.sum", series=S, key=7))["response"] == 51


async def test_answers_to_one_read_leave_in_one_write(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await client.send_raw(b'{"v":2,"op":"system.ping"}\n' * 20)
    with trio.fail_after(5):
        data = b""
        while data.count(b"\n") < 20:
            data += await client.stream.receive_some(1 << 16)
    assert data.count(b'"pong"') == 20


async def test_a_request_over_the_limit_is_refused_and_the_connection_closed(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, max_request_bytes=128)
    client = await connect(server.port)
    assert (await client.call("system.ping"))["response"] == "pong"
    await client.send_raw(b'{"v":2,"op":"tree.create","series":"' + b"x" * 200 + b'"}\n')
    answer = await client.reply()
    assert answer["error_code"] == "request_too_large"
    assert answer["response"] == "Request exceeds 128 bytes"
    with trio.fail_after(5):
        assert await client.line() is None


async def test_an_idle_connection_is_closed_after_the_read_timeout(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, read_timeout=0.2)
    client = await connect(server.port)
    assert (await client.call("system.ping"))["success"] is True
    with trio.fail_after(5):
        assert await client.line() is None


async def test_a_response_over_the_limit_is_refused_and_the_connection_kept(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, max_response_bytes=200)
    client = await connect(server.port)
    await client.call("series.batch_add", series=S, items=[[k, B1, 1] for k in range(50)])
    answer = await client.call("counter.batch_sum", series=S, keys=list(range(50)))
    assert answer["error_code"] == "response_too_large"
    assert (await client.call("system.ping"))["response"] == "pong"


async def test_large_answers_of_one_read_leave_in_slices_in_order(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    """~300 KB of answers to one read, sent in ~64 KiB slices: same answers, same order, and
    reads still see the writes before them across a slice boundary."""
    server = await start_server(
        nursery, tmp_path, max_response_bytes=65536, max_request_bytes=65536
    )
    client = await connect(server.port)
    await client.call("series.batch_add", series=S, items=[[k, B1, 1] for k in range(1000)])
    batch_sum = (
        json.dumps({"v": 2, "op": "counter.batch_sum", "series": S, "keys": list(range(1000))})
        + "\n"
    ).encode()
    one_sum = b'{"v":2,"op":"counter.sum","series":"api_requests","key":1}\n'
    await client.send_raw(
        inc(1) + batch_sum * 6 + inc(1, 2) + one_sum + batch_sum * 6 + inc(1, 3) + one_sum
    )
    answers = [await client.reply() for _ in range(17)]
    sums = [a["response"] for a in answers if isinstance(a["response"], list)]
    assert len(sums) == 12
    assert sum(len(json.dumps(s)) for s in sums) > 4 * 65536
    # increments answer their amount; each sum sees every write before it
    small = [a["response"] for a in answers if not isinstance(a["response"], list)]
    assert small == [1, 2, 4, 3, 7]
    assert all(s == sums[0] for s in sums[:6])
    assert all(s == sums[6] for s in sums[6:])
    assert sums[0] != sums[6]


async def test_tokens_are_required_and_read_tokens_only_read(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path, auth_token="full", read_auth_token="read")
    client = await connect(server.port)
    assert (await client.call("system.ping"))["error_code"] == "unauthorized"
    assert (await client.call("system.ping", token="wrong"))["error_code"] == "unauthorized"
    assert (await client.call("counter.increment", series=S, key=1, token="full"))["success"]
    refused = await client.call("counter.increment", series=S, key=1, token="read")
    assert refused["error_code"] == "forbidden"
    assert (await client.call("counter.sum", series=S, key=1, token="read"))["response"] == 1


async def test_bad_input_of_every_type_in_every_field_never_breaks_the_connection(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(nursery, tmp_path)
    client = await connect(server.port)
    await client.call("counter.increment", series=S, key=7, value=5, bucket=B1)
    values: list[object] = [None, True, -1, 1.5, "x", "", [], {}, [1, 2], {"a": 1}, 2**64]
    for field in [
        "series",
        "tree",
        "key",
        "keys",
        "value",
        "bucket",
        "items",
        "range",
        "limit",
        "cursor",
        "token",
    ]:
        for op in [
            "counter.increment",
            "counter.sum",
            "counter.batch_sum",
            "series.batch_add",
            "tree.keys",
            "tree.top",
        ]:
            for value in values:
                base: dict[str, object] = {
                    "series": S,
                    "key": 7,
                    "keys": [7],
                    "items": [[7, B1, 1]],
                    "value": 1,
                }
                base[field] = value
                answer = await client.call(op, **base)
                assert answer["error_code"] != "internal_error", (op, field, value, answer)
    total = (await client.call("counter.sum", series=S, key=7))["response"]
    assert total >= 5


async def test_random_bytes_and_json_never_kill_the_server_nor_lose_data(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = await start_server(nursery, tmp_path, max_request_bytes=4096)
    writer = await connect(server.port)
    await writer.call("counter.increment", series=S, key=1, value=41, bucket=B1)
    for _ in range(30):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        fuzzer = await connect(server.port)
        await fuzzer.send_raw(junk.replace(b"\n", b" ") + b"\n")
        with trio.fail_after(5):
            line = await fuzzer.line()
        if line is not None:
            assert b"internal_error" not in line, (seed, junk)
    for _ in range(200):
        doc = {
            rng.choice(["v", "op", "series", "key", "items", "range", "value"]): rng.choice(
                [2, "counter.increment", "counter.sum", None, [], {}, -5, "a", 1e300]
            )
            for _ in range(rng.randrange(1, 6))
        }
        answer = await writer.call(str(doc.pop("op", "counter.sum")), **doc)
        assert answer["error_code"] != "internal_error", (seed, doc, answer)
    assert (await writer.call("counter.sum", series=S, key=1))["response"] >= 41


async def test_a_large_read_past_the_query_timeout_is_refused_and_counted(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(
        nursery, tmp_path, query_timeout_ms=1, max_request_bytes=1 << 20, wal=False
    )
    client = await connect(server.port)
    for start in range(0, 200_000, 5000):
        items = [[key, B1, 1] for key in range(start, start + 5000)]
        assert (await client.call("series.batch_add", series=S, items=items))["success"]
    answer = await client.call("tree.top", series=S, limit=10)
    assert answer["error_code"] == "query_timeout"
    assert (await client.call("system.stats"))["response"]["query_timeout_count"] == 1
    assert (await client.call("counter.sum", series=S, key=7))["response"] == 1


async def test_a_client_that_stops_reading_is_cut_after_the_write_timeout(
    nursery: trio.Nursery, tmp_path: Path, connect: Connect
) -> None:
    server = await start_server(
        nursery, tmp_path, write_timeout=0.3, max_request_bytes=1 << 20, max_response_bytes=0
    )
    client = await connect(server.port)
    await client.call("series.batch_add", series=S, items=[[k, B1, 1] for k in range(2000)])
    big = (
        json.dumps(
            {"v": 2, "op": "counter.batch_sum", "series": S, "keys": list(range(10_000))}
        ).encode()
        + b"\n"
    )
    cut_while_sending = False
    try:
        with trio.fail_after(30):  # without a write timeout both sides would block forever
            await client.send_raw(big * 200)  # ~60 MB of answers that nobody reads
    except trio.BrokenResourceError:
        cut_while_sending = True  # the server already gave up on us
    await trio.sleep(1.5)
    received = 0
    with trio.fail_after(10):
        try:
            while True:
                chunk = await client.stream.receive_some(1 << 20)
                if not chunk:
                    break  # the server gave up on us: closed...
                received += len(chunk)
        except trio.BrokenResourceError:
            pass  # ...or reset, with our unread requests still in its buffer
    assert cut_while_sending or received < 200 * 250_000
