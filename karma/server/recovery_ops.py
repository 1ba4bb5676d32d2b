"""Recovery ops: an importer's checkpoints (recovery.json) and reconciliation reports."""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from karma.errors import KarmaError
from karma.protocol import requests as r
from karma.server.context import AsyncHandler, Context, SyncHandler
from karma.storage import snapshot_files


def reconciliation_report(ctx: Context, req: r.ReconciliationReport) -> object:
    c = ctx.engine.counters
    drift, delta = req.absolute_drift or 0, req.max_abs_delta or 0
    c.reconciliation_run_count += 1
    c.reconciliation_checked_points += req.checked_points
    c.reconciliation_mismatch_count += req.mismatch_count
    c.reconciliation_absolute_drift += drift
    c.reconciliation_last_run_unix = int(time.time())
    c.reconciliation_last_checked_points = req.checked_points
    c.reconciliation_last_mismatch_count = req.mismatch_count
    c.reconciliation_last_absolute_drift = drift
    c.reconciliation_last_max_abs_delta = delta
    return "OK"


def recovery_status(ctx: Context, req: r.RecoveryStatus) -> object:
    chosen = [
        c for name, c in sorted(ctx.checkpoints.items()) if req.source is None or name == req.source
    ]
    return {"checkpoint_count": len(chosen), "checkpoints": chosen}


async def recovery_checkpoint(ctx: Context, req: r.RecoveryCheckpoint) -> object:
    offset = req.source_offset if req.source_offset is not None else req.offset
    # karma 1.0 answers (and stores) a field that was not given as null, not absent
    checkpoint: dict[str, Any] = {
        "source": req.source,
        "offset": None if offset is None else str(offset),
        "event_id": None if req.event_id is None else str(req.event_id),
    }
    checkpoint["updated_at_unix"] = int(time.time())
    updated = dict(ctx.checkpoints)
    updated[req.source] = checkpoint
    document = {"checkpoints": [c for _, c in sorted(updated.items())]}
    try:
        await ctx.in_thread(
            snapshot_files.atomic_write,
            ctx.directory / snapshot_files.RECOVERY,
            msgspec.json.encode(document) + b"\n",
        )
    except OSError as exc:  # atomic: recovery.json still holds the previous checkpoints
        ctx.log.error("recovery.checkpoint_failed", source=req.source, error=str(exc))
        error = KarmaError.storage(
            "Recovery checkpoint failed", exc, "the previous checkpoints are kept"
        )
        ctx.status.storage_refused("files", error.message)
        raise error from exc
    ctx.status.storage_recovered("files")
    ctx.checkpoints.clear()
    ctx.checkpoints.update(updated)
    ctx.log.info("recovery.checkpoint", source=req.source, checkpoints=len(updated))
    return checkpoint


SYNC: Final[dict[type, SyncHandler]] = {
    r.ReconciliationReport: reconciliation_report,
    r.RecoveryStatus: recovery_status,
}
ASYNC: Final[dict[type, AsyncHandler]] = {r.RecoveryCheckpoint: recovery_checkpoint}
