"""What the clients did: one Op per keyed increment, with every attempt it took (Jepsen's history).

An op is *invoked* once (a fresh idempotency key) and may be sent several times with that same
key, to the same or other nodes, until one attempt succeeds: a keyed write counts once whichever
attempts reached a node, so the op is `ok` as soon as any attempt is acknowledged. Some ops are
*overlapping*: each send goes out as two copies (same key, same body) on two connections to one
node, the second at once or a little later; each copy's answer is one attempt (`copy` 0 or 1,
the same `send`), and the op still counts once. Otherwise it
ends `info` (an attempt may have been applied: a timeout, a broken connection, or an error the
server can answer after writing) or `fail` (no attempt can have been applied).

Times are client wall clock (`time.time()`), so they compare with the nodes' `deadline_unix`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import attrs

#: error codes answered before anything is written (the request was refused as it stands, or
#: storage_unavailable: "nothing was changed or acknowledged"); every other code may follow a
#: write: not_leader (the deadline passed while the batch was on disk, docs/ha.md),
#: replication_timeout (logged, not yet confirmed), internal_error
DEFINITE_CODES = frozenset(
    {
        "invalid_json",
        "unsupported_protocol",
        "unknown_command",
        "validation_error",
        "unauthorized",
        "forbidden",
        "request_too_large",
        "storage_unavailable",
        "capacity_exceeded",
    }
)


@attrs.define
class Attempt:
    node: str
    #: wall clock just before the request bytes were sent
    sent: float
    done: float
    #: "ok", "error" (an answer with an error code), "timeout", "broken" (the connection failed
    #: after sending), "refused" (nothing was sent: the connection could not be opened)
    outcome: str
    code: str | None = None
    term: int | None = None
    lsn: int | None = None
    replayed: bool = False
    #: the node a `not_leader` answer named as leader
    hint: str | None = None
    #: the answer came after the client had timed out (and retried elsewhere)
    late: bool = False
    #: which send of the op this attempt belongs to (0: the first), and which copy of it
    #: (1: the overlapping second copy, on another connection to the same node)
    send: int = 0
    copy: int = 0

    def maybe_applied(self) -> bool:
        if self.outcome in ("ok", "timeout", "broken"):
            return True
        return self.outcome == "error" and self.code not in DEFINITE_CODES


@attrs.define
class Op:
    client: int
    key: int
    idempotency_key: str
    invoked: float
    attempts: list[Attempt] = attrs.field(factory=list)
    #: "invoke" while running, then "ok", "fail" or "info"
    type: str = "invoke"
    completed: float | None = None
    #: an overlapping op: the second copy of each send goes this many seconds after the first
    #: (0.0: at once); None: one copy per send
    overlap: float | None = None

    @property
    def acks(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == "ok"]

    def finish(self, now: float) -> None:
        self.completed = now
        if self.acks:
            self.type = "ok"
        elif any(a.maybe_applied() for a in self.attempts):
            self.type = "info"
        else:
            self.type = "fail"


@attrs.define(eq=False)
class History:
    ops: list[Op] = attrs.field(factory=list)
    #: completion time of the latest acknowledged op (the nemesis waits for progress on it)
    last_ack: float = 0.0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def invoke(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def complete(self, op: Op, now: float) -> None:
        with self._lock:
            op.finish(now)
            if op.type == "ok":
                self.last_ack = max(self.last_ack, now)

    def late(self, op: Op, attempt: Attempt) -> None:
        """A timed-out attempt's answer came after all: one more attempt (the op may become ok)."""
        with self._lock:
            op.attempts.append(attempt)
            if op.completed is not None:
                op.finish(op.completed)

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)

    def dump(self, path: Path) -> None:
        """One JSON line per op, attempts included: the raw material of a failed run."""
        with path.open("w") as out:
            for op in self.snapshot():
                out.write(json.dumps(attrs.asdict(op)) + "\n")
