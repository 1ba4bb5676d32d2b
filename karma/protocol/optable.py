"""Per-op facts in one table: karma 1.0's internal name, access class, idempotency eligibility.

The access class drives auth (a read token runs READ only), the slave rule (a slave runs READ
only) and what the WAL logs (WRITE). The internal name appears in `forbidden` messages
("Read-only token cannot execute command increment").
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from enum import Enum
from typing import Final, TypeVar

import attrs

from karma.protocol import requests as r
from karma.protocol.requests import AnyRequest
from karma.protocol.requests import limits as lr


class Access(Enum):
    READ = "read"  # never changes anything
    WRITE = "write"  # changes the store: goes through the WAL
    ADMIN = "admin"  # changes files or counters outside the store (snapshots, reports)


@attrs.frozen
class OpSpec:
    request: type[r.Request]
    internal_name: str
    access: Access
    idempotent: bool = False
    #: a WAL effect entry (limit.apply, …): read from the WAL and from a master, never taken
    #: from a client
    internal: bool = False

    @property
    def tags(self) -> list[str]:
        """The op's wire name, then its aliases'."""
        return [r.op_tag(cls) for cls, spec in SPEC_BY_CLASS.items() if spec is self]


T = TypeVar("T")

R, W, A = Access.READ, Access.WRITE, Access.ADMIN

SPECS: Final[tuple[OpSpec, ...]] = (
    OpSpec(r.Ping, "ping", R),
    OpSpec(r.Health, "health", R),
    OpSpec(r.Stats, "stats", R),
    OpSpec(r.Metrics, "metrics", R),
    OpSpec(r.SystemCompact, "compact", W),
    OpSpec(r.SlowLog, "slowlog", R),
    OpSpec(r.TreeList, "trees", R),
    OpSpec(r.TreeCreate, "create", W),
    OpSpec(r.TreeDrop, "drop", W),
    OpSpec(r.TreeReset, "reset", W, idempotent=True),
    OpSpec(r.TreeInfo, "tree_info", R),
    OpSpec(r.TreeKeys, "tree_keys", R),
    OpSpec(r.TreeSummary, "tree_summary", R),
    OpSpec(r.TreeTop, "tree_top", R),
    OpSpec(r.TreeSeries, "find", R),
    OpSpec(r.TreeDeleteRange, "delete", W, idempotent=True),
    OpSpec(r.SeriesCompact, "compact", W),
    OpSpec(r.DeleteBefore, "delete_before", W),
    OpSpec(r.Increment, "increment", W, idempotent=True),
    OpSpec(r.Decrement, "decrement", W, idempotent=True),
    OpSpec(r.Sum, "sum", R),
    OpSpec(r.CounterSeries, "find", R),
    OpSpec(r.CounterDeleteRange, "delete", W, idempotent=True),
    OpSpec(r.CounterReset, "reset", W, idempotent=True),
    OpSpec(r.BatchSum, "batch_sum", R),
    OpSpec(r.BatchReset, "batch_reset", W, idempotent=True),
    OpSpec(r.BatchDeleteRange, "batch_delete_range", W, idempotent=True),
    OpSpec(r.MultiSum, "multi_sum", R),
    OpSpec(r.BatchAdd, "batch_add", W, idempotent=True),
    OpSpec(r.BatchSet, "batch_set", W, idempotent=True),
    OpSpec(r.SnapshotCreate, "dump", A),
    OpSpec(r.SnapshotCreateAll, "dump_all", A),
    OpSpec(r.SnapshotList, "dumps", R),
    OpSpec(r.SnapshotInfo, "snapshot_info", R),
    OpSpec(r.SnapshotVerify, "verify", R),
    OpSpec(r.SnapshotManifest, "snapshot_manifest", R),
    OpSpec(r.SnapshotLoad, "load", A),
    OpSpec(r.SnapshotFetch, "snapshot_fetch", R),
    OpSpec(r.SnapshotFetchChunk, "snapshot_fetch_chunk", R),
    OpSpec(r.RecoveryCheckpoint, "recovery_checkpoint", A),
    OpSpec(r.RecoveryStatus, "recovery_status", R),
    OpSpec(r.ReconciliationReport, "reconciliation_report", A),
    OpSpec(r.ReplicationEntries, "replication_entries", R),
    OpSpec(r.ReplicationStatus, "replication_status", R),
    OpSpec(r.ClusterTopology, "cluster_topology", R),
    OpSpec(r.IngestBegin, "ingest_begin", W),
    OpSpec(r.IngestChunk, "ingest_chunk", W),
    OpSpec(r.IngestCommit, "ingest_commit", W),
    OpSpec(r.IngestAbort, "ingest_abort", W),
    OpSpec(r.IdempotencyPrune, "idempotency_prune", W),
    OpSpec(r.IdempotencySnapshotFetchChunk, "idempotency_snapshot_fetch_chunk", R),
    OpSpec(lr.LimitConsume, "limit_consume", W),
    OpSpec(lr.LimitCheck, "limit_check", R),
    OpSpec(lr.LimitReserve, "limit_reserve", W),
    OpSpec(lr.LimitCommit, "limit_commit", W),
    OpSpec(lr.LimitVoid, "limit_void", W),
    OpSpec(lr.LimitReservation, "limit_reservation", R),
    OpSpec(lr.LimitStatus, "limit_status", R),
    OpSpec(lr.LimitSnapshotFetchChunk, "limit_snapshot_fetch_chunk", R),
    OpSpec(lr.LimitApply, "limit_apply", W, internal=True),
    OpSpec(lr.LimitHold, "limit_hold", W, internal=True),
    OpSpec(lr.LimitSettle, "limit_settle", W, internal=True),
)

#: Every request class of the wire union, aliases included.
ALL_CLASSES: Final[tuple[type[r.Request], ...]] = typing.get_args(AnyRequest)


def by_class(table: Mapping[type, T]) -> dict[type[r.Request], T]:
    """`table` keyed by every concrete request class, aliases included.

    An alias is a subclass of its op's Struct, so each class takes the entry of its nearest
    base in the table; classes with no base there are left out. Built once at import, so a
    lookup on the hot path is one dict access.
    """
    expanded: dict[type[r.Request], T] = {}
    for cls in ALL_CLASSES:
        base = next((parent for parent in cls.__mro__ if parent in table), None)
        if base is not None:
            expanded[cls] = table[base]
    return expanded


#: request class → spec, aliases included.
SPEC_BY_CLASS: Final[dict[type[r.Request], OpSpec]] = by_class({s.request: s for s in SPECS})
if len(SPEC_BY_CLASS) != len(ALL_CLASSES):
    raise RuntimeError("a request class of the union has no OpSpec")
#: wire op tag → request class.
CLASS_BY_TAG: Final[dict[str, type[r.Request]]] = {r.op_tag(cls): cls for cls in ALL_CLASSES}
#: request class → wire op tag (metrics label per op; aliases keep their own name).
TAG_BY_CLASS: Final[dict[type[r.Request], str]] = {cls: tag for tag, cls in CLASS_BY_TAG.items()}
#: request classes whose success acknowledges a change (WRITE and ADMIN ops): refused on a
#: read-only node, fenced on an HA master (aliases included)
CHANGING: Final[frozenset[type[r.Request]]] = frozenset(
    cls for cls, spec in SPEC_BY_CLASS.items() if spec.access is not Access.READ
)
