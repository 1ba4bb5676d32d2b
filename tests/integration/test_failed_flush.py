"""A failed flush with decisions queued behind it (issue 25, docs/durability.md "A failed flush
behind which writes are pending"): no decision that counted a rolled-back effect is
acknowledged, whether it waits in the queue, in the batch being gathered, or pipelined.

A real node on a loopback socket and a real WAL with fsync whose writes the test holds and
then fails, as EIO from the disk would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from karma.config import Config
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.observability.logs import Logger
from karma.server.connections import Drain, serve_connection
from karma.server.context import Context
from karma.server.node import Node
from karma.server.wal_writer import WalWriter
from karma.storage import recovery
from tests.helpers import LineClient
from tests.integration.test_wal_writer import FullDisk

S = "calls"


@attrs.define(eq=False)
class HeldDisk(FullDisk):
    """Appends wait while held; `failures` (FullDisk) makes the next ones fail."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    release: threading.Event = attrs.field(factory=threading.Event)

    def append(self, data: bytes, line_starts: list[tuple[int, int]]) -> str | None:
        self.entered.set()
        self.release.wait(10)
        return super().append(data, line_starts)


@attrs.define(eq=False)
class Server:
    node: Node
    disk: HeldDisk
    port: int
    directory: Path


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    disk = HeldDisk(tmp_path, fsync=True, segment_bytes=0)
    disk.open([])
    engine, status, log = Engine(), NodeStatus(), Logger(enabled=False)
    writer = WalWriter(engine, disk, status, log)
    await nursery.start(writer.run)
    config = Config(bind="127.0.0.1", port=0, directory=str(tmp_path), log=False)
    node = Node(Context(config, engine, status, log, tmp_path, writer))
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(serve_connection, node, Drain()), 0, host="127.0.0.1")
    )
    yield Server(node, disk, listeners[0].socket.getsockname()[1], tmp_path)
    disk.release.set()


def consume(idem: str | None = None, maximum: int = 10) -> bytes:
    body: dict[str, Any] = {"series": S, "key": 1, "value": 1, "max": maximum}
    body["window"] = {"calendar": "month"}
    if idem is not None:
        body["idempotency_key"] = idem
    return json.dumps({"v": 2, "op": "limit.consume", **body}).encode() + b"\n"


def replayed_usage(directory: Path) -> int:
    engine = Engine()
    recovery.restore(directory, engine, today=0, now=0, replay=True, log=Logger(enabled=False))
    series = engine.store.series.get(S)
    return 0 if series is None else series.sum(1)


async def test_a_decision_gathered_behind_a_failed_flush_is_not_acknowledged(
    server: Server,
) -> None:
    """B counted A while A's flush was on the disk; A's flush fails: B must not be answered
    'allowed, used 2' (karma before issue 25 wrote B later and acknowledged it)."""
    first = await LineClient.connect(server.port)
    second = await LineClient.connect(server.port)
    await first.send_raw(consume())  # A: its flush is held on the disk
    assert await trio.to_thread.run_sync(server.disk.entered.wait, 10)
    writer = server.node.context.writer
    assert writer is not None
    async with writer._file_lock:  # the writer gathers B but cannot hand it over yet
        await second.send_raw(consume())  # B: decided counting A as pending
        await trio.testing.wait_all_tasks_blocked()
        server.disk.failures = 1
        server.disk.release.set()  # A's flush fails (EIO on the disk)
        a = await first.reply()
        assert a["error_code"] == "storage_unavailable", a
    b = await second.reply()
    acknowledged = b["success"]
    if acknowledged:  # only if it was decided again without A
        assert b["response"]["used"] == 1, b
    else:
        assert b["error_code"] == "storage_unavailable", b
    assert server.node.context.engine.store.series.get(S) is None or (
        server.node.context.engine.store.series[S].sum(1) == int(acknowledged)
    )
    assert replayed_usage(server.directory) == int(acknowledged)
    for client in (first, second):
        await client.aclose()


async def test_a_failed_flush_fails_the_pipelined_decisions_behind_it_and_a_denial_on_them(
    server: Server,
) -> None:
    """One connection pipelines 12 keyed consumes at max 10 (10 allowed, 2 denied, all
    resting on pending effects) and an unkeyed denial; the flush fails: none is acknowledged,
    nothing is applied, and retried later they are decided afresh."""
    client = await LineClient.connect(server.port)
    other = await LineClient.connect(server.port)
    await other.send_raw(consume("warm-up"))
    assert await trio.to_thread.run_sync(server.disk.entered.wait, 10)
    keys = [f"p{n}" for n in range(12)]
    await client.send_raw(b"".join(consume(k) for k in keys) + consume())
    await trio.testing.wait_all_tasks_blocked()
    server.disk.failures = 1  # the held flush (the warm-up) fails: everything behind it too
    server.disk.release.set()
    assert (await other.reply())["error_code"] == "storage_unavailable"
    answers = [await client.reply() for _ in range(13)]
    assert [a["error_code"] for a in answers] == ["storage_unavailable"] * 13, answers
    assert server.node.context.engine.limits._pending == {}  # nothing left counted as pending
    assert server.node.context.claims.inflight == {}  # every claim dropped
    await client.send_raw(b"".join(consume(k) for k in keys))
    again = [await client.reply() for _ in keys]
    used = [a["response"]["used"] for a in again if a["response"]["allowed"]]
    assert used == list(range(1, 11)), again
    assert server.node.context.engine.store.series[S].sum(1) == 10
    assert replayed_usage(server.directory) == 10
    for c in (client, other):
        await c.aclose()
