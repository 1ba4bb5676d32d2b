"""A request as data: a `Call` is an op, its fields and how to read the answer; and when it
may be sent again (the op classes, a fresh idempotency key, the pause between attempts).

The sync and async clients only differ in how they send a Call; the builders of each op's Call
are `karma.client.calls` and `karma.client.limit_calls`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

T = TypeVar("T")

#: Ops that may carry an idempotency key (karma 1.0's eligible writes).
KEYED_OPS = frozenset(
    {
        "counter.increment",
        "counter.decrement",
        "series.batch_add",
        "series.batch_set",
        "counter.reset",
        "counter.batch_reset",
        "counter.delete_range",
        "counter.batch_delete_range",
        "tree.reset",
        "tree.delete_range",
    }
)
#: Ops identified by a reservation id: a resend replays the first outcome.
ID_OPS = frozenset({"limit.reserve", "limit.commit", "limit.void"})
#: Ops that change nothing: always safe to retry.
READ_OPS = frozenset(
    {
        "system.ping",
        "system.health",
        "system.stats",
        "system.metrics",
        "cluster.topology",
        "tree.list",
        "tree.info",
        "tree.keys",
        "tree.summary",
        "tree.top",
        "tree.series",
        "counter.sum",
        "counter.series",
        "counter.batch_sum",
        "counter.multi_sum",
        "snapshot.list",
        "snapshot.info",
        "snapshot.verify",
        "snapshot.fetch",
        "snapshot.fetch_chunk",
        "recovery.status",
        "replication.status",
        "replication.entries",
        "limit.check",
        "limit.reservation",
        "limit.status",
        "idempotency.snapshot_fetch_chunk",
    }
)


@attrs.frozen
class Call(Generic[T]):
    op: str
    fields: dict[str, Any]
    read: Callable[[Any], T]
    #: the answer when the series does not exist (domain verbs: nothing used yet)
    if_missing: Callable[[], T] | None = None

    @property
    def retry_safe(self) -> bool:
        return self.op in READ_OPS or self.op in ID_OPS or "idempotency_key" in self.fields

    def keyed_for(self, retries: int) -> Call[T]:
        """This call, with a fresh idempotency key if it is a keyable write that may be resent."""
        if not retries or self.op not in KEYED_OPS or "idempotency_key" in self.fields:
            return self
        return attrs.evolve(self, fields={**self.fields, "idempotency_key": uuid.uuid4().hex})


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling, capped at 1 s."""
    return min(1.0, 0.05 * 2.0**attempt)
