"""karma.client against a real server process: every method, errors, pool, restarts, retries."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio

from karma import client as k
from tests.process.proc import Proc

pytestmark = pytest.mark.process
S = "api_requests"
D1 = dt.date(2026, 5, 1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(
        tmp_path / "data",
        "--wal-fsync=false",
        "--auth-token=full",
        "--read-auth-token=read",
        "--max-response-bytes=200000",
        "--max-request-bytes=1048576",
    )
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def karma(server: Proc) -> Iterator[k.Client]:
    with k.Client(port=server.port, token="full", timeout=5) as client:
        yield client


def test_every_method_answers_typed_results(karma: k.Client) -> None:
    assert karma.ping() == "pong"
    assert karma.health().status == "ok"
    assert karma.increment(S, 1, 5, bucket=D1) == 5
    assert karma.decrement(S, 1, 2, bucket=20260501) == 2
    assert karma.record_usage(S, 2, 7, day=D1) == 7
    assert karma.sum(S, 1) == 3
    assert karma.usage(S, 2, since=D1, until=D1) == 7
    assert karma.series(S, 1, D1, D1) == {20260501: 3}
    assert karma.batch_sum(S, [1, 2, 3]) == {1: 3, 2: 7, 3: 0}
    assert karma.usages(S, [1, 2], since=D1, until=D1) == {1: 3, 2: 7}
    assert karma.multi_sum([(S, 1), (S, 2)]) == {(S, 1): 3, (S, 2): 7}
    assert karma.batch_add(S, [(3, D1, 4), (4, D1, 1)]) == {"applied": 2, "total": 5}
    assert karma.batch_set(S, [(4, D1, 10)]) == {"applied": 1}
    info = karma.tree_info(S)
    assert (info.key_count, info.total) == (4, 24)
    assert [kt.key for kt in karma.tree_keys(S, limit=2).keys] == [1, 2]
    assert karma.tree_top(S, 1)[0] == k.TopItem(key=4, value=10)
    assert karma.tree_summary(S)["total"] == 24
    assert karma.tree_series(S, D1, D1)[4] == {20260501: 10}
    assert karma.tree_list() == [S]
    assert karma.batch_reset(S, [3]) == {"reset": 1, "missing": 0}
    assert karma.delete_range(S, D1, D1, key=4) is True
    assert karma.batch_delete_range(S, [1], D1, D1) == {"deleted": 1, "missing": 0}
    assert karma.reset(S, 2) == "OK"
    assert karma.tree_create("other") == "OK"
    assert karma.delete_before("other", D1) == "OK"
    assert karma.compact("other") == "OK"
    assert karma.compact() == "OK"
    assert karma.tree_drop("other") == "OK"
    assert karma.ingest_begin("st", "add")["status"] == "active"
    assert karma.ingest_chunk("st", S, 1, [(9, D1, 1)])["applied"] == 1
    assert karma.ingest_commit("st")["status"] == "committed"
    assert karma.ingest_begin("st2")["status"] == "active"
    assert karma.ingest_abort("st2")["status"] == "aborted"
    assert karma.snapshot_create_all() == "OK"
    assert karma.snapshot_list()
    assert karma.snapshot_info()["dump_count"] >= 1
    assert karma.snapshot_verify()["status"] == "ok"
    assert karma.stats()["keys"] >= 1
    assert "karma_commands_total" in karma.metrics()
    assert karma.request("counter.sum", series=S, key=9) == 1


def test_errors_map_to_their_classes(server: Proc, karma: k.Client) -> None:
    with pytest.raises(k.NotFound):
        karma.sum("nosuch", 1)
    assert karma.usage("nosuch", 1) == 0  # the domain verb: nothing recorded yet
    assert karma.usages("nosuch", [1, 2]) == {1: 0, 2: 0}
    with pytest.raises(k.ValidationError, match="greater than or equal to 0"):
        karma.increment(S, -1)
    with pytest.raises(k.UnknownCommand):
        karma.request("nope")
    karma.increment(S, 1, idempotency_key="ev")
    with pytest.raises(k.IdempotencyConflict):
        karma.increment(S, 1, 2, idempotency_key="ev")
    karma.batch_add(S, [(key, D1, 1) for key in range(10_000)])
    with pytest.raises(k.ResponseTooLarge):
        karma.batch_sum(S, list(range(10_000)))
    with k.Client(port=server.port) as anonymous, pytest.raises(k.Unauthorized):
        anonymous.ping()
    with k.Client(port=server.port, token="read") as reader, pytest.raises(k.Forbidden):
        reader.increment(S, 1)
    assert not k.NotFound.retriable
    assert k.ConnectionFailed.retriable


def test_the_pool_serves_32_threads(karma: k.Client) -> None:
    errors: list[BaseException] = []

    def work(key: int) -> None:
        try:
            for _ in range(50):
                karma.increment(S, key)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(key,)) for key in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert karma.batch_sum(S, list(range(32))) == dict.fromkeys(range(32), 50)


def test_a_pipeline_answers_in_order(karma: k.Client) -> None:
    with karma.pipeline() as pipe:
        for _ in range(10):
            pipe.increment(S, 7)
        pipe.sum(S, 7)
        pipe.request("counter.sum", series="nosuch", key=1)
        results = pipe.execute()
    assert results[:10] == [1] * 10
    assert results[10] == 10
    assert isinstance(results[11], k.NotFound)


def test_every_client_method_queues_in_a_pipeline(karma: k.Client) -> None:
    with karma.pipeline() as pipe:
        pipe.record_usage(S, 1, 3, day=D1).increment(S, 2, bucket=D1).decrement(S, 1, bucket=D1)
        pipe.batch_add(S, [(3, D1, 4)]).usage(S, 1).usages(S, [1, 2, 9]).tree_info(S)
        pipe.ingest_begin("p1", "add").ingest_chunk("p1", S, seq=1, items=[(4, D1, 1)])
        pipe.ingest_commit("p1").tree_top(S, 1).request("system.ping")
        results = pipe.execute()
    assert results[:4] == [3, 1, 1, {"applied": 1, "total": 4}]
    assert results[4:6] == [2, {1: 2, 2: 1, 9: 0}]
    assert (results[6].key_count, results[6].total) == (3, 7)
    assert results[7]["status"] == "active"
    assert results[8]["applied"] == 1
    assert results[9]["status"] == "committed"
    assert results[10] == [k.TopItem(key=3, value=4)]
    assert results[11] == "pong"


def test_ingest_chunk_takes_the_documented_seq_and_the_older_chunk_seq(karma: k.Client) -> None:
    karma.ingest_begin("names", "add")
    assert karma.ingest_chunk("names", S, seq=1, items=[(1, D1, 1)])["applied"] == 1
    assert karma.ingest_chunk("names", S, chunk_seq=2, items=[(1, D1, 1)])["applied"] == 1
    assert karma.ingest_chunk("names", S, 3, [(1, D1, 1)])["applied"] == 1
    with pytest.raises(TypeError, match="not both"):
        karma.ingest_chunk("names", S, 4, [(1, D1, 1)], chunk_seq=4)
    assert karma.ingest_commit("names")["last_chunk_seq"] == 3


async def async_pipeline(port: int) -> None:
    async with (
        k.AsyncClient(port=port, token="full", timeout=5) as karma,
        karma.pipeline() as pipe,
    ):
        pipe.record_usage(S, 1, 3, day=D1).batch_add(S, [(2, D1, 4)]).usages(S, [1, 2])
        pipe.ingest_begin("ap", "add").ingest_chunk("ap", S, seq=1, items=[(5, D1, 1)])
        pipe.request("counter.sum", series="nosuch", key=1)
        results = await pipe.execute()
    assert results[:3] == [3, {"applied": 1, "total": 4}, {1: 3, 2: 4}]
    assert results[4]["applied"] == 1
    assert isinstance(results[5], k.NotFound)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_async_client_pipelines_every_method(server: Proc, backend: str) -> None:
    if backend == "trio":
        trio.run(async_pipeline, server.port)
    else:
        asyncio.run(async_pipeline(server.port))


def test_a_server_restart_fails_calls_quickly_and_then_recovers(server: Proc) -> None:
    with k.Client(port=server.port, token="full", timeout=1, connect_timeout=0.5) as karma:
        assert karma.increment(S, 1) == 1
        server.kill()
        started = time.monotonic()
        with pytest.raises(k.ConnectionFailed) as failed:
            karma.increment(S, 1)
        assert failed.value.retriable
        assert time.monotonic() - started < 3, "a call never hangs past its timeouts"
        server.start(same_port=True)
        assert karma.sum(S, 1) == 1  # the pool reconnected by itself


class DropFirstAnswer:
    """A TCP proxy that forwards the first request, then cuts the connection before its answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[1]
        self.dropped = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.pipe, args=(downstream,), daemon=True).start()

    def pipe(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.port))
        with downstream, upstream:
            while True:
                data = downstream.recv(65536)
                if not data:
                    return
                upstream.sendall(data)
                answer = upstream.recv(65536)  # the server applied the write...
                if self.dropped == 0:
                    self.dropped += 1
                    return  # ...and the client never hears it
                downstream.sendall(answer)

    def close(self) -> None:
        self.listener.close()


def test_a_retried_write_whose_answer_was_lost_counts_once(server: Proc) -> None:
    proxy = DropFirstAnswer(server.port)
    try:
        with k.Client(port=proxy.address, token="full", retries=3, timeout=2) as karma:
            assert karma.increment(S, 5, 10) == 10
            assert proxy.dropped == 1
        with k.Client(port=server.port, token="full") as direct:
            assert direct.sum(S, 5) == 10
    finally:
        proxy.close()


async def async_every_method(port: int) -> None:
    """The sync test's sequence, awaited: the same answers from the async client."""
    async with k.AsyncClient(port=port, token="full", timeout=5) as karma:
        assert await karma.ping() == "pong"
        assert (await karma.health()).status == "ok"
        assert await karma.increment(S, 1, 5, bucket=D1) == 5
        assert await karma.decrement(S, 1, 2, bucket=20260501) == 2
        assert await karma.record_usage(S, 2, 7, day=D1) == 7
        assert await karma.sum(S, 1) == 3
        assert await karma.usage(S, 2, since=D1, until=D1) == 7
        assert await karma.series(S, 1, D1, D1) == {20260501: 3}
        assert await karma.batch_sum(S, [1, 2, 3]) == {1: 3, 2: 7, 3: 0}
        assert await karma.usages(S, [1, 2], since=D1, until=D1) == {1: 3, 2: 7}
        assert await karma.multi_sum([(S, 1), (S, 2)]) == {(S, 1): 3, (S, 2): 7}
        assert await karma.batch_add(S, [(3, D1, 4), (4, D1, 1)]) == {"applied": 2, "total": 5}
        assert await karma.batch_set(S, [(4, D1, 10)]) == {"applied": 1}
        assert (await karma.tree_info(S)).total == 24
        assert [kt.key for kt in (await karma.tree_keys(S, limit=2)).keys] == [1, 2]
        assert (await karma.tree_top(S, 1))[0] == k.TopItem(key=4, value=10)
        assert (await karma.tree_summary(S))["total"] == 24
        assert (await karma.tree_series(S, D1, D1))[4] == {20260501: 10}
        assert await karma.tree_list() == [S]
        assert await karma.batch_reset(S, [3]) == {"reset": 1, "missing": 0}
        assert await karma.delete_range(S, D1, D1, key=4) is True
        assert await karma.batch_delete_range(S, [1], D1, D1) == {"deleted": 1, "missing": 0}
        assert await karma.reset(S, 2) == "OK"
        assert await karma.tree_create("other") == "OK"
        assert await karma.delete_before("other", D1) == "OK"
        assert await karma.compact("other") == "OK"
        assert await karma.tree_drop("other") == "OK"
        assert (await karma.ingest_begin("st", "add"))["status"] == "active"
        assert (await karma.ingest_chunk("st", S, 1, [(9, D1, 1)]))["applied"] == 1
        assert (await karma.ingest_commit("st"))["status"] == "committed"
        assert (await karma.ingest_begin("st2"))["status"] == "active"
        assert (await karma.ingest_abort("st2"))["status"] == "aborted"
        assert await karma.snapshot_create_all() == "OK"
        assert await karma.snapshot_list()
        assert (await karma.snapshot_verify())["status"] == "ok"
        assert "karma_commands_total" in await karma.metrics()
        assert await karma.request("counter.sum", series=S, key=9) == 1
        with pytest.raises(k.NotFound):
            await karma.sum("nosuch", 1)
        with pytest.raises(k.ValidationError):
            await karma.increment(S, -1)
        await karma.increment(S, 1, idempotency_key="ev")
        with pytest.raises(k.IdempotencyConflict):
            await karma.increment(S, 1, 2, idempotency_key="ev")
    async with k.AsyncClient(port=port, token="read") as reader:
        with pytest.raises(k.Forbidden):
            await reader.increment(S, 1)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_async_client_answers_every_method(server: Proc, backend: str) -> None:
    if backend == "trio":
        trio.run(async_every_method, server.port)
    else:
        asyncio.run(async_every_method(server.port))


async def async_restart(proc: Proc) -> None:
    async with k.AsyncClient(port=proc.port, token="full", timeout=1, connect_timeout=0.5) as karma:
        await karma.increment(S, 1)
        proc.kill()
        started = time.monotonic()
        with pytest.raises(k.ConnectionFailed):
            await karma.increment(S, 1)
        assert time.monotonic() - started < 3
        proc.start(same_port=True)
        assert await karma.sum(S, 1) == 1


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_async_client_survives_a_server_restart(server: Proc, backend: str) -> None:
    if backend == "trio":
        trio.run(async_restart, server)
    else:
        asyncio.run(async_restart(server))


async def async_scenario(port: int) -> None:
    async with k.AsyncClient(port=port, token="full", timeout=5, pool_size=8) as karma:
        assert await karma.ping() == "pong"
        base = await karma.sum(S, 77) if S in await karma.tree_list() else 0

        async def work() -> None:
            for _ in range(20):
                await karma.record_usage(S, 77)

        async with anyio.create_task_group() as group:
            for _ in range(32):
                group.start_soon(work)
        assert await karma.usage(S, 77) == base + 640
        assert await karma.batch_sum(S, [77]) == {77: base + 640}
        with pytest.raises(k.NotFound):
            await karma.sum("nosuch", 1)


def test_the_async_client_under_trio(server: Proc) -> None:
    trio.run(async_scenario, server.port)


def test_the_async_client_under_asyncio(server: Proc) -> None:
    asyncio.run(async_scenario(server.port))


def test_from_url_and_environment(server: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    with k.Client.from_url(f"karma://full@127.0.0.1:{server.port}") as karma:
        assert karma.ping() == "pong"
    monkeypatch.setenv("KARMA_URL", f"karma://full@127.0.0.1:{server.port}")
    with k.Client.from_env() as karma:
        assert karma.ping() == "pong"
