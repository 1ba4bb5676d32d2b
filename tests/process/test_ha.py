"""HA on a real etcd: 1 etcd member and 3 karma-trio nodes on loopback (issue 16).

ttl 3 s and loop_wait 1 s, so a failover takes about ttl + loop_wait.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.etcd import ETCD, Etcd
from tests.process.ha_group import (
    B1,
    LOOP_WAIT,
    TTL,
    call,
    increment,
    leader_of,
    node,
    start_group,
    total,
    wait_for,
)
from tests.process.proc import Client, Proc
from tests.tls_certs import make

pytestmark = [
    pytest.mark.process,
    # every test of this module twice: plaintext, and TLS everywhere (the etcd fixture)
    pytest.mark.parametrize("etcd", [False, True], indirect=True, ids=["plaintext", "tls"]),
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]


@pytest.fixture
def etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Etcd]:
    """One member; with the indirect parameter True (this module's tests, below), TLS
    everywhere: etcd over https with client certificates, and nodes (ha_group.node) with mTLS
    on their client ports and links (issue 29). Plaintext for the modules that import it."""
    certs = make(tmp_path / "certs") if getattr(request, "param", False) else None
    member = Etcd(tmp_path / "etcd", tls=certs).start()
    try:
        yield member
    finally:
        member.stop()


@pytest.fixture
def three(tmp_path: Path, etcd: Etcd) -> Iterator[list[Proc]]:
    procs = [node(tmp_path, etcd, f"n{i}") for i in range(3)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


def test_a_replica_takes_writes_within_ttl_plus_loop_wait_after_the_master_is_killed(
    three: list[Proc],
) -> None:
    master = start_group(three)
    for _ in range(20):
        assert increment(master)["success"]
    replicas = [p for p in three if p is not master]
    wait_for(lambda: all(total(r) == 20 for r in replicas), 10)
    refused = increment(replicas[0])
    assert refused["error_code"] == "not_leader"
    assert f"127.0.0.1:{master.port}" in str(refused["response"])
    master.kill()
    killed = time.monotonic()
    new = leader_of(replicas, TTL + LOOP_WAIT + 2)
    failover_s = time.monotonic() - killed
    print(f"failover after SIGKILL: {failover_s:.2f} s")
    assert total(new) == 20  # every write acknowledged before the kill was replicated
    other = next(r for r in replicas if r is not new)
    assert increment(new)["success"]
    wait_for(lambda: total(other) == 21, 10)  # the other replica follows the new leader
    topology = call(new, "cluster.topology")["response"]
    assert isinstance(topology, dict)
    assert topology["leader"] == {"node": new.directory.name, "addr": f"127.0.0.1:{new.port}"}


def test_a_paused_master_never_acks_after_its_deadline_and_rejoins_as_a_replica(
    three: list[Proc],
) -> None:
    master = start_group(three)
    assert increment(master)["success"]
    replicas = [p for p in three if p is not master]
    # over TLS the handshake needs the master awake: those connections open before the pause
    pending = [Client(master.port, master.client_tls) for _ in range(5 if master.client_tls else 0)]
    master.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    # writes sent while it is stopped: queued in its socket buffers, read after SIGCONT
    pending = pending or [Client(master.port) for _ in range(5)]
    for i, client in enumerate(pending):
        client.sock.sendall(
            b'{"v":2,"op":"counter.increment","series":"s","key":%d,"value":1,"bucket":%d}\n'
            % (100 + i, B1)
        )
    new = leader_of(replicas, TTL + LOOP_WAIT + 3)
    assert time.monotonic() - stopped >= TTL - 1  # its lease outlived the pause's start
    master.signal(signal.SIGCONT)
    for client in pending:
        answer = client.reply()
        client.close()
        assert answer["success"] is False, answer
        assert answer["error_code"] == "not_leader"
    for _ in range(10):  # and after it resumed: still refused, never acked
        answer = increment(master, key=200)
        assert answer["success"] is False, answer
    assert all(total(new, key=100 + i) == 0 for i in range(5))
    # it rejoins as a replica of the new leader
    assert increment(new, key=300)["success"]
    wait_for(lambda: total(master, key=300) == 1, 15)
    topology = call(master, "cluster.topology")["response"]
    assert isinstance(topology, dict)
    assert topology["role"] == "replica"


def test_a_replica_beyond_the_lag_bound_is_never_promoted(tmp_path: Path, etcd: Etcd) -> None:
    master = node(tmp_path, etcd, "a", "--ha-priority=9").start()
    lagging = node(tmp_path, etcd, "b", "--ha-max-lag-on-failover=5").start()
    try:
        assert leader_of([master], TTL + LOOP_WAIT + 5) is master
        wait_for(lambda: total(lagging, key=999) == 1, 10)
        lagging.signal(signal.SIGSTOP)  # it falls behind: 50 writes it never sees
        for _ in range(50):
            assert increment(master)["success"]
        time.sleep(LOOP_WAIT * 2)  # the master publishes its LSN in etcd
        master.kill()
        lagging.signal(signal.SIGCONT)
        time.sleep(TTL + LOOP_WAIT * 3)
        answer = increment(lagging)
        assert answer["success"] is False
        assert answer["error_code"] == "not_leader"
        assert "ha.not_promoting" in lagging.stderr()
    finally:
        master.close()
        lagging.close()


def test_with_no_eligible_candidate_the_group_stays_read_only(tmp_path: Path, etcd: Etcd) -> None:
    master = node(tmp_path, etcd, "a").start()
    replicas = [node(tmp_path, etcd, name, "--ha-nofailover=true").start() for name in "bc"]
    try:
        assert leader_of([master], TTL + LOOP_WAIT + 5) is master
        wait_for(lambda: all(total(r, key=999) == 1 for r in replicas), 10)
        master.kill()
        time.sleep(TTL + LOOP_WAIT * 3)
        for replica in replicas:
            answer = increment(replica)
            assert answer["error_code"] == "not_leader"
            assert total(replica, key=999) == 1  # reads still served
            topology = call(replica, "cluster.topology")["response"]
            assert isinstance(topology, dict)
            assert topology["leader"] is None
    finally:
        master.close()
        for replica in replicas:
            replica.close()


def test_a_returning_master_moves_its_unreplicated_tail_aside_and_follows(
    three: list[Proc],
) -> None:
    master = start_group(three)
    replicas = [p for p in three if p is not master]
    wait_for(lambda: all(total(r, key=999) == 1 for r in replicas), 10)
    for replica in replicas:
        replica.signal(signal.SIGSTOP)
    # a stopped replica may have a poll waiting on the master (polls long-wait for the next
    # entry): this write answers it, into the stopped replica's socket buffer
    assert increment(master, key=6)["success"]
    time.sleep(0.5)
    for _ in range(5):  # acknowledged, never replicated: async mode loses these (docs/ha.md)
        assert increment(master, key=7)["success"]
    master.kill()
    for replica in replicas:
        replica.signal(signal.SIGCONT)
    new = leader_of(replicas, TTL + LOOP_WAIT + 5)
    assert total(new, key=7) == 0
    assert increment(new, key=8)["success"]
    master.start(same_port=True)
    wait_for(lambda: total(master, key=8) == 1, 15)
    assert total(master, key=7) == 0  # the divergent tail is not merged...
    assert "ha.diverged" in master.stderr()
    aside = list(master.directory.glob("diverged-*/karma.wal*"))
    assert aside  # ...but kept beside the data for inspection
    assert b'"key":7' in b"".join(path.read_bytes() for path in aside)
