"""The clients: threads sending keyed `counter.increment` to the node they believe leads.

Plain sockets, one connection per node, each with a 2 s timeout. An op keeps its idempotency key
across attempts: on `not_leader` the client follows the hint (or tries the next node), on a
timeout or a broken connection it tries the next node, on `replication_timeout` it asks the same
node again, until an attempt succeeds or the op's budget runs out. Each client sends the highest
term it has seen (`term`), so a deposed master refuses it.

Some ops (OVERLAP_P) are *overlapping*: every send of the op goes out twice, the same bytes on
two connections to the same node (a second pool of connections), the second copy at once or
after a short random delay — what a client does when it retries after a timeout while its first
copy is still queued (issue 22). Both answers are read as they come (select), and each is one
attempt of the op; a node that waits for the first copy and then answers the second from its
idempotency record must answer what the first got.

A request that timed out is not forgotten: its connection is kept (an orphan) and a watcher
thread records a late answer, stamped when it arrives, as one more attempt of its op. That is
how a frozen master's acks would show: the requests queued in its socket while it was stopped
(or while its disk stalled) are answered afterwards, and must all be refusals (the checker
compares every ack with its node's deadline and term).
"""

from __future__ import annotations

import json
import random
import re
import select
import socket
import threading
import time
from typing import Any

import attrs

from tests.process.jepsen.cluster import BUCKET, SERIES
from tests.process.jepsen.history import Attempt, History, Op

TIMEOUT_S = 2.0
#: an op is given up (info or fail) after retrying this long
OP_BUDGET_S = 30.0
#: pause between ops, so that four clients do not saturate a 2-core machine
THINK_S = 0.01
#: how long a timed-out request's connection is watched for a late answer (a pause lasts at
#: most ttl + 3 s, then the node reads what queued up)
ORPHAN_S = 20.0
#: the share of ops sent as two overlapping copies; half of those send both at once, the
#: others the second copy up to OVERLAP_DELAY_S later
OVERLAP_P = 0.5
OVERLAP_DELAY_S = 0.05
HINT = re.compile(r"the leader is 127\.0\.0\.1:(\d+)")


@attrs.define(eq=False)
class Orphan:
    """A timed-out request whose connection is watched for a late answer."""

    op: Op
    node: str
    sock: socket.socket
    sent: float
    buffer: bytes
    expires: float
    send: int = 0
    copy: int = 0


@attrs.define(eq=False)
class Copy:
    """One copy of a send in flight: its connection (pool `copy`) and what came back so far."""

    copy: int
    sock: socket.socket
    sent: float
    expires: float


class Client(threading.Thread):
    def __init__(
        self,
        index: int,
        ports: dict[str, int],
        history: History,
        *,
        keys: list[int],
        durability: str | None,
        seed: int,
        stop: threading.Event,
        abort: threading.Event,
    ) -> None:
        super().__init__(name=f"jepsen-client-{index}", daemon=True)
        self.index = index
        self.ports = ports
        self.names = list(ports)
        self.by_port = {port: name for name, port in ports.items()}
        self.history = history
        self.keys = keys
        self.durability = durability
        self.rng = random.Random(seed * 100 + index)
        #: set: invoke no new op (the one in flight still runs to its end)
        self.stop = stop
        #: set: give up the op in flight too (the run failed)
        self.abort = abort
        self.max_term = 0
        self.guess = self.names[index % len(self.names)]
        #: (copy, node) -> connection: pool 0 for every send, pool 1 for overlapping copies
        self.conns: dict[tuple[int, str], socket.socket] = {}
        self.buffers: dict[tuple[int, str], bytes] = {}
        self.orphans: list[Orphan] = []
        self.orphans_lock = threading.Lock()
        #: set once this client invokes nothing more: the watcher ends when no orphan is left
        self.finished = threading.Event()
        self.watcher = threading.Thread(
            target=self.watch, name=f"jepsen-orphans-{index}", daemon=True
        )
        self.error: BaseException | None = None

    def run(self) -> None:
        self.watcher.start()
        try:
            count = 0
            while not self.stop.is_set():
                key = self.rng.choice(self.keys)
                op = Op(self.index, key, f"c{self.index}-{count}", time.time())
                if self.rng.random() < OVERLAP_P:
                    at_once = self.rng.random() < 0.5
                    op.overlap = 0.0 if at_once else self.rng.uniform(0.001, OVERLAP_DELAY_S)
                count += 1
                self.history.invoke(op)
                self.perform(op)
                self.history.complete(op, time.time())
                time.sleep(THINK_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, which joins us
            self.error = exc
        finally:
            self.finished.set()
            self.watcher.join()  # until the orphans are answered, expired, or the run aborted
            for sock in self.conns.values():
                sock.close()

    def perform(self, op: Op) -> None:
        request: dict[str, Any] = {
            "v": 2,
            "op": "counter.increment",
            "series": SERIES,
            "key": op.key,
            "value": 1,
            "bucket": BUCKET,
            "idempotency_key": op.idempotency_key,
        }
        if self.durability is not None:
            request["durability"] = self.durability
        give_up = op.invoked + OP_BUDGET_S
        send = 0
        while time.time() < give_up and not self.abort.is_set():
            request["term"] = self.max_term  # 0 at first: the answer then carries the term
            node = self.guess
            attempts = self.exchange(op, node, json.dumps(request).encode() + b"\n", send)
            send += 1
            op.attempts += attempts
            if any(a.outcome == "ok" for a in attempts):
                return
            attempt = attempts[0]
            if attempt.code == "replication_timeout":
                continue  # logged there, not yet confirmed: ask again, same key
            hinted = attempt.hint if attempt.code == "not_leader" else None
            if hinted is not None and hinted != node:
                self.guess = hinted
            else:
                self.guess = self.names[(self.names.index(node) + 1) % len(self.names)]
                time.sleep(0.05)

    def exchange(self, op: Op, node: str, payload: bytes, send: int) -> list[Attempt]:
        """Send `payload` to `node` (twice when the op overlaps) and read what comes back, each
        answer stamped as it arrives; a copy unanswered after TIMEOUT_S becomes an orphan."""
        copies = 1 if op.overlap is None else 2
        attempts: list[Attempt] = []
        waiting: list[Copy] = []
        for copy in range(copies):
            if copy and op.overlap:
                time.sleep(op.overlap)
            try:
                sock = self.connect(copy, node)
            except OSError:
                now = time.time()
                attempts.append(Attempt(node, now, now, "refused", send=send, copy=copy))
                continue
            sent = time.time()
            try:
                sock.sendall(payload)
            except OSError:
                self.disconnect(copy, node)
                attempts.append(Attempt(node, sent, time.time(), "broken", send=send, copy=copy))
                continue
            waiting.append(Copy(copy, sock, sent, time.monotonic() + TIMEOUT_S))
        while waiting:
            wait = max(0.0, min(c.expires for c in waiting) - time.monotonic())
            ready, _, _ = select.select([c.sock for c in waiting], [], [], wait)
            for c in list(waiting):
                if c.sock in ready:
                    where = (c.copy, node)
                    try:
                        chunk = c.sock.recv(1 << 16)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        waiting.remove(c)
                        self.disconnect(*where)
                        attempts.append(
                            Attempt(node, c.sent, time.time(), "broken", send=send, copy=c.copy)
                        )
                        continue
                    self.buffers[where] += chunk
                    if b"\n" in self.buffers[where]:
                        line, self.buffers[where] = self.buffers[where].split(b"\n", 1)
                        waiting.remove(c)
                        attempts.append(self.answered(node, c.sent, line, send=send, copy=c.copy))
                elif time.monotonic() >= c.expires:
                    waiting.remove(c)
                    where = (c.copy, node)
                    buffer = self.buffers.pop(where)
                    del self.conns[where]
                    orphan = Orphan(
                        op, node, c.sock, c.sent, buffer, time.monotonic() + ORPHAN_S, send, c.copy
                    )
                    with self.orphans_lock:
                        self.orphans.append(orphan)
                    attempts.append(
                        Attempt(node, c.sent, time.time(), "timeout", send=send, copy=c.copy)
                    )
        attempts.sort(key=lambda a: a.copy)
        return attempts

    def answered(
        self,
        node: str,
        sent: float,
        line: bytes,
        *,
        late: bool = False,
        send: int = 0,
        copy: int = 0,
    ) -> Attempt:
        done = time.time()
        answer = json.loads(line)
        term = answer.get("term")
        term = term if isinstance(term, int) else None
        if term is not None:
            self.max_term = max(self.max_term, term)
        if answer.get("success"):
            lsn = answer.get("lsn")
            return Attempt(
                node,
                sent,
                done,
                "ok",
                term=term,
                lsn=lsn if isinstance(lsn, int) else None,
                replayed=answer.get("idempotent") is True,
                late=late,
                send=send,
                copy=copy,
            )
        attempt = Attempt(
            node,
            sent,
            done,
            "error",
            code=str(answer.get("error_code")),
            term=term,
            late=late,
            send=send,
            copy=copy,
        )
        match = HINT.search(str(answer.get("response")))
        if match is not None:
            attempt.hint = self.by_port.get(int(match.group(1)))
        return attempt

    def watch(self) -> None:
        """Record the late answers timed-out requests get, stamped as they arrive; forget
        those closed or too old. Ends once the client is finished and no orphan is left."""
        while not self.abort.is_set():
            with self.orphans_lock:
                orphans = list(self.orphans)
            if not orphans:
                if self.finished.is_set():
                    break
                time.sleep(0.02)
                continue
            ready, _, _ = select.select([o.sock for o in orphans], [], [], 0.02)
            for orphan in orphans:
                line = None
                if orphan.sock in ready:
                    try:
                        chunk = orphan.sock.recv(1 << 16)
                    except OSError:
                        chunk = b""
                    orphan.buffer += chunk
                    if b"\n" in orphan.buffer:
                        line = orphan.buffer.split(b"\n", 1)[0]
                    elif chunk:
                        continue
                elif time.monotonic() < orphan.expires:
                    continue
                with self.orphans_lock:
                    self.orphans.remove(orphan)
                orphan.sock.close()
                if line is not None:
                    late = self.answered(
                        orphan.node,
                        orphan.sent,
                        line,
                        late=True,
                        send=orphan.send,
                        copy=orphan.copy,
                    )
                    self.history.late(orphan.op, late)
        with self.orphans_lock:
            for orphan in self.orphans:
                orphan.sock.close()
            self.orphans.clear()

    def connect(self, copy: int, node: str) -> socket.socket:
        where = (copy, node)
        sock = self.conns.get(where)
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", self.ports[node]), timeout=TIMEOUT_S)
            self.conns[where] = sock
            self.buffers[where] = b""
        return sock

    def disconnect(self, copy: int, node: str) -> None:
        sock = self.conns.pop((copy, node), None)
        self.buffers.pop((copy, node), None)
        if sock is not None:
            sock.close()
