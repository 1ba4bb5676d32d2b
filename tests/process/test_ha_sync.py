"""HA fencing by terms, `durability:"replicated:N"`, the term history, `/primary`, and a
planned switchover (issue 16).

1 etcd member and 3 karma-trio nodes on loopback, as in test_ha.py.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.etcd import ETCD, Etcd
from tests.process.ha_group import (
    B1,
    LOOP_WAIT,
    TTL,
    call,
    leader_of,
    node,
    start_group,
    total,
    wait_for,
)
from tests.process.proc import Client, Proc, free_port
from tests.process.test_ha import etcd, three

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

__all__ = ["etcd", "three"]  # fixtures


def write(proc: Proc, key: int, **extra: object) -> dict[str, object]:
    return call(proc, "counter.increment", series="s", key=key, value=1, bucket=B1, **extra)


def topology_term(proc: Proc) -> int:
    topology = call(proc, "cluster.topology")["response"]
    assert isinstance(topology, dict)
    term = topology["term"]
    assert isinstance(term, int)
    return term


def test_answers_carry_the_term_and_a_newer_term_is_refused(three: list[Proc]) -> None:
    master = start_group(three)
    term = topology_term(master)
    answer = write(master, 1, term=0)
    assert answer["success"] is True
    assert answer["term"] == term
    assert isinstance(answer["lsn"], int)
    assert answer["lsn"] >= 1
    assert write(master, 1, term=term)["success"] is True
    refused = write(master, 1, term=term + 1)  # the client saw a newer master than this one
    assert refused["error_code"] == "not_leader"
    plain = write(master, 1)  # without the field: karma 1.0's answer, no term
    assert "term" not in plain
    replica = next(p for p in three if p is not master)
    # replication is asynchronous: read once the replica holds the master's writes (under load
    # it may not have the series yet, and a read would answer not_found)
    wait_for(lambda: total(replica, 1) == total(master, 1), 15)
    read = call(replica, "counter.sum", series="s", key=1, from_day=B1, to_day=B1, term=0)
    assert read.get("term") == term  # a replica answers with the term it follows
    bad = write(master, 1, durability="replicated:x")
    assert bad["error_code"] == "validation_error"
    assert write(master, 1, durability="local")["success"] is True  # the connection works on
    assert total(master, 1) == 4


def test_a_replicated_write_is_on_a_replica_when_acknowledged_and_survives_sigkill(
    three: list[Proc],
) -> None:
    master = start_group(three)
    replicas = [p for p in three if p is not master]
    acked = 0
    for i in range(60):
        answer = write(master, 5, durability="replicated:1", idempotency_key=f"k{i}")
        assert answer["success"] is True, answer
        acked += 1
        if i % 20 == 0:  # at the ack, a replica already holds it: no waiting here
            assert max(total(r, 5) for r in replicas) == acked
    master.kill()  # at once after the last ack
    new = None
    deadline = time.monotonic() + 15
    while new is None and time.monotonic() < deadline:
        for replica in replicas:
            if write(replica, 999)["success"]:
                new = replica
        time.sleep(0.1)
    assert new is not None
    assert total(new, 5) == acked  # the most caught-up replica won, with every ack


def test_a_replicated_write_no_replica_confirms_answers_replication_timeout(
    tmp_path: Path, etcd: Etcd
) -> None:
    master = node(tmp_path, etcd, "a", "--replicated-timeout-ms=800", "--ha-priority=9").start()
    replica = node(tmp_path, etcd, "b", "--ha-nofailover=true").start()
    try:
        assert start_group([master]) is master
        wait_for(lambda: total(replica, 999) == 1, 10)  # the replica polls the master
        assert write(master, 1, durability="replicated:1")["success"] is True
        replica.signal(signal.SIGSTOP)
        started = time.monotonic()
        answer = write(master, 2, durability="replicated:1", idempotency_key="x")
        assert answer["error_code"] == "replication_timeout", answer
        assert 0.7 < time.monotonic() - started < 5
        two = write(master, 3, durability="replicated:2")  # more than there are
        assert two["error_code"] == "replication_timeout"
        replica.signal(signal.SIGCONT)
        # the timed-out write is in the master's WAL: a retry with its key counts it once
        retried = write(master, 2, durability="replicated:1", idempotency_key="x")
        assert retried["success"] is True, retried
        assert total(master, 2) == 1
        wait_for(lambda: total(replica, 2) == 1, 10)
    finally:
        replica.signal(signal.SIGCONT)
        master.close()
        replica.close()


def test_the_term_history_is_kept_in_karma_history_and_checked_on_polls(
    three: list[Proc],
) -> None:
    master = start_group(three)
    term = topology_term(master)
    replicas = [p for p in three if p is not master]
    assert write(master, 1)["success"]
    lsn = int(write(master, 1, term=0)["lsn"])  # type: ignore[call-overload]
    for proc in three:
        history_file = proc.directory / "karma.history"
        wait_for(history_file.exists, 10)
        rows = json.loads(history_file.read_text())
        assert rows[-1][0] == term
        assert rows[-1][2] == master.directory.name
    start = json.loads((master.directory / "karma.history").read_text())[-1][1]
    client = Client(master.port)
    try:
        # a poll whose entries after `start` were written in an older term: never ours
        diverged = client.call(
            "replication.entries", after_lsn=start + 1, after_term=term - 1, limit=10
        )
        assert diverged["error_code"] == "replication_diverged", diverged
        assert f"after LSN {start}" in str(diverged["response"])
        fine = client.call("replication.entries", after_lsn=lsn - 1, after_term=term, limit=10)
        assert fine["success"] is True
        assert fine["response"]["term"] == term
        # a poll from a newer term is refused: this master gathers no acks from it, but a
        # reader's word alone does not depose it (the lease does)
        newer = client.call("replication.entries", after_lsn=lsn, after_term=term + 50)
        assert newer["error_code"] == "not_leader"
    finally:
        client.close()
    assert "ha.newer_term_seen" in master.stderr()
    assert write(master, 1)["success"] is True
    assert all(topology_term(p) == term for p in replicas)


def release(procs: list[Proc]) -> None:
    """Stop every node, resuming any a test left stopped (SIGSTOP)."""
    for proc in procs:
        if proc.process is not None and proc.process.poll() is None:
            proc.signal(signal.SIGCONT)
        proc.close()


@pytest.fixture
def abc(tmp_path: Path, etcd: Etcd) -> Iterator[list[Proc]]:
    """Nodes a (priority 9: the first master), b and c, started."""
    procs = [node(tmp_path, etcd, "a", "--ha-priority=9")]
    procs += [node(tmp_path, etcd, name) for name in "bc"]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        release(procs)


def start_group_wait(procs: list[Proc]) -> Proc:
    return leader_of(procs, TTL + LOOP_WAIT + 5)


def primary(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/primary", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_primary_is_200_only_on_the_master_before_its_deadline(tmp_path: Path, etcd: Etcd) -> None:
    ports = [free_port(), free_port()]
    procs = [
        node(tmp_path, etcd, name, f"--metrics-port={port}", *extra)
        for name, port, extra in (("a", ports[0], ("--ha-priority=9",)), ("b", ports[1], ()))
    ]
    try:
        for proc in procs:
            proc.start()
        master = start_group(procs)
        other = procs[1] if master is procs[0] else procs[0]
        mport, oport = (ports[0], ports[1]) if master is procs[0] else (ports[1], ports[0])
        assert primary(mport) == 200
        assert primary(oport) == 503
        assert write(master, 1, durability="replicated:1")["success"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        # the replica reported holding every entry: nothing an async failover would lose now
        assert f'karma_replica_behind_entries{{node="{other.directory.name}"}} 0.0' in text
        assert "karma_replicas_behind_entries 0.0" in text
        master.signal(signal.SIGSTOP)  # past its deadline: the other node takes over
        new = start_group_wait([other])
        assert new is other
        assert primary(oport) == 200
        master.signal(signal.SIGCONT)
        assert primary(mport) == 503  # awake, fenced: never primary again on its own
        wait_for(lambda: primary(mport) == 503 and primary(oport) == 200, 10)
    finally:
        release(procs)


def test_a_planned_switchover_by_sigterm_loses_no_acknowledged_write(three: list[Proc]) -> None:
    master = start_group(three)
    replicas = [p for p in three if p is not master]
    for i in range(30):
        assert write(master, 11, idempotency_key=f"s{i}")["success"] is True
    stopped = time.monotonic()
    master.signal(signal.SIGTERM)  # drains, resigns: deletes its key, revokes its lease
    new = start_group_wait(replicas)
    switchover_s = time.monotonic() - stopped
    print(f"switchover after SIGTERM: {switchover_s:.2f} s")
    assert switchover_s < TTL  # resigning hands over before the lease would have run out
    assert total(new, 11) == 30
    assert master.process is not None
    assert master.process.wait(timeout=15) == 0
    master.start(same_port=True)  # it comes back as a replica of the new master
    assert write(new, 11)["success"] is True
    wait_for(lambda: total(master, 11) == 31, 15)
    assert write(master, 11)["error_code"] == "not_leader"


def test_a_replicated_write_survives_a_failover_while_the_replica_holding_it_is_paused(
    abc: list[Proc],
) -> None:
    a, b, c = abc
    assert start_group_wait([a]) is a
    wait_for(lambda: total(b, 999) == 1 and total(c, 999) == 1, 10)
    assert write(a, 1, durability="replicated:1")["success"] is True  # the set is strict
    c.signal(signal.SIGSTOP)
    answer = write(a, 2, durability="replicated:1", idempotency_key="w")
    assert answer["success"] is True, answer  # on b only
    b.signal(signal.SIGSTOP)
    a.kill()
    c.signal(signal.SIGCONT)
    # c lacks the write and cannot reach b, a member of the strict sync set: it must
    # not win, even once b's member key has expired (async mode would promote it)
    time.sleep(TTL * 2 + LOOP_WAIT * 2)
    assert write(c, 3)["error_code"] == "not_leader"
    assert "sync member b" in c.stderr()
    b.signal(signal.SIGCONT)
    new = start_group_wait([b, c])
    assert total(new, 2) == 1  # the acknowledged replicated write was kept


def test_the_master_of_a_strict_term_back_at_once_does_not_block_the_failover(
    abc: list[Proc],
) -> None:
    # found by tests/process/jepsen (replicated:1): back before its lease expired, level with
    # the replicas and of a higher priority, the old master ranked first while refusing to
    # race (not in its own sync set), and the group stayed read-only for good
    a, b, c = abc
    assert start_group_wait([a]) is a
    assert write(a, 1, durability="replicated:1")["success"] is True  # the set is strict
    wait_for(lambda: total(b, 1) == 1 and total(c, 1) == 1, 10)
    a.kill()
    a.start(same_port=True)  # a replica now, at the replicas' LSN, ranked first
    new = start_group_wait([b, c])
    assert total(new, 1) == 1
    assert "not in term" in a.stderr()  # it did refuse, as a non-member of the set
