"""Plain integer counters for stats and metrics: bumped on the hot path, read at scrape time."""

from __future__ import annotations

import attrs


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

    @property
    def latency_ms_avg(self) -> float:
        return self.latency_ms_total / self.command_count if self.command_count else 0.0

    def record(self, elapsed_ms: float, *, failed: bool) -> None:
        self.command_count += 1
        self.latency_ms_total += elapsed_ms
        self.latency_ms_last = elapsed_ms
        if failed:
            self.error_count += 1


@attrs.define(eq=False)
class NodeStatus:
    """What the shell knows about the node, kept current so a stats read does no I/O."""

    role: str = "master"
    wal_enabled: bool = True
    started_at: float = 0.0
    wal_bytes: int = 0
    wal_current_lsn: int = 0
    dump_count: int = 0
    last_snapshot_lsn: int = 0
