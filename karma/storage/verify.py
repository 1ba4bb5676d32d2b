"""`snapshot.verify` (and later `karma-trio verify DIR`): is this directory restorable, exactly?

Checks, first failure wins (a validation_error with karma 1.0's wording where it has one):
sidecar metadata matches its snapshot; WAL records carry LSNs that continue without gaps;
`karma.wal.lsn` is not behind the WAL; and a scratch restore of snapshots + WAL yields counters
whose totals equal their buckets. Unlike karma 1.0, the normal "snapshot, then more writes" state
verifies fine (DEFECTS.md #8).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from karma import days
from karma.core.engine import Engine
from karma.errors import KarmaError
from karma.observability.logs import Logger
from karma.storage import recovery, snapshot_files, wal_files


def verify(directory: Path) -> dict[str, object]:
    snapshots = snapshot_files.list_snapshots(directory)
    checked = missing = 0
    for snapshot in snapshots:
        if not snapshot.meta_path.exists():
            missing += 1
            continue
        meta = snapshot.meta()
        checked += 1
        actual = {
            "file": snapshot.path.name,
            "tree": snapshot.series,
            "timestamp": snapshot.timestamp,
            "bytes": snapshot.path.stat().st_size,
        }
        for field, value in actual.items():
            if getattr(meta, field) != value:
                raise KarmaError.validation(
                    f"Snapshot metadata {field} mismatch for {snapshot.path.name}"
                )
    latest = snapshot_files.latest_by_series(directory)
    restore_lsn = max((s.meta().last_lsn for s in latest.values()), default=0)
    try:
        scan = wal_files.scan(directory)
    except wal_files.WalCorruptError as exc:
        raise KarmaError.validation(str(exc)) from exc
    lsns = [r.lsn for r in scan.records]
    for record, lsn in zip(scan.records, lsns, strict=True):
        if lsn is None:
            raise KarmaError.validation(
                f"WAL entry at {record.path}:{record.offset} is missing v2 LSN envelope"
            )
    numbered = [lsn for lsn in lsns if lsn is not None]
    for previous, lsn in itertools.pairwise(numbered):
        if lsn != previous + 1:
            raise KarmaError.validation(f"WAL LSN gap: expected {previous + 1}, got {lsn}")
    lsn_file = wal_files.read_lsn_file(directory)
    if numbered and lsn_file > numbered[-1]:
        raise KarmaError.validation(
            f"WAL LSN file {lsn_file} is ahead of snapshot/WAL LSN {numbered[-1]}"
        )
    engine = Engine()
    try:
        recovery.restore(
            directory,
            engine,
            today=days.MIN_DAY,
            now=0,
            replay=True,
            log=Logger(enabled=False),
            cut_torn=False,
        )
    except recovery.RestoreError as exc:
        raise KarmaError.validation(str(exc)) from exc
    for name, series in engine.store.series.items():
        for counter in series.values():
            if counter.total != sum(counter.values) or 0 in counter.values:
                raise KarmaError.validation(f'Tree "{name}" failed validation')
    return {
        "status": "ok",
        "dump_count": len(snapshots),
        "trees": len(engine.store.series),
        "keys": engine.store.key_count,
        "snapshot_metadata_checked": checked,
        "snapshot_missing_metadata": missing,
        "restore_snapshot_lsn": restore_lsn,
        "wal_entries_checked": len(scan.records),
        "wal_first_lsn": numbered[0] if numbered else 0,
        "wal_last_lsn": numbered[-1] if numbered else 0,
        "wal_lsn_file": lsn_file,
    }
