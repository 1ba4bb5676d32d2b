"""karma.client with a seed list against a real HA group: 1 etcd member, 3 nodes (issue 16).

ttl 3 s and loop_wait 1 s, as in test_ha.py, so a failover takes about 4 s.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from karma import client as k
from tests.process.etcd import ETCD, Etcd
from tests.process.proc import Proc
from tests.process.test_ha import LOOP_WAIT, TTL, call, node, total, wait_for

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

B1 = 20260501


@pytest.fixture
def group(tmp_path: Path) -> Iterator[list[Proc]]:
    member = Etcd(tmp_path / "etcd").start()
    procs = [node(tmp_path, member, f"n{i}") for i in range(3)]
    try:
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_listening()
        yield procs
    finally:
        for proc in procs:
            proc.close()
        member.stop()


def role(proc: Proc) -> str | None:
    try:
        topology = call(proc, "cluster.topology")["response"]
    except OSError:
        return None
    assert isinstance(topology, dict)
    return str(topology["role"])


def master_of(procs: list[Proc], timeout: float = TTL + LOOP_WAIT + 5) -> Proc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if role(proc) == "master":
                return proc
        time.sleep(0.05)
    raise AssertionError(f"no master within {timeout} s")


def url(procs: list[Proc]) -> str:
    return "karma://" + ",".join(f"127.0.0.1:{proc.port}" for proc in procs)


def test_a_seed_list_starting_with_replicas_finds_the_leader(group: list[Proc]) -> None:
    master = master_of(group)
    replicas = [proc for proc in group if proc is not master]
    with k.Client.from_url(url([*replicas, master])) as karma:
        for _ in range(5):
            karma.increment("s", 1, bucket=B1)
        assert karma.sum("s", 1) == 5  # reads go to the leader too: no replication lag
        stats = karma.statistics()
    assert stats.leader == ("127.0.0.1", master.port)
    assert stats.failovers == 0
    assert stats.term > 0
    assert total(master) == 5


def test_every_acknowledged_increment_counts_once_after_the_leader_is_killed(
    group: list[Proc],
) -> None:
    """A loop of keyed increments runs through the client while the leader is SIGKILLed.

    The leader is killed with a call in flight, and only after both replicas have every write
    it acknowledged: in async mode the last poll interval's writes die with it (docs/ha.md),
    which would be the server's loss, not the client's. The call in flight was never read (the
    leader was stopped first), so the client's one retry is what applies it.
    """
    master = master_of(group)
    replicas = [proc for proc in group if proc is not master]
    karma = k.Client.from_url(url(group), timeout=2.0)
    done = {"ok": 0, "unknown": 0}
    gate, parked, stop = threading.Event(), threading.Event(), threading.Event()
    gate.set()

    def increments() -> None:
        sent = 0
        while not stop.is_set():
            if not gate.is_set():
                parked.set()
                gate.wait()
            sent += 1
            try:
                karma.increment("s", 2, bucket=B1, idempotency_key=f"loop-{sent}")
                done["ok"] += 1
            except k.KarmaError:
                done["unknown"] += 1

    loop = threading.Thread(target=increments)
    loop.start()
    try:
        wait_for(lambda: done["ok"] >= 20, 10)
        gate.clear()
        assert parked.wait(5)
        wait_for(lambda: all(total(r, key=2) == done["ok"] for r in replicas), 10)
        term_before = karma.statistics().term
        master.signal(signal.SIGSTOP)  # the next call is sent, never read
        gate.set()
        time.sleep(0.3)
        master.kill()
        before = done["ok"]
        wait_for(lambda: done["ok"] >= before + 10, 20)  # the new leader takes them
    finally:
        stop.set()
        gate.set()
        loop.join(30)
        karma.close()
    stats = karma.statistics()
    new = next(proc for proc in replicas if stats.leader == ("127.0.0.1", proc.port))
    assert role(new) == "master"
    ok, unknown = done["ok"], done["unknown"]
    assert ok <= total(new, key=2) <= ok + unknown
    assert unknown == 0  # the call in flight was retried once, on the new leader
    assert stats.failovers == 1
    assert stats.term > term_before


def test_a_write_to_a_node_that_became_a_replica_succeeds_after_one_retry(
    group: list[Proc],
) -> None:
    master = master_of(group)
    replicas = [proc for proc in group if proc is not master]
    with k.Client.from_url(url([replicas[0], master, replicas[1]])) as karma:
        karma.increment("s", 3, bucket=B1, idempotency_key="before")
        wait_for(lambda: all(total(r, key=3) == 1 for r in replicas), 10)
        master.stop()  # SIGTERM: it resigns, a replica takes over within about a loop_wait
        new = master_of(replicas)
        master.start(same_port=True)  # back as a replica, where the client still points
        wait_for(lambda: role(master) == "replica", 10)
        assert karma.statistics().leader == ("127.0.0.1", master.port)
        karma.increment("s", 3, bucket=B1, idempotency_key="after")  # not_leader, then `new`
        stats = karma.statistics()
    assert stats.leader == ("127.0.0.1", new.port)
    assert stats.failovers == 1
    assert total(new, key=3) == 2  # "before" replicated, "after" counted once
