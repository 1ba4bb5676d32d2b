"""A master past its deadline acknowledges no copy of a keyed write, replays included (issue 22).

Two connections send the same keyed write at once (same idempotency key, same body): what a
client does when it retries after a timeout while its first copy is still queued. The second
copy finds the first in flight and waits for it; it must then answer what the first got. If the
deadline closed while the first was on disk, that is `not_leader`, never a `success` replay.

- `test_..._cut_off_from_etcd`: node a reaches etcd through a proxy the test cuts (a
  blackhole: the lease cannot be renewed, the other nodes still reach etcd and take over);
  pairs of copies stream across a's deadline, one flush near it made slow (1 s) so a pair is
  surely in flight when the fence closes.
- `test_..._flush_slower_than_the_ttl`: etcd is fine, but one WAL flush on the master takes
  4 s (> ttl 3 s; with --wal-fsync=false the flush runs on the event loop, so the lease is not
  renewed either), with both copies of a write waiting on it.

After the group converges each pair's key holds the write exactly once if any copy was
acknowledged, and a third copy sent to the new master with the same key succeeds and leaves it
counted once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.process.etcd import ETCD, Etcd
from tests.process.ha_group import (
    B1,
    LOOP_WAIT,
    TTL,
    increment,
    leader_of,
    node,
    topology,
    total,
    wait_for,
)
from tests.process.jepsen.checker import parse_log
from tests.process.proc import Client, Proc, free_port
from tests.process.test_ha import etcd

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

__all__ = ["etcd"]  # fixture

#: an answer that came back this long after the node's logged deadline may still have been sent
#: before it (loopback, a busy 2-core machine); a late replay comes ~1 s or more after it
SLACK_S = 0.05


class Blackhole:
    """A TCP proxy in front of etcd that the test can cut: while cut, bytes both ways are
    swallowed and new connections are accepted and left hanging (what a partition looks like
    to an HTTP client: calls time out); healing closes every connection of the cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(down)
            if self.cut.is_set():
                continue  # held open, never answered
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks.append(up)
            for source, sink in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        while True:
            try:
                chunk = source.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if self.cut.is_set():
                continue  # swallowed
            try:
                sink.sendall(chunk)
            except OSError:
                return

    def partition(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        """Close every connection (their streams lost bytes), then forward again."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.cut.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.heal()


def set_failpoints(path: Path, faults: dict[str, Any]) -> None:
    """Atomically (the server re-reads the file when its mtime or size changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults))
    os.replace(tmp, path)


def deadline_of(proc: Proc) -> float:
    """The last `deadline_unix` the node logged (`ha.renewed`, a debug line)."""
    found = [
        float(str(e.fields["deadline_unix"]))
        for e in parse_log(proc.directory.name, proc.stderr())
        if e.event == "ha.renewed"
    ]
    assert found, "no ha.renewed line: is --log-level=debug given?"
    return found[-1]


@attrs.define
class Copy:
    pair: int
    conn: int
    sent: float
    done: float = 0.0
    answer: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return self.answer.get("success") is True

    def describe(self) -> str:
        code = "success" if self.ok else self.answer.get("error_code")
        replay = " (idempotent replay)" if self.answer.get("idempotent") else ""
        return f"pair {self.pair} copy {self.conn}: {code}{replay}"


def request(pair: int) -> bytes:
    body = {
        "v": 2,
        "op": "counter.increment",
        "series": "s",
        "key": 1000 + pair,
        "value": 1,
        "bucket": B1,
        "idempotency_key": f"pair-{pair}",
    }
    return json.dumps(body).encode() + b"\n"


def send_pair(
    conns: list[Client], pair: int, delay_s: float = 0.0, *, hold: Proc | None = None
) -> list[Copy]:
    """The same keyed write on two connections, the second at once or `delay_s` later.

    `hold`: that node is stopped (SIGSTOP) while both copies are sent and resumed 20 ms later,
    so that it reads them in one go, as when both were queued while it was busy. Without it
    the node reads the second copy after the first one's flush about half the time (trio
    shuffles its run batches), and a stalled flush then leaves the second copy to the fence
    check up front.
    """
    data = request(pair)
    copies = []
    if hold is not None:
        hold.signal(signal.SIGSTOP)
    try:
        for i, conn in enumerate(conns):
            if i and delay_s:
                time.sleep(delay_s)
            copies.append(Copy(pair, i, time.time()))
            conn.sock.sendall(data)
        if hold is not None:
            time.sleep(0.02)
    finally:
        if hold is not None:
            hold.signal(signal.SIGCONT)
    for copy, conn in zip(copies, conns, strict=True):
        copy.answer = conn.reply()
        copy.done = time.time()
    return copies


class FirstAck(threading.Thread):
    """Sends a write to the other nodes every 50 ms until one takes it: when the new master
    acknowledged first (the client's send time of that write)."""

    def __init__(self, procs: list[Proc]) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.at: float | None = None
        self.node: Proc | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for proc in self.procs:
                sent = time.time()
                try:
                    answer = increment(proc, key=999)
                except OSError:
                    continue
                if answer.get("success"):
                    self.at, self.node = sent, proc
                    return
            time.sleep(0.05)


def release(procs: list[Proc]) -> None:
    for proc in procs:
        proc.close()


@pytest.fixture
def failpoints(tmp_path: Path) -> Path:
    path = tmp_path / "failpoints.json"
    set_failpoints(path, {})
    return path


def started(tmp_path: Path, etcd_url: Any, etcd: Etcd, failpoints: Path) -> list[Proc]:
    """a (priority 9, debug logs, failpoints) leads; b and c follow it."""
    a = node(tmp_path, etcd_url, "a", "--ha-priority=9", "--log-level=debug")
    others = [node(tmp_path, etcd, name) for name in "bc"]
    a.env["KARMA_FAILPOINTS"] = str(failpoints)
    a.start()
    assert leader_of([a], TTL + LOOP_WAIT + 5) is a
    for proc in others:
        proc.start()
    wait_for(lambda: all(total(p, key=999) == 1 for p in others), 15)
    return [a, *others]


def converge_and_retry(a: Proc, new: Proc, copies: list[Copy], pairs: list[int]) -> list[str]:
    """Once a follows the new master with the same sums, each pair's key holds its write once
    if any copy was acked (else at most once); a third copy on the new master makes it once."""
    problems = []
    wait_for(lambda: topology(a).get("role") == "replica", 20)
    keys = [1000 + p for p in pairs]
    wait_for(lambda: [total(a, k) for k in keys] == [total(new, k) for k in keys], 20)
    before = {p: total(new, 1000 + p) for p in pairs}
    acked = {c.pair for c in copies if c.ok}
    for p, n in before.items():
        if n > 1 or (p in acked and n != 1):
            problems.append(f"pair {p} counted {n} times after convergence (acked: {p in acked})")
    third = Client(new.port)
    try:
        for p in pairs:
            third.sock.sendall(request(p))
            answer = third.reply()
            if answer.get("success") is not True:
                problems.append(f"pair {p}: a third copy on the new master answered {answer}")
    finally:
        third.close()
    after = {p: total(new, 1000 + p) for p in pairs}
    problems += [f"pair {p} counted {n} times after a 3rd copy" for p, n in after.items() if n != 1]
    print(f"pairs counted after convergence: {sum(before.values())} of {len(pairs)}")
    return problems


def judge(copies: list[Copy], deadline: float, first_new_ack: float | None) -> list[str]:
    """No success came back after the deadline (nor after the new master's first ack), and the
    two copies of a pair got the same kind of answer."""
    problems = []
    for c in copies:
        if c.ok and c.done > deadline + SLACK_S:
            problems.append(
                f"{c.describe()} came back {c.done - deadline:+.3f} s after a's deadline"
            )
        if c.ok and first_new_ack is not None and c.sent > first_new_ack:
            problems.append(
                f"{c.describe()} sent {c.sent - first_new_ack:+.3f} s after the new master's"
                " first ack"
            )
    by_pair: dict[int, list[Copy]] = {}
    for c in copies:
        by_pair.setdefault(c.pair, []).append(c)
    for pair_copies in by_pair.values():
        if len({c.ok for c in pair_copies}) > 1:
            first, second = pair_copies
            problems.append(f"{first.describe()} but {second.describe()}")
    return problems


def test_a_master_cut_off_from_etcd_acks_no_copy_of_a_keyed_write_after_its_deadline(
    tmp_path: Path, etcd: Etcd, failpoints: Path
) -> None:
    proxy = Blackhole(etcd.client_port)
    procs: list[Proc] = []
    try:
        procs = started(tmp_path, proxy, etcd, failpoints)
        a, b, c = procs
        conns = [Client(a.port), Client(a.port)]
        rng = random.Random(22)
        copies: list[Copy] = []
        prober = FirstAck([b, c])
        proxy.partition()
        cut = time.time()
        prober.start()
        deadline: float | None = None
        armed = False
        pair = held = 0
        while deadline is None or time.time() < deadline + 1.5:
            if deadline is None and time.time() > cut + 1.2:  # a keepalive in flight is over
                deadline = deadline_of(a)
            if deadline is not None and not armed and time.time() > deadline - 0.3:
                # the next flush takes 1 s: this pair's first copy is written across the
                # deadline while the second copy waits for it
                set_failpoints(failpoints, {"wal.write": {"delay_ms": 1000, "count": 1}})
                armed, held = True, pair
                copies += send_pair(conns, pair, hold=a)
            else:
                delay = 0.0 if pair % 3 == 0 else rng.uniform(0.0, 0.02)
                copies += send_pair(conns, pair, delay)
            pair += 1
            time.sleep(0.01)
        set_failpoints(failpoints, {})
        for conn in conns:
            conn.close()
        assert deadline is not None
        prober.join(timeout=TTL + LOOP_WAIT + 10)
        assert prober.node is not None, "no other node took over"
        failover = prober.at - cut if prober.at is not None else None
        acked = [x for x in copies if x.ok]
        replays = sum(bool(x.answer.get("idempotent")) for x in acked)
        print(
            f"\n{pair} pairs, {len(acked)} acked copies ({replays}"
            f" replays), last ack {max(x.done for x in acked) - deadline:+.3f} s vs deadline,"
            f" deadline {deadline - cut:.2f} s after the cut, new master's first ack"
            f" {failover:.2f} s after it"
        )
        for x in copies:
            if x.pair == held:
                sent, back = x.sent - deadline, x.done - deadline
                print(f"  {x.describe()}: sent {sent:+.3f} s, back {back:+.3f} s (vs deadline)")
        problems = judge(copies, deadline, prober.at)
        proxy.heal()
        problems += converge_and_retry(a, prober.node, copies, list(range(pair)))
        for line in problems:
            print("VIOLATION", line)
        assert not problems, problems
    finally:
        release(procs)
        proxy.close()


def test_a_master_whose_flush_outlasts_the_ttl_acks_neither_copy_of_a_keyed_write(
    tmp_path: Path, etcd: Etcd, failpoints: Path
) -> None:
    procs: list[Proc] = []
    try:
        procs = started(tmp_path, etcd, etcd, failpoints)
        a, b, c = procs
        conns = [Client(a.port), Client(a.port)]
        late = Client(a.port)  # a third copy, sent while the flush is stalled
        prober = FirstAck([b, c])
        copies = send_pair(conns, 0)  # a healthy pair first: acked once, the replay too
        assert [x.ok for x in copies] == [True, True], copies
        # async replication: an ack the replicas never fetched may be lost in a failover (the
        # documented async window), so the healthy pair is on both replicas before the stall
        wait_for(lambda: all(total(p, key=1000) == 1 for p in (b, c)), 15)
        set_failpoints(failpoints, {"wal.write": {"delay_ms": 4000}})  # every flush from now
        stalled = time.time()
        prober.start()
        pair: list[Copy] = []
        third = Copy(1, 2, 0.0)

        def later() -> None:
            time.sleep(0.5)
            third.sent = time.time()
            late.sock.sendall(request(1))
            third.answer = late.reply()
            third.done = time.time()

        sender = threading.Thread(target=later, daemon=True)
        sender.start()
        pair = send_pair(conns, 1, hold=a)
        sender.join(timeout=20)
        set_failpoints(failpoints, {})
        deadline = deadline_of(a)
        prober.join(timeout=TTL + LOOP_WAIT + 10)
        assert prober.node is not None, "no other node took over"
        for conn in [*conns, late]:
            conn.close()
        print(
            f"\nflush stalled at +0 s; a's deadline {deadline - stalled:+.2f} s; answers"
            f" {[(x.describe(), round(x.done - stalled, 2)) for x in [*pair, third]]};"
            f" new master's first ack {prober.at - stalled if prober.at else None:+.2f} s"
        )
        problems = judge([*copies, *pair], deadline, prober.at)
        problems += judge([third], deadline, prober.at)
        for x in [*pair, third]:
            if x.answer.get("error_code") != "not_leader":
                problems.append(f"{x.describe()}, not not_leader")
        problems += converge_and_retry(a, prober.node, [*copies, *pair, third], [0, 1])
        for line in problems:
            print("VIOLATION", line)
        assert not problems, problems
    finally:
        release(procs)
