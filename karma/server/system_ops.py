"""System ops: ping, health, stats, metrics, the slow log and the cluster's topology.

Reads of the node's own state, answered at once; none writes.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Final

from prometheus_client import CollectorRegistry

from karma.core import report
from karma.observability import metrics
from karma.protocol import requests as r
from karma.server.context import Context, SyncHandler


def ping(ctx: Context, req: r.Ping) -> object:
    return "pong"


def cluster_topology(ctx: Context, req: r.ClusterTopology) -> object:
    if ctx.ha.topology is not None:
        answer = ctx.ha.topology()
    else:
        answer = {"ha": False, "role": ctx.status.role, "leader": None, "term": 0, "members": []}
    if ctx.cluster is not None:  # sharded: the map, and every group with its leader
        answer.update(ctx.cluster.to_wire())
    return answer


def slowlog_entries(ctx: Context, req: r.SlowLog) -> object:
    return ctx.slowlog.entries(r.opt(req.limit))


def health(ctx: Context, req: r.Health) -> object:
    return report.health(ctx.status, time.time())


def stats(ctx: Context, req: r.Stats) -> object:
    return stats_values(ctx)


def stats_values(ctx: Context) -> dict[str, object]:
    values = report.stats(ctx.engine, ctx.status, time.time(), _memory_bytes())
    values["recovery_checkpoint_count"] = len(ctx.checkpoints)
    values["recovery_last_checkpoint_unix"] = max(
        (int(c.get("updated_at_unix", 0)) for c in ctx.checkpoints.values()), default=0
    )
    return values


def metrics_text(ctx: Context, req: r.Metrics) -> object:
    return metrics.exposition(registry(ctx)).decode()


def registry(ctx: Context) -> CollectorRegistry:
    """The karma_* families system.metrics answers with (made once per node)."""
    if ctx.karma_metrics is None:
        ctx.karma_metrics = metrics.karma_registry(partial(stats_values, ctx))
    return ctx.karma_metrics


def _memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


SYNC: Final[dict[type, SyncHandler]] = {
    r.Ping: ping,
    r.ClusterTopology: cluster_topology,
    r.SlowLog: slowlog_entries,
    r.Health: health,
    r.Stats: stats,
    r.Metrics: metrics_text,
}
