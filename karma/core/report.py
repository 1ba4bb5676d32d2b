"""system.health, system.stats and system.metrics answers, with karma 1.0's fields and names."""

from __future__ import annotations

from typing import Final

from karma.core.counters import NodeStatus
from karma.core.engine import Engine


def replayed_lsn(status: NodeStatus) -> int:
    """A replica's WAL numbers entries as its master did: its LSN is what it has replayed."""
    return status.wal_current_lsn if status.role == "slave" else 0


def readiness(status: NodeStatus, max_lag_entries: int) -> str | None:
    """Why this node should not get traffic yet, or None when it should (GET /readyz).

    Ready means: restored and listening; the data directory takes writes; and on a replica,
    caught up with a successful poll and at most `max_lag_entries` behind its master.
    """
    if not status.listening:
        return "not listening yet (restoring)"
    if status.storage_error is not None:
        return f"storage: {status.storage_error}"
    if status.role == "slave":
        replication = status.replication
        if not replication.poll.successes:
            return "replica: not bootstrapped from its master yet"
        lag = max(0, replication.source_lsn - replayed_lsn(status))
        if lag > max_lag_entries:
            return f"replica: {lag} entries behind its master (bound {max_lag_entries})"
    return None


def writable_primary(status: NodeStatus, max_lag_entries: int) -> bool:
    """GET /primary: 200 only where writes are taken (HAProxy and old clients find it)."""
    return status.role == "master" and readiness(status, max_lag_entries) is None


def health(status: NodeStatus, now: float) -> dict[str, object]:
    answer: dict[str, object] = {
        "status": "ok",
        "uptime_seconds": int(now - status.started_at),
        "role": status.role,
        "wal_enabled": status.wal_enabled,
    }
    problem = status.storage_error
    if problem is not None:
        # karma 1.0 always answered "ok" (persistence.md §9.1); a data directory refusing
        # writes is worth a load balancer's attention. The field appears only then, so a
        # healthy answer stays exactly karma 1.0's (golden: envelope_ping_health).
        answer["status"] = "unhealthy"
        answer["storage_error"] = problem
    return answer


def stats(engine: Engine, status: NodeStatus, now: float, memory_bytes: int) -> dict[str, object]:
    store, c = engine.store, engine.counters
    idem, ingest = engine.idempotency, engine.ingest
    answer: dict[str, object] = {
        "uptime_seconds": int(now - status.started_at),
        "trees": len(store.series),
        "keys": store.key_count,
        "dump_count": status.dump_count,
        "role": status.role,
        "wal_enabled": status.wal_enabled,
        "wal_bytes": status.wal_bytes,
        "wal_current_lsn": status.wal_current_lsn,
    }
    answer.update(status.replication.fields(replayed_lsn(status)))
    answer.update(
        {
            "memory_bytes": memory_bytes,
            "command_count": c.command_count,
            "error_count": c.error_count,
            "query_timeout_count": c.query_timeout_count,
            "batch_read_count": c.batch_read_count,
            "batch_read_key_count": c.batch_read_key_count,
            "batch_write_count": c.batch_write_count,
            "batch_write_item_count": c.batch_write_item_count,
            "retention_count": c.retention_count,
            "compact_count": c.compact_count,
            "reconciliation_run_count": c.reconciliation_run_count,
            "reconciliation_checked_points": c.reconciliation_checked_points,
            "reconciliation_mismatch_count": c.reconciliation_mismatch_count,
            "reconciliation_absolute_drift": c.reconciliation_absolute_drift,
            "reconciliation_last_run_unix": c.reconciliation_last_run_unix,
            "reconciliation_last_checked_points": c.reconciliation_last_checked_points,
            "reconciliation_last_mismatch_count": c.reconciliation_last_mismatch_count,
            "reconciliation_last_absolute_drift": c.reconciliation_last_absolute_drift,
            "reconciliation_last_max_abs_delta": c.reconciliation_last_max_abs_delta,
            "recovery_checkpoint_count": 0,
            "recovery_last_checkpoint_unix": 0,
            "latency_ms_avg": round(c.latency_ms_avg, 4),
            "latency_ms_last": round(c.latency_ms_last, 4),
            "ingest_active_streams": len(ingest.active),
            "ingest_chunks_applied": ingest.chunks_applied,
            "ingest_chunks_skipped": ingest.chunks_skipped,
            "ingest_chunks_rejected": ingest.chunks_rejected,
            "ingest_items_applied": ingest.items_applied,
            "ingest_latency_ms_last": round(c.ingest_latency_ms_last, 4),
            "ingest_latency_ms_avg": c.average(c.ingest_latency_ms_total, c.ingest_events),
            "idempotency_record_count": len(idem.records),
            "idempotency_hits": idem.hits,
            "idempotency_conflicts": idem.conflicts,
            "idempotency_pruned": idem.pruned,
            "idempotency_write_count": idem.writes,
            "idempotency_write_latency_ms_last": round(c.idempotency_latency_ms_last, 4),
            "idempotency_write_latency_ms_avg": c.average(
                c.idempotency_latency_ms_total, c.idempotency_events
            ),
            "idempotency_committed_stream_count": len(ingest.committed),
        }
    )
    return answer


#: (metric name, type, help, stats field or a constant) in karma 1.0's families.
METRICS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("karma_uptime_seconds", "gauge", "Seconds since start", "uptime_seconds"),
    ("karma_role", "gauge", "1 for the node's role", "role"),
    ("karma_trees", "gauge", "Series in memory", "trees"),
    ("karma_keys", "gauge", "Subject keys in memory", "keys"),
    ("karma_dumps", "gauge", "Snapshot files on disk", "dump_count"),
    ("karma_memory_bytes", "gauge", "Resident memory", "memory_bytes"),
    ("karma_wal_bytes", "gauge", "Bytes in WAL files", "wal_bytes"),
    ("karma_wal_current_lsn", "gauge", "Last assigned WAL LSN", "wal_current_lsn"),
    ("karma_commands_total", "counter", "Commands executed", "command_count"),
    ("karma_errors_total", "counter", "Commands answered with an error", "error_count"),
    (
        "karma_query_timeouts_total",
        "counter",
        "Reads stopped by the query timeout",
        "query_timeout_count",
    ),
    ("karma_command_latency_ms", "gauge", "Latency of the last command", "latency_ms_last"),
    ("karma_command_latency_ms_average", "gauge", "Average command latency", "latency_ms_avg"),
    ("karma_batch_reads_total", "counter", "Batch reads", "batch_read_count"),
    ("karma_batch_read_keys_total", "counter", "Keys read by batch reads", "batch_read_key_count"),
    ("karma_batch_writes_total", "counter", "Batch writes", "batch_write_count"),
    (
        "karma_batch_write_items_total",
        "counter",
        "Items written by batch writes",
        "batch_write_item_count",
    ),
    ("karma_retention_operations_total", "counter", "delete_before runs", "retention_count"),
    ("karma_compactions_total", "counter", "Compactions", "compact_count"),
    (
        "karma_reconciliation_runs_total",
        "counter",
        "Reconciliation reports",
        "reconciliation_run_count",
    ),
    (
        "karma_reconciliation_checked_points_total",
        "counter",
        "Points checked",
        "reconciliation_checked_points",
    ),
    (
        "karma_reconciliation_mismatches_total",
        "counter",
        "Mismatches found",
        "reconciliation_mismatch_count",
    ),
    (
        "karma_reconciliation_absolute_drift_total",
        "counter",
        "Absolute drift found",
        "reconciliation_absolute_drift",
    ),
    (
        "karma_reconciliation_last_run_unix",
        "gauge",
        "Last report time",
        "reconciliation_last_run_unix",
    ),
    (
        "karma_reconciliation_last_checked_points",
        "gauge",
        "Points in the last report",
        "reconciliation_last_checked_points",
    ),
    (
        "karma_reconciliation_last_mismatches",
        "gauge",
        "Mismatches in the last report",
        "reconciliation_last_mismatch_count",
    ),
    (
        "karma_reconciliation_last_absolute_drift",
        "gauge",
        "Drift in the last report",
        "reconciliation_last_absolute_drift",
    ),
    (
        "karma_reconciliation_last_max_abs_delta",
        "gauge",
        "Largest delta in the last report",
        "reconciliation_last_max_abs_delta",
    ),
    ("karma_recovery_checkpoints", "gauge", "Recovery checkpoints", "recovery_checkpoint_count"),
    (
        "karma_recovery_last_checkpoint_unix",
        "gauge",
        "Last checkpoint time",
        "recovery_last_checkpoint_unix",
    ),
    ("karma_ingest_active_streams", "gauge", "Open ingest streams", "ingest_active_streams"),
    (
        "karma_ingest_chunks_applied_total",
        "counter",
        "Ingest chunks applied",
        "ingest_chunks_applied",
    ),
    (
        "karma_ingest_chunks_skipped_total",
        "counter",
        "Duplicate ingest chunks skipped",
        "ingest_chunks_skipped",
    ),
    (
        "karma_ingest_chunks_rejected_total",
        "counter",
        "Ingest chunks rejected",
        "ingest_chunks_rejected",
    ),
    ("karma_ingest_items_applied_total", "counter", "Ingest items applied", "ingest_items_applied"),
    (
        "karma_ingest_chunk_latency_ms",
        "gauge",
        "Latency of the last ingest chunk",
        "ingest_latency_ms_last",
    ),
    (
        "karma_ingest_chunk_latency_ms_average",
        "gauge",
        "Average ingest chunk latency",
        "ingest_latency_ms_avg",
    ),
    ("karma_idempotency_records", "gauge", "Idempotency records", "idempotency_record_count"),
    ("karma_idempotency_hits_total", "counter", "Idempotent replays answered", "idempotency_hits"),
    (
        "karma_idempotency_conflicts_total",
        "counter",
        "Idempotency conflicts",
        "idempotency_conflicts",
    ),
    (
        "karma_idempotency_pruned_total",
        "counter",
        "Idempotency records pruned",
        "idempotency_pruned",
    ),
    ("karma_idempotency_writes_total", "counter", "Idempotent writes", "idempotency_write_count"),
    (
        "karma_idempotency_write_latency_ms",
        "gauge",
        "Latency of the last idempotent write",
        "idempotency_write_latency_ms_last",
    ),
    (
        "karma_idempotency_write_latency_ms_average",
        "gauge",
        "Average idempotent write latency",
        "idempotency_write_latency_ms_avg",
    ),
    (
        "karma_idempotency_committed_streams",
        "gauge",
        "Committed ingest streams remembered",
        "idempotency_committed_stream_count",
    ),
    (
        "karma_replication_replayed_lsn",
        "gauge",
        "Last master LSN applied",
        "replication_replayed_lsn",
    ),
    (
        "karma_replication_lag_entries",
        "gauge",
        "Entries behind the master",
        "replication_lag_entries",
    ),
    (
        "karma_replication_entries_applied_total",
        "counter",
        "Entries applied",
        "replication_entries_applied",
    ),
    (
        "karma_replication_last_received_unix",
        "gauge",
        "Last entry received",
        "replication_last_received_unix",
    ),
    ("karma_replication_poll_attempts_total", "counter", "Polls", "replication_poll_attempt_count"),
    (
        "karma_replication_poll_success_total",
        "counter",
        "Successful polls",
        "replication_poll_success_count",
    ),
    (
        "karma_replication_poll_errors_total",
        "counter",
        "Failed polls",
        "replication_poll_error_count",
    ),
    (
        "karma_replication_last_poll_attempt_unix",
        "gauge",
        "Last poll",
        "replication_last_poll_attempt_unix",
    ),
    (
        "karma_replication_last_poll_success_unix",
        "gauge",
        "Last successful poll",
        "replication_last_poll_success_unix",
    ),
    (
        "karma_replication_last_poll_error_unix",
        "gauge",
        "Last failed poll",
        "replication_last_poll_error_unix",
    ),
    (
        "karma_replication_bootstrap_attempts_total",
        "counter",
        "Bootstraps",
        "replication_bootstrap_attempt_count",
    ),
    (
        "karma_replication_bootstrap_success_total",
        "counter",
        "Successful bootstraps",
        "replication_bootstrap_success_count",
    ),
    (
        "karma_replication_bootstrap_errors_total",
        "counter",
        "Failed bootstraps",
        "replication_bootstrap_error_count",
    ),
    (
        "karma_replication_last_bootstrap_attempt_unix",
        "gauge",
        "Last bootstrap",
        "replication_last_bootstrap_attempt_unix",
    ),
    (
        "karma_replication_last_bootstrap_success_unix",
        "gauge",
        "Last successful bootstrap",
        "replication_last_bootstrap_success_unix",
    ),
    (
        "karma_replication_last_bootstrap_error_unix",
        "gauge",
        "Last failed bootstrap",
        "replication_last_bootstrap_error_unix",
    ),
)
