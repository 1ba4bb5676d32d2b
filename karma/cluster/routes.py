"""Where each op goes in a cluster (spec: sharding §4), one entry per op of the op table.

`ROUTE_BY_CLASS` covers every request class (aliases take their op's route); a test checks
that no op of `karma.protocol.optable` is left out.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from karma.protocol import requests as r
from karma.protocol.optable import ALL_CLASSES, by_class
from karma.protocol.requests import limits as lr


class Route(Enum):
    #: one subject key: the group owning its slot
    ONE_GROUP = "one_group"
    #: several keys: one part per owning group, merged back in the caller's order
    SPLIT = "split"
    #: the whole series or the whole store: every group, merged
    EVERY_GROUP = "every_group"
    #: about one node (snapshots, replication, statistics): the first group's leader
    ONE_NODE = "one_node"
    #: answered by whoever routes (the router, the client): `system.ping`, `cluster.topology`
    ROUTER = "router"


_ROUTES: Final[dict[type[r.Request], Route]] = {
    r.Ping: Route.ROUTER,
    r.ClusterTopology: Route.ROUTER,
    r.Health: Route.ONE_NODE,
    r.Stats: Route.ONE_NODE,
    r.Metrics: Route.ONE_NODE,
    r.SlowLog: Route.ONE_NODE,
    r.SystemCompact: Route.EVERY_GROUP,
    r.TreeList: Route.EVERY_GROUP,
    r.TreeCreate: Route.EVERY_GROUP,
    r.TreeDrop: Route.EVERY_GROUP,
    r.TreeReset: Route.EVERY_GROUP,
    r.TreeInfo: Route.EVERY_GROUP,
    r.TreeKeys: Route.EVERY_GROUP,
    r.TreeSummary: Route.EVERY_GROUP,
    r.TreeTop: Route.EVERY_GROUP,
    r.TreeSeries: Route.EVERY_GROUP,
    r.TreeDeleteRange: Route.EVERY_GROUP,
    r.SeriesCompact: Route.EVERY_GROUP,
    r.DeleteBefore: Route.EVERY_GROUP,
    r.Increment: Route.ONE_GROUP,
    r.Decrement: Route.ONE_GROUP,
    r.Sum: Route.ONE_GROUP,
    r.CounterSeries: Route.ONE_GROUP,
    r.CounterDeleteRange: Route.ONE_GROUP,
    r.CounterReset: Route.ONE_GROUP,
    r.BatchSum: Route.SPLIT,
    r.BatchReset: Route.SPLIT,
    r.BatchDeleteRange: Route.SPLIT,
    r.MultiSum: Route.SPLIT,
    r.BatchAdd: Route.SPLIT,
    r.BatchSet: Route.SPLIT,
    r.SnapshotCreate: Route.ONE_NODE,
    r.SnapshotCreateAll: Route.ONE_NODE,
    r.SnapshotList: Route.ONE_NODE,
    r.SnapshotInfo: Route.ONE_NODE,
    r.SnapshotVerify: Route.ONE_NODE,
    r.SnapshotLoad: Route.ONE_NODE,
    r.SnapshotFetch: Route.ONE_NODE,
    r.SnapshotFetchChunk: Route.ONE_NODE,
    r.SnapshotManifest: Route.ONE_NODE,
    r.RecoveryCheckpoint: Route.ONE_NODE,
    r.RecoveryStatus: Route.ONE_NODE,
    r.ReconciliationReport: Route.ONE_NODE,
    r.ReplicationEntries: Route.ONE_NODE,
    r.ReplicationStatus: Route.ONE_NODE,
    # streams: begin, commit and abort on every group; a chunk's items split by key, and every
    # group gets every chunk (its part may be empty) so that each group's chunk_seq stays
    # consecutive
    r.IngestBegin: Route.EVERY_GROUP,
    r.IngestChunk: Route.SPLIT,
    r.IngestCommit: Route.EVERY_GROUP,
    r.IngestAbort: Route.EVERY_GROUP,
    r.IdempotencyPrune: Route.EVERY_GROUP,
    r.IdempotencySnapshotFetchChunk: Route.ONE_NODE,
    # the single form names one key (ONE_GROUP when planned); items split by group, and a
    # consume whose items span groups becomes a two-phase plan (karma.cluster.consume)
    lr.LimitConsume: Route.SPLIT,
    lr.LimitCheck: Route.SPLIT,
    lr.LimitReserve: Route.SPLIT,
    # a reservation lives on the group of its keys; the id alone does not say which, so every
    # group is asked and the one that knows it answers
    lr.LimitCommit: Route.EVERY_GROUP,
    lr.LimitVoid: Route.EVERY_GROUP,
    lr.LimitReservation: Route.EVERY_GROUP,
    lr.LimitStatus: Route.ONE_NODE,
    lr.LimitSnapshotFetchChunk: Route.ONE_NODE,
    # WAL effect entries: refused from clients before any routing
    lr.LimitApply: Route.ONE_NODE,
    lr.LimitHold: Route.ONE_NODE,
    lr.LimitSettle: Route.ONE_NODE,
}

#: request class → route, aliases included
ROUTE_BY_CLASS: Final[dict[type[r.Request], Route]] = by_class(_ROUTES)
if len(ROUTE_BY_CLASS) != len(ALL_CLASSES):
    raise RuntimeError("a request class of the union has no cluster route")


def route_of(request: r.Request) -> Route:
    return ROUTE_BY_CLASS[type(request)]
