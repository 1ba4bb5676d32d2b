"""Plain integer counters for stats and metrics: bumped on the hot path, read at scrape time."""

from __future__ import annotations

import bisect
import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Final, Literal

import attrs

#: Upper bounds, in seconds, of the command latency histogram's buckets (Prometheus base units).
LATENCY_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

#: "wal": appends and rotation of the WAL; "files": snapshots and recovery.json, which are
#: whole new files written beside the old ones.
StorageKind = Literal["wal", "files"]


#: Upper bounds of the entries-per-WAL-batch histogram: 1 to 4 apart (one write in flight per
#: client, a few clients), then powers of two up to --wal-batch-size's default of 1024.
BATCH_ENTRY_BUCKETS: Final = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0)


@attrs.define(eq=False, slots=True)
class Histogram:
    """Cumulative-at-scrape histogram: one plain int per bucket (the last one is +Inf)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = attrs.field(
        default=attrs.Factory(lambda self: [0] * (len(self.bounds) + 1), takes_self=True)
    )
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations at or below it), +Inf last."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@attrs.define(eq=False)
class WalBatches:
    """How the WAL writer's batches went: entries per write (and per fdatasync with fsync on),
    and where a batch's time goes, for `GET /metrics` (not system.stats: karma 1.0's shape)."""

    entries: Histogram = attrs.field(factory=lambda: Histogram(BATCH_ENTRY_BUCKETS))
    #: from the oldest entry's submit to the write starting (gathering plus handing it over)
    wait_s: Histogram = attrs.field(factory=Histogram)
    #: the write (+ fdatasync, on the WAL thread, with fsync on) and the reachability stat
    sync_s: Histogram = attrs.field(factory=Histogram)
    #: fsync on: the hops of a batch: to the WAL thread if it slept, and back to the loop
    handoff_s: Histogram = attrs.field(factory=Histogram)

    def one_entry_written(self) -> None:
        """A write logged on its own, synchronously (fsync off): 1 entry, no wait."""
        self.entries.counts[0] += 1
        self.entries.total += 1


@attrs.define(eq=False)
class Counters:
    command_count: int = 0
    error_count: int = 0
    query_timeout_count: int = 0
    batch_read_count: int = 0
    batch_read_key_count: int = 0
    batch_write_count: int = 0
    batch_write_item_count: int = 0
    retention_count: int = 0
    compact_count: int = 0
    latency_ms_total: float = 0.0
    latency_ms_last: float = 0.0
    reconciliation_run_count: int = 0
    reconciliation_checked_points: int = 0
    reconciliation_mismatch_count: int = 0
    reconciliation_absolute_drift: int = 0
    reconciliation_last_run_unix: int = 0
    reconciliation_last_checked_points: int = 0
    reconciliation_last_mismatch_count: int = 0
    reconciliation_last_absolute_drift: int = 0
    reconciliation_last_max_abs_delta: int = 0
    #: accept(2) calls that failed for lack of descriptors or memory (server/accept.py)
    accept_error_count: int = 0

    @property
    def latency_ms_avg(self) -> float:
        return self.latency_ms_total / self.command_count if self.command_count else 0.0

    latency_by_op: dict[str, Histogram] = attrs.field(factory=dict)
    ingest_latency_ms_last: float = 0.0
    ingest_latency_ms_total: float = 0.0
    ingest_events: int = 0
    idempotency_latency_ms_last: float = 0.0
    idempotency_latency_ms_total: float = 0.0
    idempotency_events: int = 0
    #: error answers by (code, op), for karma_errors_total{code,op} on /metrics
    errors_by: dict[tuple[str, str], int] = attrs.field(factory=dict)

    def record_ingest(self, elapsed_ms: float) -> None:
        self.ingest_latency_ms_last = elapsed_ms
        self.ingest_latency_ms_total += elapsed_ms
        self.ingest_events += 1

    def record_idempotent_write(self, elapsed_ms: float) -> None:
        self.idempotency_latency_ms_last = elapsed_ms
        self.idempotency_latency_ms_total += elapsed_ms
        self.idempotency_events += 1

    @staticmethod
    def average(total: float, count: int) -> float:
        return round(total / count, 4) if count else 0.0

    def record_error(self, code: str, op: str) -> None:
        """One error answer, by code and op ("-" when the line named no known op): both label
        sets are closed (the error code table and the op table), so the series stay bounded."""
        key = (code, op)
        self.errors_by[key] = self.errors_by.get(key, 0) + 1

    def record(self, elapsed_ms: float, *, failed: bool, op: str = "") -> None:
        if op:
            histogram = self.latency_by_op.get(op)
            if histogram is None:
                histogram = self.latency_by_op[op] = Histogram()
            histogram.observe(elapsed_ms / 1000)
        self.command_count += 1
        self.latency_ms_total += elapsed_ms
        self.latency_ms_last = elapsed_ms
        if failed:
            self.error_count += 1


@attrs.define(eq=False, slots=True)
class SlowLog:
    """The newest slow requests (Redis's SLOWLOG): a bounded ring, oldest dropped first."""

    size: int = 128
    _entries: collections.deque[dict[str, object]] = attrs.field(
        factory=lambda: collections.deque(maxlen=128)
    )
    total: int = 0

    def record(self, op: str, duration_ms: float, at_unix: float, *, failed: bool) -> None:
        self.total += 1
        self._entries.append(
            {
                "id": self.total,
                "op": op,
                "duration_ms": round(duration_ms, 3),
                "at_unix": int(at_unix),
                "failed": failed,
            }
        )

    def entries(self, limit: int | None) -> dict[str, object]:
        newest = list(reversed(self._entries))[: limit or self.size]
        return {"total": self.total, "entries": newest}


@attrs.define(eq=False)
class NodeStatus:
    """What the shell knows about the node, kept current so a stats read does no I/O."""

    replication: ReplicationState = attrs.field(factory=lambda: ReplicationState())

    role: str = "master"
    wal_enabled: bool = True
    started_at: float = 0.0
    wal_bytes: int = 0
    wal_current_lsn: int = 0
    dump_count: int = 0
    last_snapshot_lsn: int = 0
    #: the client port accepts connections (restore is done): readiness starts here
    listening: bool = False
    #: What the data directory refuses now, by kind, newest last; a kind is cleared by its
    #: next successful write. Kinds are kept apart because an immutable directory still takes
    #: appends to the open karma.wal while refusing every new file: one success must not hide
    #: the other kind's failure.
    storage_problems: dict[StorageKind, str] = attrs.field(factory=dict)
    #: refused WAL batches, snapshots and recovery checkpoints since start
    storage_error_count: int = 0
    wal_batches: WalBatches = attrs.field(factory=WalBatches)

    def storage_refused(self, kind: StorageKind, message: str) -> None:
        self.storage_error_count += 1
        self.storage_problems.pop(kind, None)  # re-inserted last: the newest is the one named
        self.storage_problems[kind] = message

    def storage_recovered(self, kind: StorageKind) -> None:
        self.storage_problems.pop(kind, None)

    @property
    def storage_error(self) -> str | None:
        """The newest storage problem not yet cleared, or None."""
        return next(reversed(self.storage_problems.values()), None)


@attrs.define(eq=False)
class Attempts:
    """Counts and times of one step a replica repeats (a poll, a bootstrap)."""

    attempts: int = 0
    successes: int = 0
    errors: int = 0
    last_attempt_unix: int = 0
    last_success_unix: int = 0
    last_error_unix: int = 0
    last_error: str | None = None

    @contextlib.contextmanager
    def attempt(self, clock: Callable[[], float]) -> Iterator[None]:
        """Count the block as one attempt; any exception in it counts as its error."""
        self.attempts += 1
        self.last_attempt_unix = int(clock())
        try:
            yield
        except Exception as exc:
            self.errors += 1
            self.last_error_unix = int(clock())
            self.last_error = str(exc) or type(exc).__name__
            raise
        self.successes += 1
        self.last_success_unix = int(clock())
        self.last_error = None

    def fields(self, step: str) -> list[tuple[str, object]]:
        return [
            (f"replication_{step}_attempt_count", self.attempts),
            (f"replication_{step}_success_count", self.successes),
            (f"replication_{step}_error_count", self.errors),
            (f"replication_last_{step}_attempt_unix", self.last_attempt_unix),
            (f"replication_last_{step}_success_unix", self.last_success_unix),
            (f"replication_last_{step}_error_unix", self.last_error_unix),
            (f"replication_last_{step}_error", self.last_error),
        ]


@attrs.define(eq=False)
class ReplicationState:
    """A replica's view of its master, for replication.status, stats and metrics."""

    source_lsn: int = 0
    entries_applied: int = 0
    last_received_unix: int = 0
    poll: Attempts = attrs.field(factory=Attempts)
    bootstrap: Attempts = attrs.field(factory=Attempts)

    def fields(self, replayed_lsn: int) -> list[tuple[str, object]]:
        """karma 1.0's replication fields, in its order."""
        return [
            ("replication_replayed_lsn", replayed_lsn),
            ("replication_lag_entries", max(0, self.source_lsn - replayed_lsn)),
            ("replication_entries_applied", self.entries_applied),
            ("replication_last_received_unix", self.last_received_unix),
            *self.poll.fields("poll"),
            *self.bootstrap.fields("bootstrap"),
        ]
