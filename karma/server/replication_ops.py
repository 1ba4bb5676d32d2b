"""Replication ops: a replica's polls for WAL entries (long polls, term checks) and the
status a replica or an operator reads."""

from __future__ import annotations

import time
from typing import Final

import attrs
import msgspec

from karma.core import report
from karma.errors import ErrorCode, KarmaError
from karma.ha import rules
from karma.protocol import requests as r
from karma.server import recovery_ops
from karma.server.context import AsyncHandler, Context, SyncHandler
from karma.storage import snapshot_files, wal_files


@attrs.frozen
class LongPoll:
    """A poll's answer and how long it waited for entries as the replica asked (`wait_ms`):
    that wait is not counted against --slow-request-ms."""

    answer: object
    waited_s: float


def replication_status(ctx: Context, req: r.ReplicationStatus) -> object:
    fields = dict(ctx.status.replication.fields(report.replayed_lsn(ctx.status)))
    answer: dict[str, object] = {
        "role": ctx.status.role,
        "wal_enabled": ctx.status.wal_enabled,
        "wal_current_lsn": ctx.status.wal_current_lsn,
        "wal_bytes": ctx.status.wal_bytes,
        "replayed_lsn": fields.pop("replication_replayed_lsn"),
    }
    answer.update(fields)
    latest = [s.meta().presented() for s in snapshot_files.latest_by_series(ctx.directory).values()]
    answer.update(
        {
            "last_snapshot_lsn": ctx.status.last_snapshot_lsn,
            "latest_snapshots": latest,
            "recovery": recovery_ops.recovery_status(ctx, r.RecoveryStatus(v=2)),
            "recovery_checkpoint_count": len(ctx.checkpoints),
        }
    )
    return answer


# --- operations that wait for files ----------------------------------------------------------


def _active_index(ctx: Context) -> list[tuple[int, int]] | None:
    """A copy of the writer's (lsn, offset) index of karma.wal, taken on the event loop."""
    return None if ctx.writer is None else list(ctx.writer.wal.offsets)


async def replication_entries(ctx: Context, req: r.ReplicationEntries) -> object:
    limit = r.opt(req.limit) or r.REPLICATION_DEFAULT_LIMIT
    byte_limit = _entries_byte_limit(ctx.config.max_response_bytes)
    after_term = r.opt(req.after_term)
    if after_term is not None:
        _check_poll_term(ctx, req.after_lsn, after_term)
    replica = r.opt(req.node)
    if replica is not None:
        ctx.replicas.report(replica, req.after_lsn)
    wait_ms = r.opt(req.wait_ms)
    waited_s = 0.0
    if wait_ms and ctx.status.wal_current_lsn <= req.after_lsn:
        began = time.perf_counter()
        await ctx.replicas.wait_for_entries(min(wait_ms, r.REPLICATION_MAX_WAIT_MS) / 1000)
        waited_s = time.perf_counter() - began
    current = ctx.status.wal_current_lsn
    entries: list[tuple[int, bytes]] = []
    truncated = False
    if ctx.config.wal:
        entries, truncated, first = await ctx.in_thread(
            wal_files.read_after,
            ctx.directory,
            req.after_lsn,
            limit,
            byte_limit,
            current,
            _active_index(ctx),
        )
        available_from = first if first is not None else current + 1
        if req.after_lsn + 1 < available_from and req.after_lsn < current:
            raise KarmaError(
                ErrorCode.REPLICATION_GAP,
                f"Requested WAL after_lsn {req.after_lsn} is older than snapshot LSN "
                f"{available_from - 1}; bootstrap from snapshot",
            )
    answer = {
        "after_lsn": req.after_lsn,
        "limit": limit,
        "byte_limit": byte_limit,
        "entries_bytes": sum(
            len(b'{"lsn":,"entry":}') + len(str(lsn)) + len(entry) for lsn, entry in entries
        ),
        "truncated_by_bytes": truncated,
        "count": len(entries),
        "source_lsn": current,
        "entries": [{"lsn": lsn, "entry": msgspec.Raw(entry)} for lsn, entry in entries],
        "next_lsn": entries[-1][0] if entries else req.after_lsn,
        **({} if wait_ms is None else {"wait_ms": wait_ms}),
        **({} if after_term is None else {"term": ctx.ha.current_term()}),
    }
    return LongPoll(answer, waited_s)


def _check_poll_term(ctx: Context, after_lsn: int, after_term: int) -> None:
    """Fencing on polls (Raft's rules): a poll from a newer term is refused (no sync ack
    is gathered from it); a tail we never wrote is refused, so the replica moves it aside
    instead of building on it."""
    fence = ctx.fence
    if fence is None:
        return
    if fence.term and after_term > fence.term:
        ctx.ha.newer_term_seen(after_term)
        raise fence.refusal()
    cut = rules.diverged_after(after_term, after_lsn, ctx.ha.history())
    if cut is not None:
        raise KarmaError(
            ErrorCode.REPLICATION_DIVERGED,
            f"Entries after LSN {cut} (term {after_term}) are not in this master's history;"
            " move the WAL aside and bootstrap",
        )


def _entries_byte_limit(max_response_bytes: int) -> int:
    """karma 1.0 leaves 2 KiB of the response limit for the envelope around the entries."""
    return (max_response_bytes or 1048576) - 2048


SYNC: Final[dict[type, SyncHandler]] = {r.ReplicationStatus: replication_status}
ASYNC: Final[dict[type, AsyncHandler]] = {r.ReplicationEntries: replication_entries}
