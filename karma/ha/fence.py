"""The fencing gate: a node acknowledges writes only before its lease deadline.

One object, consulted by the write path (the WAL writer before it logs a client's batch and
again before it wakes the waiters, and the connection before the answer bytes go out). The HA
task moves the deadline: `sent_at + ttl - margin` after each keepalive that etcd answered with
a TTL, counted from the moment the keepalive was *sent* (etcd keeps a lease at least TTL past
a keepalive it processed, and leader changes only extend leases: etcd #9395), so the gate
closes before any rival can create the leader key, given clock-rate drift << margin.

The clock is injected (monotonic seconds): this module reads no clock itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from karma.errors import KarmaError


@attrs.define(eq=False)
class Fence:
    clock: Callable[[], float]
    #: monotonic time before which acks are allowed; -inf: not the leader
    deadline: float = -math.inf
    #: the leader's client address, for `not_leader` hints (None: unknown, or it is us, fenced)
    leader_addr: str | None = None
    #: the term this node leads (0: none)
    term: int = 0

    def may_ack(self) -> bool:
        return self.clock() < self.deadline

    def renewed(self, sent_at: float, ttl_s: float, margin_s: float) -> None:
        """etcd confirmed the lease after a keepalive (or grant) sent at `sent_at`."""
        self.deadline = sent_at + ttl_s - margin_s

    def close(self) -> None:
        """Stop acknowledging at once (lease lost, leader key gone, stepping down)."""
        self.deadline = -math.inf
        self.term = 0

    def refusal(self) -> KarmaError:
        return KarmaError.not_leader(self.leader_addr)

    def remaining_s(self) -> float:
        return self.deadline - self.clock()
