"""The etcd client and the HA task against a real etcd member: the calls an election needs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from karma.ha import rules
from karma.ha.etcd_client import EtcdClient
from karma.ha.etcd_wire import Call, EtcdError
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.server.ha_task import HaTask, Settings
from tests.process.etcd import ETCD, Etcd

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    member = Etcd(tmp_path / "etcd").start()
    try:
        yield member
    finally:
        member.stop()


async def test_only_one_create_wins_and_the_key_dies_with_its_lease(etcd: Etcd) -> None:
    client = EtcdClient(["http://127.0.0.1:1", etcd.url])  # a dead endpoint is skipped
    try:
        lease = await client.grant(2)
        first = await client.create("/karma/t/leader", b"a", lease=lease.id)
        second = await client.create("/karma/t/leader", b"b", lease=lease.id)
        assert first.succeeded
        assert not second.succeeded
        assert second.kvs[0].value == b"a"
        assert second.kvs[0].create_revision == first.revision  # the term
        assert await client.guarded_put(
            "/karma/t/status", b"s", guard="/karma/t/leader", create_revision=first.revision
        )
        assert not await client.guarded_put(
            "/karma/t/status", b"s", guard="/karma/t/leader", create_revision=first.revision + 1
        )
        assert await client.keepalive(lease.id) == 2
        found = await client.range("/karma/t/", prefix=True)
        assert {kv.key for kv in found.kvs} == {"/karma/t/leader", "/karma/t/status"}
        await trio.sleep(3.5)
        assert await client.keepalive(lease.id) is None  # dead: no TTL in the answer
        found = await client.range("/karma/t/", prefix=True)
        assert {kv.key for kv in found.kvs} == {"/karma/t/status"}
        with pytest.raises(EtcdError):
            await client.put("/karma/t/x", b"x", lease=lease.id)
    finally:
        await client.aclose()


async def test_no_endpoint_answering_is_an_etcd_error() -> None:
    client = EtcdClient(["http://127.0.0.1:1"], timeout_s=0.5)
    try:
        with pytest.raises(EtcdError, match="unavailable"):
            await client.range("/x")
    finally:
        await client.aclose()


async def test_a_watch_returns_the_first_change_after_its_start_revision(etcd: Etcd) -> None:
    client = EtcdClient([etcd.url])
    watcher = EtcdClient([etcd.url])  # calls go on while it waits: a connection of its own
    try:
        lease = await client.grant(2)
        assert (await client.create("/karma/t/leader", b"a", lease=lease.id)).succeeded
        seen = await client.range("/karma/t/", prefix=True)
        # nothing changed after the range: the watch waits (bounded by the caller)
        with trio.move_on_after(0.5) as waited:
            await client.watch("/karma/t/leader", start_revision=seen.revision + 1)
        assert waited.cancelled_caught
        # a change made before the watch opens is not missed: it starts at the revision
        await client.revoke(lease.id)
        events = await client.watch("/karma/t/leader", start_revision=seen.revision + 1)
        assert [(e.type, e.kv.key) for e in events] == [("DELETE", "/karma/t/leader")]
        # a create while it waits wakes it up; other keys do not
        deleted = events[0].kv.mod_revision
        async with trio.open_nursery() as nursery:

            async def create_later() -> None:
                await trio.sleep(0.3)
                await client.put("/karma/t/members/x", b"m")
                assert (await client.create("/karma/t/leader", b"b", lease=0)).succeeded

            nursery.start_soon(create_later)
            with trio.fail_after(5):
                events = await watcher.watch("/karma/t/leader", start_revision=deleted + 1)
        assert [(e.type, e.kv.value) for e in events] == [("PUT", b"b")]
    finally:
        await client.aclose()
        await watcher.aclose()


async def test_a_watch_etcd_cancels_or_no_endpoint_opens_is_an_etcd_error(etcd: Etcd) -> None:
    client = EtcdClient([etcd.url])
    try:
        for _ in range(3):
            await client.put("/karma/t/x", b"x")
        top = (await client.range("/karma/t/x")).revision
        await client.call(Call("/v3/kv/compaction", {"revision": str(top), "physical": True}))
        with trio.fail_after(5), pytest.raises(EtcdError, match="compacted"):
            await client.watch("/karma/t/x", start_revision=1)
    finally:
        await client.aclose()
    dead = EtcdClient(["http://127.0.0.1:1"])
    try:
        with pytest.raises(EtcdError, match="watch unavailable"):
            await dead.watch("/karma/t/x", start_revision=1)
    finally:
        await dead.aclose()


# --- the HA task itself, in process, with the server side faked ----------------------------------
class FakeRoles:
    def __init__(self) -> None:
        self.promoted: list[int] = []
        self.followed: list[str] = []
        self.history: list[rules.TermStart] = []

    def lsn(self) -> int:
        return 0

    def source_lsn(self) -> int:
        return 0

    def local_term(self) -> int:
        return rules.last_term(self.history)

    def entry_term(self) -> int:
        return 0

    async def ask(self, addr: str) -> tuple[str, int] | None:
        return None  # the other tasks serve no client port here: taken as gone

    async def promote(self, term: int, history: list[rules.TermStart]) -> None:
        self.promoted.append(term)
        self.history = history

    async def stop_following(self) -> None:
        pass

    async def follow(
        self, leader: rules.Leader, history: list[rules.TermStart], *, diverged_after: int | None
    ) -> None:
        self.followed.append(leader.node)
        self.history = history

    def step_down(self) -> None:
        pass


async def polled(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - the task under test has no event to offer
            await trio.sleep(0.01)


def ha_task(etcd: Etcd, name: str, *, loop_wait_s: float) -> HaTask:
    settings = Settings(
        node=name,
        addr=f"127.0.0.1:{len(name)}",
        ttl_s=2,
        loop_wait_s=loop_wait_s,
        max_lag=0,
        priority=1,
        nofailover=False,
        keys=rules.Keys("t"),
    )
    return HaTask(
        settings,
        EtcdClient([etcd.url]),
        Fence(time.monotonic),
        FakeRoles(),
        Logger(enabled=False),
    )


async def test_a_replica_races_as_soon_as_the_leader_key_is_deleted(etcd: Etcd) -> None:
    rival = EtcdClient([etcd.url])
    lease = await rival.grant(30)
    value = rules.encode(rules.LeaderValue(node="old", addr="127.0.0.1:1", start_lsn=0))
    assert (await rival.create("/karma/t/leader", value, lease=lease.id)).succeeded
    task = ha_task(etcd, "b", loop_wait_s=30)  # it would not look again for 30 s
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.serve)
            await polled(lambda: task.rounds >= 1)
            assert task.leader is not None
            assert task.leader.node == "old"
            await rival.revoke(lease.id)  # the old master's lease ran out
            revoked = trio.current_time()
            await polled(lambda: task.leading)
            woke_s = trio.current_time() - revoked
            print(f"the replica led {woke_s:.3f} s after the deletion")
            assert woke_s < 2  # woken by the watch, not by its 30 s timer
            nursery.cancel_scope.cancel()
    finally:
        await rival.aclose()


async def test_a_leader_key_left_by_a_lost_create_answer_is_given_up(etcd: Etcd) -> None:
    task = ha_task(etcd, "b", loop_wait_s=1)
    other = EtcdClient([etcd.url])
    try:
        await task.round()  # a replica now, with a lease, and no leader to follow...
        assert task.term > 0  # ...so it raced and won: resign to set the scene
        await task.etcd.delete_if("/karma/t/leader", create_revision=task.term)
        task.term = 0
        task.fence.close()
        # its create succeeded in etcd but the answer never came back (a timeout)
        assert task.lease is not None
        value = rules.encode(rules.LeaderValue(node="b", addr="127.0.0.1:1", start_lsn=0))
        stray = task.lease.id
        assert (await other.create("/karma/t/leader", value, lease=stray)).succeeded
        await task.round()  # sees its own key under its own lease, never led: gives it up
        assert task.term == 0
        await task.round()  # revokes that lease (the key goes), takes a new one, races, wins
        assert task.term > 0
        found = await other.range("/karma/t/leader")
        assert found.kvs[0].create_revision == task.term
        assert found.kvs[0].lease == task.lease.id != stray
    finally:
        await other.aclose()
        await task.etcd.aclose()
