"""The clients: threads sending keyed `counter.increment` to the node they believe leads.

Plain sockets, one connection per node, each with a 2 s timeout. An op keeps its idempotency key
across attempts: on `not_leader` the client follows the hint (or tries the next node), on a
timeout or a broken connection it tries the next node, on `replication_timeout` it asks the same
node again, until an attempt succeeds or the op's budget runs out. Each client sends the highest
term it has seen (`term`), so a deposed master refuses it.

A request that timed out is not forgotten: its connection is kept (an orphan) and a late answer
is recorded as one more attempt of its op. That is how a frozen master's acks would show: the
requests queued in its socket while it was stopped are answered after SIGCONT, and must all be
refusals (the checker compares every ack with its node's deadline and term).
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
        self.conns: dict[str, socket.socket] = {}
        self.buffers: dict[str, bytes] = {}
        self.orphans: list[Orphan] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            count = 0
            while not self.stop.is_set():
                key = self.rng.choice(self.keys)
                op = Op(self.index, key, f"c{self.index}-{count}", time.time())
                count += 1
                self.history.invoke(op)
                self.perform(op)
                self.history.complete(op, time.time())
                self.reap()
                time.sleep(THINK_S)
            while self.orphans and not self.abort.is_set():
                self.reap(wait=0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, which joins us
            self.error = exc
        finally:
            for sock in self.conns.values():
                sock.close()
            for orphan in self.orphans:
                orphan.sock.close()

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
        while time.time() < give_up and not self.abort.is_set():
            request["term"] = self.max_term  # 0 at first: the answer then carries the term
            node = self.guess
            attempt = self.attempt(op, node, json.dumps(request).encode() + b"\n")
            op.attempts.append(attempt)
            if attempt.outcome == "ok":
                return
            if attempt.code == "replication_timeout":
                continue  # logged there, not yet confirmed: ask again, same key
            hinted = attempt.hint if attempt.code == "not_leader" else None
            if hinted is not None and hinted != node:
                self.guess = hinted
            else:
                self.guess = self.names[(self.names.index(node) + 1) % len(self.names)]
                time.sleep(0.05)
            self.reap()

    def attempt(self, op: Op, node: str, payload: bytes) -> Attempt:
        try:
            sock = self.connect(node)
        except OSError:
            now = time.time()
            return Attempt(node, now, now, "refused")
        sent = time.time()
        try:
            sock.sendall(payload)
            line = self.readline(node, sock)
        except TimeoutError:
            buffer = self.buffers.pop(node)
            del self.conns[node]
            self.orphans.append(Orphan(op, node, sock, sent, buffer, time.monotonic() + ORPHAN_S))
            return Attempt(node, sent, time.time(), "timeout")
        except OSError:
            self.disconnect(node)
            return Attempt(node, sent, time.time(), "broken")
        return self.answered(node, sent, line)

    def answered(self, node: str, sent: float, line: bytes, *, late: bool = False) -> Attempt:
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
            )
        attempt = Attempt(
            node, sent, done, "error", code=str(answer.get("error_code")), term=term, late=late
        )
        match = HINT.search(str(answer.get("response")))
        if match is not None:
            attempt.hint = self.by_port.get(int(match.group(1)))
        return attempt

    def reap(self, wait: float = 0.0) -> None:
        """Record the late answers timed-out requests got; forget those closed or too old."""
        if not self.orphans:
            return
        ready, _, _ = select.select([o.sock for o in self.orphans], [], [], wait)
        for orphan in list(self.orphans):
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
            self.orphans.remove(orphan)
            orphan.sock.close()
            if line is not None:
                late = self.answered(orphan.node, orphan.sent, line, late=True)
                self.history.late(orphan.op, late)

    def connect(self, node: str) -> socket.socket:
        sock = self.conns.get(node)
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", self.ports[node]), timeout=TIMEOUT_S)
            self.conns[node] = sock
            self.buffers[node] = b""
        return sock

    def disconnect(self, node: str) -> None:
        sock = self.conns.pop(node, None)
        if sock is not None:
            sock.close()

    def readline(self, node: str, sock: socket.socket) -> bytes:
        buffer = self.buffers[node]
        while b"\n" not in buffer:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the node")
            buffer += chunk
        line, self.buffers[node] = buffer.split(b"\n", 1)
        return line
