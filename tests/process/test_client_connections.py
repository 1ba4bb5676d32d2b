"""A pooled connection is reused only when it is known to be in step and open.

Against a real server with its default limits (--max-request-bytes=4096), and through a small
TCP proxy where an answer has to arrive late. Every client here has retries=0: a call that
works, works because the pool handed it a good connection, not because it tried twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from karma import client as k
from tests.process.proc import Proc

pytestmark = pytest.mark.process
S = "api_requests"
D1 = dt.date(2026, 5, 1)
#: ~100 KB as one request line: 25 times the default limit, still sent whole before the answer
TOO_MANY = [(key, D1, 1) for key in range(5000)]
#: ~3 MB: the server hangs up while the client is still sending (the send fails with a reset)
FAR_TOO_MANY = [(key, D1, 1) for key in range(150_000)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--wal-fsync=false", "--read-timeout=0.3")
    proc.start()
    yield proc
    proc.close()


def test_the_call_after_a_request_too_large_is_answered(server: Proc) -> None:
    with k.Client(port=server.port, retries=0, timeout=5) as karma:
        with pytest.raises(k.RequestTooLarge, match="Request exceeds 4096 bytes"):
            karma.batch_add(S, TOO_MANY)
        assert karma.increment(S, 1) == 1
        with pytest.raises(k.RequestTooLarge):
            karma.batch_add(S, FAR_TOO_MANY)
        assert karma.increment(S, 1) == 1
        assert karma.sum(S, 1) == 2


def test_a_pipeline_stops_at_the_refused_call_and_the_next_call_is_answered(
    server: Proc,
) -> None:
    with k.Client(port=server.port, retries=0, timeout=5) as karma:
        with karma.pipeline() as pipe:
            results = pipe.increment(S, 1).batch_add(S, TOO_MANY).increment(S, 2).execute()
        assert results[0] == 1
        assert isinstance(results[1], k.RequestTooLarge)
        assert isinstance(results[2], k.ConnectionFailed)  # never read by the server...
        assert karma.batch_sum(S, [1, 2]) == {1: 1, 2: 0}  # ...so never applied


def test_a_connection_the_server_closed_while_idle_is_not_reused(server: Proc) -> None:
    with k.Client(port=server.port, retries=0) as karma:
        assert karma.increment(S, 1) == 1
        time.sleep(0.6)  # --read-timeout=0.3: the server hangs up on the idle connection
        assert karma.increment(S, 1) == 1
        assert karma.sum(S, 1) == 2


class LateAnswer:
    """A TCP proxy that delivers the first answer in two halves, `delay` seconds apart."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[1]
        self.split = threading.Event()
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
                try:
                    data = downstream.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                    answer = upstream.recv(65536)
                    if not self.split.is_set():
                        self.split.set()
                        half = len(answer) // 2
                        downstream.sendall(answer[:half])
                        time.sleep(self.delay)
                        answer = answer[half:]
                    downstream.sendall(answer)
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def late(server: Proc) -> Iterator[LateAnswer]:
    with k.Client(port=server.port) as direct:
        direct.increment(S, 1, 5)
        direct.increment(S, 2, 7)
    proxy = LateAnswer(server.port, delay=1.0)
    yield proxy
    proxy.close()


def test_a_timeout_in_the_middle_of_an_answer_retires_the_connection(late: LateAnswer) -> None:
    with k.Client(port=late.address, retries=0, timeout=0.3) as karma:
        with pytest.raises(k.ConnectionFailed):
            karma.sum(S, 1)
        assert late.split.is_set()
        assert karma.sum(S, 2) == 7  # not the rest of the first answer


# --- the async client, under trio and under asyncio ------------------------------------------
def run_under(backend: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if backend == "trio":
        trio.run(scenario)
    else:
        asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_async_call_after_a_request_too_large_is_answered(server: Proc, backend: str) -> None:
    async def scenario() -> None:
        async with k.AsyncClient(port=server.port, retries=0, timeout=5) as karma:
            with pytest.raises(k.RequestTooLarge, match="Request exceeds 4096 bytes"):
                await karma.batch_add(S, TOO_MANY)
            assert await karma.increment(S, 1) == 1
            async with karma.pipeline() as pipe:
                results = await pipe.increment(S, 1).batch_add(S, TOO_MANY).execute()
            assert results[0] == 1
            assert isinstance(results[1], k.RequestTooLarge)
            assert await karma.increment(S, 1) == 1
            assert await karma.sum(S, 1) == 3

    run_under(backend, scenario)


def test_the_async_call_after_a_far_too_large_request_is_answered_under_trio(
    server: Proc,
) -> None:
    async def scenario() -> None:
        async with k.AsyncClient(port=server.port, retries=0, timeout=5) as karma:
            with pytest.raises(k.RequestTooLarge):
                await karma.batch_add(S, FAR_TOO_MANY)
            assert await karma.increment(S, 1) == 1

    trio.run(scenario)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_an_async_connection_the_server_closed_while_idle_is_not_reused(
    server: Proc, backend: str
) -> None:
    async def scenario() -> None:
        async with k.AsyncClient(port=server.port, retries=0) as karma:
            assert await karma.increment(S, 1) == 1
            await anyio.sleep(0.6)  # under either backend
            assert await karma.increment(S, 1) == 1
            assert await karma.sum(S, 1) == 2

    run_under(backend, scenario)


def test_an_async_timeout_in_the_middle_of_an_answer_retires_the_connection(
    late: LateAnswer,
) -> None:
    async def scenario() -> None:
        async with k.AsyncClient(port=late.address, retries=0, timeout=0.3) as karma:
            with pytest.raises(k.ConnectionFailed):
                await karma.sum(S, 1)
            assert await karma.sum(S, 2) == 7

    trio.run(scenario)


def test_a_call_cancelled_in_the_middle_of_its_answer_retires_the_connection(
    late: LateAnswer,
) -> None:
    async def scenario() -> None:
        async with k.AsyncClient(port=late.address, retries=0, timeout=5) as karma:
            with trio.move_on_after(0.3) as waited:
                await karma.sum(S, 1)
            assert waited.cancelled_caught
            assert await karma.sum(S, 2) == 7

    trio.run(scenario)
