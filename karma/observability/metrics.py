"""Prometheus exposition through prometheus-client, read from plain counters at scrape time.

The hot path only bumps integers (core/counters.py); this collector turns them into metric
families when somebody asks: `system.metrics` over the protocol (karma 1.0's names, exactly) and
`GET /metrics` on `--metrics-port` (the same, plus per-op latency histograms, storage errors and
the server's own counters, such as failed accepts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from karma.core.counters import Counters, Histogram, NodeStatus
from karma.core.limits import Limits
from karma.core.report import METRICS

Stats = Callable[[], dict[str, object]]


class KarmaCollector(Collector):
    """karma 1.0's metric families, from a fresh `system.stats` snapshot."""

    def __init__(self, stats: Stats, errors_by: Counters | None = None) -> None:
        self.stats = stats
        #: on /metrics, karma_errors_total carries {code,op} (the same total, split);
        #: system.metrics keeps karma 1.0's unlabelled family
        self.errors_by = errors_by

    def collect(self) -> Iterator[Metric]:
        values = self.stats()
        for name, kind, help_text, field in METRICS:
            if field == "error_count" and self.errors_by is not None:
                yield _errors_by_code(name, help_text, self.errors_by)
            elif field == "role":
                role = GaugeMetricFamily(name, help_text, labels=["role"])
                role.add_metric([str(values["role"])], 1)
                yield role
            elif kind == "counter":
                yield CounterMetricFamily(
                    name.removesuffix("_total"), help_text, value=_number(values.get(field))
                )
            else:
                yield GaugeMetricFamily(name, help_text, value=_number(values.get(field)))


class LatencyCollector(Collector):
    """`karma_command_duration_seconds{op=…}` histograms."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "karma_command_duration_seconds",
            "Command latency by op, including WAL waits",
            labels=["op"],
        )
        for op, histogram in sorted(self.counters.latency_by_op.items()):
            family.add_metric([op], histogram.cumulative(), histogram.total)
        yield family


class StorageCollector(Collector):
    """Refused writes to the data directory (disk full, read-only, immutable).

    Not in system.metrics, which keeps karma 1.0's names exactly; `GET /metrics` only.
    """

    def __init__(self, status: NodeStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "karma_storage_errors",
            "WAL batches, snapshots and recovery checkpoints the data directory refused",
            value=self.status.storage_error_count,
        )
        yield GaugeMetricFamily(
            "karma_storage_unavailable",
            "1 while the data directory refuses WAL writes or new files (see system.health)",
            value=1 if self.status.storage_problems else 0,
        )


class WalCollector(Collector):
    """The WAL writer's batches: how many entries share a write and an fdatasync (group
    commit), and where a batch's time goes. `GET /metrics` only."""

    FAMILIES: Final = (
        (
            "karma_wal_batch_entries",
            "WAL entries per batch: one write, and one fdatasync with --wal-fsync=true",
            "entries",
        ),
        (
            "karma_wal_batch_wait_seconds",
            "From a batch's oldest submit to its write starting",
            "wait_s",
        ),
        (
            "karma_wal_sync_seconds",
            "A batch's write (and fdatasync, with --wal-fsync=true) and karma.wal check",
            "sync_s",
        ),
        (
            "karma_wal_thread_handoff_seconds",
            "--wal-fsync=true: the hops of a batch between the event loop and the WAL thread",
            "handoff_s",
        ),
    )

    def __init__(self, status: NodeStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        batches = self.status.wal_batches
        for name, help_text, field in self.FAMILIES:
            histogram: Histogram = getattr(batches, field)
            family = HistogramMetricFamily(name, help_text)
            family.add_metric([], histogram.cumulative(), histogram.total)
            yield family


class ServerCollector(Collector):
    """Counters of the server shell that karma 1.0 has no family for (only on /metrics)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "karma_accept_errors",
            "Failed accepts for lack of file descriptors or memory (retried every 0.1 s)",
            value=self.counters.accept_error_count,
        )


def _number(value: object) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value) if isinstance(value, int | float) else 0.0


def _errors_by_code(name: str, help_text: str, counters: Counters) -> Metric:
    family = CounterMetricFamily(
        name.removesuffix("_total"), help_text + ", by error code and op", labels=["code", "op"]
    )
    for (code, op), count in sorted(counters.errors_by.items()):
        family.add_metric([code, op], count)
    return family


class ReplicasCollector(Collector):
    """What a master knows of the replicas polling it (spec/ha.md §3): how far behind each
    one's reported LSN is, and the best of them. `GET /metrics` only."""

    def __init__(self, status: NodeStatus, replica_lsns: Callable[[], dict[str, int]]) -> None:
        self.status = status
        self.replica_lsns = replica_lsns

    def collect(self) -> Iterator[Metric]:
        lsn = self.status.wal_current_lsn
        each = GaugeMetricFamily(
            "karma_replica_behind_entries",
            "WAL entries this node holds that a replica had not reported on its last poll",
            labels=["node"],
        )
        lsns = self.replica_lsns()
        for node, held in sorted(lsns.items()):
            each.add_metric([node], max(0, lsn - held))
        yield each
        yield GaugeMetricFamily(
            "karma_replicas_behind_entries",
            "WAL entries no replica had reported holding (lsn - the best replica's; this"
            " node's lsn when no replica polls it): what async failover could lose now",
            value=max(0, lsn - max(lsns.values(), default=0)),
        )


class RefusalsCollector(Collector):
    """Token refusals (issue 29's audit), by the token's entry name (never the token), op and
    code. `GET /metrics` only."""

    def __init__(self, refusals: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self.refusals = refusals

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "karma_auth_refusals",
            "Requests refused for their token (unauthorized, forbidden), by token name ('-':"
            " none or unknown), op and code",
            labels=["token", "op", "code"],
        )
        for (name, op, code), count in sorted(self.refusals().items()):
            family.add_metric([name, op, code], count)
        yield family


class LimitsCollector(Collector):
    """Reservations held in memory (issue 23): open holds and settled ids are both bounded
    (--max-open-reservations, --max-settled-reservations), and settled ids are forgotten
    oldest first. `GET /metrics` only."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self.limits = limits

    def collect(self) -> Iterator[Metric]:
        limits = self.limits()
        yield GaugeMetricFamily(
            "karma_limit_open_reservations",
            "Reservations held and not yet committed, voided or expired",
            value=len(limits.holds),
        )
        yield GaugeMetricFamily(
            "karma_limit_settled_reservations",
            "Settled reservation ids remembered, so that a retried commit or void replays",
            value=len(limits.settled),
        )
        yield CounterMetricFamily(
            "karma_limit_settled_pruned",
            "Settled reservation ids forgotten, past --idempotency-max-age-seconds or"
            " --max-settled-reservations (a retry then answers not_found)",
            value=limits.settled_pruned,
        )


class ClockCollector(Collector):
    """How far the wall clock is behind the day the node writes to (server/clock.py: the day
    never goes backwards). `GET /metrics` only."""

    def __init__(self, behind_s: Callable[[], float]) -> None:
        self.behind_s = behind_s

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "karma_clock_behind_seconds",
            "Seconds the wall clock is behind the start of the UTC day this node writes to"
            " (0: it is not); while above 0 writes without a bucket keep that day",
            value=self.behind_s(),
        )


def karma_registry(stats: Stats, errors_by: Counters | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KarmaCollector(stats, errors_by))
    return registry


def full_registry(
    stats: Stats,
    counters: Counters,
    status: NodeStatus,
    replica_lsns: Callable[[], dict[str, int]] = dict,
    limits: Callable[[], Limits] | None = None,
    clock_behind_s: Callable[[], float] | None = None,
    refusals: Callable[[], Mapping[tuple[str, str, str], int]] | None = None,
) -> CollectorRegistry:
    registry = karma_registry(stats, counters)
    # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
    ProcessCollector(registry=registry)
    registry.register(LatencyCollector(counters))
    registry.register(StorageCollector(status))
    registry.register(WalCollector(status))
    registry.register(ServerCollector(counters))
    registry.register(ReplicasCollector(status, replica_lsns))
    if limits is not None:
        registry.register(LimitsCollector(limits))
    if clock_behind_s is not None:
        registry.register(ClockCollector(clock_behind_s))
    if refusals is not None:
        registry.register(RefusalsCollector(refusals))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
