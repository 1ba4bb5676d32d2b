"""HA on three etcd members: etcd's own faults (spec/ha.md §4), with 3 karma-trio nodes.

- The etcd leader dies: its followers elect another within about an election timeout and keep
  every lease (leader changes only extend them), so the karma master must ride it out without
  a gap longer than its deadline allows: no fencing, no karma failover, the same term.
- Two of three members die: nothing can renew a lease, so the master acknowledges until its
  deadline (ttl - margin after the last keepalive etcd confirmed) and then answers `not_leader`;
  reads go on everywhere; when the members come back writes resume and no ack is lost.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.etcd import ETCD, Etcd, EtcdCluster
from tests.process.ha_group import (
    DEADLINE_S,
    TTL,
    leader_of,
    node,
    start_group,
    topology,
    total,
)
from tests.process.proc import Client, Proc

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

WRITE = b'{"v":2,"op":"counter.increment","series":"s","key":1,"value":1,"bucket":20260501}\n'


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    etcd = EtcdCluster(tmp_path / "etcd").start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def three(tmp_path: Path, cluster: EtcdCluster) -> Iterator[list[Proc]]:
    # docs/ha.md's rule: ttl - margin - loop_wait above three etcd election timeouts (500 ms
    # here). At ttl 3 that needs loop_wait 0.5 (1.75 s > 1.5 s); at 1 s the window is 1.25 s,
    # and under CI load a keepalive caught in the election landed ~30 ms past the deadline
    procs = [node(tmp_path, cluster, f"n{i}", "--ha-loop-wait=0.5") for i in range(3)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


class Writer:
    """One connection, one write in flight, as fast as answers come: when each ack arrived."""

    def __init__(self, proc: Proc) -> None:
        self.client = Client(proc.port)
        self.acks: list[float] = []
        self.refusals: list[float] = []
        self.errors: set[str] = set()

    def write_for(self, seconds: float, *, stop_after_refusals_s: float | None = None) -> None:
        until = time.monotonic() + seconds
        while (now := time.monotonic()) < until:
            self.client.sock.sendall(WRITE)
            answer = self.client.reply()
            if answer["success"]:
                self.acks.append(time.monotonic())
                continue
            self.errors.add(str(answer["error_code"]))
            if not self.refusals and stop_after_refusals_s is not None:
                until = min(until, now + stop_after_refusals_s)
            self.refusals.append(time.monotonic())
            time.sleep(0.01)

    def longest_gap(self, start: float) -> float:
        times = [start, *self.acks]
        return max(b - a for a, b in itertools.pairwise(times))

    def close(self) -> None:
        self.client.close()


class KeepaliveProbe:
    """Keeps a lease of its own alive every 20 ms on every live member: the last time etcd
    confirmed a keepalive, as this test sees it (an upper bound for the master's own)."""

    def __init__(self, cluster: EtcdCluster) -> None:
        self.cluster = cluster
        self.lease = str(cluster.leader().post("/v3/lease/grant", {"TTL": "60"})["ID"])
        self.last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KeepaliveProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for member in self.cluster.members:
                if not member.alive():
                    continue
                sent = time.monotonic()
                try:
                    answer = member.post("/v3/lease/keepalive", {"ID": self.lease}, timeout=0.3)
                except OSError:
                    continue
                if answer.get("result", {}).get("TTL"):
                    self.last_ok = max(self.last_ok, sent)
            self._stop.wait(0.02)


def test_killing_the_etcd_leader_neither_fences_nor_fails_over_the_master(
    cluster: EtcdCluster, three: list[Proc]
) -> None:
    master = start_group(three)
    term = topology(master)["term"]
    writer = Writer(master)
    try:
        writer.write_for(1.0)
        leader = cluster.leader()
        leader.kill()
        killed = time.monotonic()
        writer.write_for(3 * TTL)  # the election, and long past any deadline it could cause
        gap = writer.longest_gap(killed)
        elected = cluster.leader()
    finally:
        writer.close()
    print(
        f"etcd leader {leader.name} killed, {elected.name} elected; longest gap between acks"
        f" {gap:.3f} s (deadline {DEADLINE_S} s), {len(writer.acks)} acks"
    )
    assert not writer.errors, writer.errors
    assert gap < DEADLINE_S
    assert topology(master)["role"] == "master"
    assert topology(master)["term"] == term
    assert "ha.step_down" not in master.stderr()


@pytest.mark.parametrize("survivor", ["leader", "follower"])
def test_without_etcd_quorum_the_master_fences_at_its_deadline_and_resumes_after(
    cluster: EtcdCluster, three: list[Proc], survivor: str
) -> None:
    master = start_group(three)
    leader = cluster.leader()
    if survivor == "leader":  # it may renew leases until it notices it lost its quorum
        doomed = [m for m in cluster.members if m is not leader]
    else:
        doomed = [leader, next(m for m in cluster.members if m is not leader)]
    writer = Writer(master)
    with KeepaliveProbe(cluster) as probe:
        writer.write_for(1.0)
        for member in doomed:
            member.kill()
        killed = time.monotonic()
        writer.write_for(TTL + 3, stop_after_refusals_s=1.0)
    last_keepalive = probe.last_ok
    writer.close()
    assert writer.acks, "no write was acknowledged before the kill"
    assert writer.refusals, "the master never stopped acknowledging"
    last_ack = writer.acks[-1]
    print(
        f"quorum lost (the {survivor} survived): last ack {last_ack - killed:.3f} s after the kill,"
        f" {last_ack - last_keepalive:.3f} s after the last keepalive etcd confirmed"
        f" ({last_keepalive - killed:+.3f} s from the kill); first refusal"
        f" {writer.refusals[0] - killed:.3f} s after the kill; refused with {writer.errors}"
    )
    assert writer.errors == {"not_leader"}
    # the probe sees etcd's last confirmation to within its 20 ms period; answers take a
    # little to arrive: 0.1 s of slack for both
    assert last_ack < last_keepalive + DEADLINE_S + 0.1
    assert last_ack < last_keepalive + TTL
    assert writer.refusals[0] > last_ack  # once fenced, never acked again
    for proc in three:  # reads go on without etcd
        assert total(proc) <= len(writer.acks) + 1
    restarted = time.monotonic()
    for member in doomed:
        member.restart()
    etcd_back = time.monotonic() - restarted
    new = leader_of(three, 4 * TTL)
    resumed = time.monotonic() - restarted
    print(
        f"etcd members restarted in {etcd_back:.2f} s; writes resumed on"
        f" {new.directory.name} ({'the same' if new is master else 'another'} node)"
        f" {resumed:.2f} s after the restarts began"
    )
    # every ack survives; one write refused after its batch was written may survive as well
    # (docs/ha.md: a late not_leader is like a broken connection)
    assert len(writer.acks) <= total(new) <= len(writer.acks) + 1


def test_a_killed_member_rejoins_the_cluster(cluster: EtcdCluster) -> None:
    member: Etcd = cluster.members[0]
    member.kill()
    member.restart()
    status = member.post("/v3/maintenance/status", {})
    assert status["leader"] in {
        m.post("/v3/maintenance/status", {})["header"]["member_id"] for m in cluster.members
    }
    assert member.post("/v3/kv/put", {"key": "eA==", "value": "eQ=="})["header"]
