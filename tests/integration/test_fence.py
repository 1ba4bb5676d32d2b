"""HA fencing at the connection (issue 22): no answer acknowledging a write leaves a node after
its fence closed — neither a write's first answer nor the replay of its idempotency record.

A real node on a loopback socket, a real WAL on disk whose write is held (a slow flush), and a
fence whose deadline the test moves: what the HA task does after etcd stops answering.
"""

from __future__ import annotations

import json
import math
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
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.server.connections import Drain, serve_connection
from karma.server.context import Context
from karma.server.node import Node
from karma.server.wal_writer import WalWriter
from karma.storage import recovery
from tests.helpers import LineClient
from tests.integration.test_wal_writer import FullDisk

S = "usage"
B1 = 20260501


@attrs.define(eq=False)
class GatedDisk(FullDisk):
    """A real WAL whose appends wait while held, as a slow flush would; held from the start."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    release: threading.Event = attrs.field(factory=threading.Event)

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    def append(self, data: bytes, line_starts: list[tuple[int, int]]) -> str | None:
        self.entered.set()
        self.release.wait(10)
        return super().append(data, line_starts)


@attrs.define(eq=False)
class Master:
    node: Node
    fence: Fence
    disk: GatedDisk
    port: int
    directory: Path

    def lose_the_lease(self) -> None:
        """The deadline passes with no renewal (etcd unreachable): what the HA task sees."""
        self.fence.deadline = -math.inf


@pytest.fixture
async def master(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Master]:
    disk = GatedDisk(tmp_path, fsync=True, segment_bytes=0)
    disk.open([])
    engine, status, log = Engine(), NodeStatus(), Logger(enabled=False)
    fence = Fence(trio.current_time, deadline=math.inf, term=1)
    writer = WalWriter(engine, disk, status, log)
    writer.fence = fence
    await nursery.start(writer.run)
    config = Config(bind="127.0.0.1", port=0, directory=str(tmp_path), log=False)
    node = Node(Context(config, engine, status, log, tmp_path, writer, fence=fence))
    node.gate = attrs.evolve(node.gate, slave=False)  # leading: the HA task opens the gate
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(serve_connection, node, Drain()), 0, host="127.0.0.1")
    )
    yield Master(node, fence, disk, listeners[0].socket.getsockname()[1], tmp_path)
    disk.release.set()


def keyed(key: int, idem: str, value: int = 1) -> bytes:
    body = {"v": 2, "op": "counter.increment", "tree": S, "key": key, "bucket": B1}
    return json.dumps({**body, "value": value, "idempotency_key": idem}).encode() + b"\n"


def plain(key: int) -> bytes:
    body = {"v": 2, "op": "counter.increment", "tree": S, "key": key, "bucket": B1}
    return json.dumps({**body, "value": 1}).encode() + b"\n"


async def call(client: LineClient, line: bytes) -> dict[str, Any]:
    await client.send_raw(line)
    return await client.reply()


async def held_write(master: Master, first: LineClient, line: bytes) -> None:
    """`line` is sent and its WAL write begins, and stays on the disk until released."""
    await first.send_raw(line)
    assert await trio.to_thread.run_sync(master.disk.entered.wait, 10)


def consume(key: int, idem: str) -> bytes:
    body = {"v": 2, "op": "limit.consume", "series": S, "key": key, "max": 10}
    return (
        json.dumps({**body, "window": {"calendar": "day"}, "idempotency_key": idem}).encode()
        + b"\n"
    )


@pytest.mark.parametrize("line", [keyed(1, "k-1"), consume(1, "k-1")], ids=["increment", "consume"])
async def test_a_copy_waiting_for_a_late_write_is_answered_not_leader_not_a_replay(
    master: Master, line: bytes
) -> None:
    first = await LineClient.connect(master.port)
    second = await LineClient.connect(master.port)
    await held_write(master, first, line)
    await second.send_raw(line)  # a client's retry while the first copy is queued
    await trio.testing.wait_all_tasks_blocked()
    master.lose_the_lease()
    master.disk.release.set()  # the flush ends after the deadline: logged, never acknowledged
    answers: list[dict[str, Any]] = [await first.reply(), await second.reply()]
    assert [a["error_code"] for a in answers] == ["not_leader", "not_leader"], answers
    # a third copy after the fact is refused too: no replay of the late record
    third = await LineClient.connect(master.port)
    assert (await call(third, line))["error_code"] == "not_leader"
    for client in (first, second, third):
        await client.aclose()


async def test_answers_built_before_the_deadline_but_sent_after_it_are_refused(
    master: Master,
) -> None:
    """One read, two writes: a keyed write's replay is answered at once, a plain write waits
    for a slow flush; both answers leave together after it, when the lease is gone."""
    client = await LineClient.connect(master.port)
    master.disk.release.set()
    assert (await call(client, keyed(2, "k-2")))["idempotent"] is False
    master.disk.hold()
    await client.send_raw(keyed(2, "k-2") + plain(4))
    assert await trio.to_thread.run_sync(master.disk.entered.wait, 10)  # replayed; P is held
    master.lose_the_lease()
    master.disk.release.set()
    answers = [await client.reply(), await client.reply()]
    assert [a["error_code"] for a in answers] == ["not_leader", "not_leader"], answers
    await client.aclose()


async def test_with_the_lease_kept_copies_are_applied_once_and_replayed(master: Master) -> None:
    first = await LineClient.connect(master.port)
    second = await LineClient.connect(master.port)
    await held_write(master, first, keyed(3, "k-3", value=5))
    await second.send_raw(keyed(3, "k-3", value=5))
    await trio.testing.wait_all_tasks_blocked()
    master.disk.release.set()
    a, b = await first.reply(), await second.reply()
    assert (a["success"], a["idempotent"]) == (True, False)
    assert (b["success"], b["idempotent"]) == (True, True)
    assert master.node.context.engine.store.series[S].sum(3) == 5
    replayed = Engine()
    recovery.restore(
        master.directory, replayed, today=B1, now=0, replay=True, log=Logger(enabled=False)
    )
    assert replayed.store.series[S].sum(3) == 5
    for client in (first, second):
        await client.aclose()
