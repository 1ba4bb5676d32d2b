"""`replication.*` and `cluster.topology`: a replica's poll for WAL entries after its LSN, the
replication status, and the HA group's leader, term and members.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64
from karma.protocol.requests.base import Request, opt

__all__ = [
    "REPLICATION_DEFAULT_LIMIT",
    "REPLICATION_MAX_LIMIT",
    "REPLICATION_MAX_WAIT_MS",
    "ClusterTopology",
    "ReplicationEntries",
    "ReplicationStatus",
]


REPLICATION_DEFAULT_LIMIT = 1_000
REPLICATION_MAX_LIMIT = 10_000


#: the longest a replication.entries poll waits for a new entry (wait_ms is capped to it)
REPLICATION_MAX_WAIT_MS = 10_000


class ReplicationEntries(Request, tag="replication.entries", frozen=True, kw_only=True):
    after_lsn: int
    limit: int | UnsetType = UNSET
    # karma-trio's: the polling replica's name (its `after_lsn` is its durable LSN, which
    # `durability:"replicated:N"` writes wait for), the term of its last entry (a master whose
    # history disagrees answers replication_diverged), and how long to wait for a new entry
    node: str | UnsetType = UNSET
    after_term: U64 | UnsetType = UNSET
    wait_ms: U64 | UnsetType = UNSET

    def check(self) -> None:
        if self.after_lsn < 0:
            raise KarmaError.validation("Field after_lsn must be greater than or equal to 0")
        f.check_limit(
            opt(self.limit), default=REPLICATION_DEFAULT_LIMIT, maximum=REPLICATION_MAX_LIMIT
        )


class ReplicationStatus(Request, tag="replication.status", frozen=True, kw_only=True):
    pass


class ClusterTopology(Request, tag="cluster.topology", frozen=True, kw_only=True):
    """HA: the leader's address, the term and the members (karma.ha)."""


AnyReplicationRequest = ReplicationEntries | ReplicationStatus | ClusterTopology
