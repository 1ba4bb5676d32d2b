"""Is this data directory restorable, exactly? One reader for `snapshot.verify` (first problem
wins, as a validation_error) and `karma-trio check DIR` (every problem, named).

Checks: each sidecar is readable and matches its snapshot; WAL records parse, carry LSNs and
follow one another; snapshots and WAL join up (`recovery.find_gaps`, what startup refuses on);
`karma.wal.lsn` is not ahead of the WAL; and a scratch restore of snapshots + WAL (the server's
own `recovery.restore`, told not to repair anything) yields counters whose totals equal their
buckets. Unlike karma 1.0, the normal "snapshot, then more writes" state verifies fine
(DEFECTS.md #8). Nothing in the directory is written: a torn WAL tail is reported, not cut.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import attrs

from karma import days
from karma.core.engine import Engine
from karma.errors import KarmaError
from karma.observability.logs import Logger
from karma.storage import files, recovery, snapshot_codec, snapshot_files, wal_files


@attrs.frozen
class Problem:
    """Something wrong in the directory, named with its file and byte offset or LSN range.

    Not `fatal` (a warning): the server deals with it at its next start without losing an
    acknowledged write (a torn last WAL record, a logged write that changed nothing).
    """

    message: str
    fatal: bool = True


@attrs.define
class Findings:
    problems: list[Problem] = attrs.field(factory=list)
    summary: dict[str, object] = attrs.field(factory=dict)

    def add(self, message: str, *, fatal: bool = True) -> None:
        problem = Problem(message, fatal)
        if problem not in self.problems:  # the restore may name a file a check already named
            self.problems.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.fatal]


def verify(directory: Path) -> dict[str, object]:
    """`snapshot.verify`: the summary, or the first problem as a validation_error."""
    findings = examine(directory)
    if findings.errors:
        raise KarmaError.validation(findings.errors[0].message)
    return findings.summary


def examine(directory: Path, *, read_every_snapshot: bool = False) -> Findings:
    """Every check, every problem. `read_every_snapshot` also decodes the older snapshots the
    restore would not read (the offline check does; the server's `snapshot.verify` need not)."""
    findings = Findings()
    snapshots = snapshot_files.list_snapshots(directory)
    checked = sum(_check_sidecar(s, findings) for s in snapshots)
    if read_every_snapshot:
        for snapshot in snapshots:
            _check_readable(snapshot, findings)
    latest = snapshot_files.latest_by_series(directory)
    lsn_file = _lsn_file(directory, findings)
    engine = Engine()
    scan = _scan(directory, findings)
    numbered: list[int] = []
    if scan is not None:
        numbered = _check_lsns(scan, lsn_file, findings)
        for gap in recovery.find_gaps(directory, scan.records):
            findings.add(gap.describe())
        if lsn_file is not None:
            _scratch_restore(directory, engine, findings)
    findings.summary = {
        "status": "ok" if not findings.errors else "failed",
        "dump_count": len(snapshots),
        "trees": len(engine.store.series),
        "keys": engine.store.key_count,
        "snapshot_metadata_checked": checked,
        "snapshot_missing_metadata": sum(not s.meta_path.exists() for s in snapshots),
        "restore_snapshot_lsn": max((s.meta().last_lsn for s in latest.values()), default=0),
        "wal_entries_checked": 0 if scan is None else len(scan.records),
        "wal_first_lsn": numbered[0] if numbered else 0,
        "wal_last_lsn": numbered[-1] if numbered else 0,
        "wal_lsn_file": lsn_file or 0,
    }
    return findings


def _check_sidecar(snapshot: snapshot_files.SnapshotFile, findings: Findings) -> bool:
    """True when a sidecar was there to check. A `.tree` without one is a snapshot a crash
    interrupted (the sidecar is written second): restore ignores it, so it is no problem."""
    if not snapshot.meta_path.exists():
        return False
    try:
        meta = snapshot_codec.decode_meta(files.read_regular(snapshot.meta_path))
    except (OSError, ValueError) as exc:
        findings.add(f"Invalid snapshot metadata {snapshot.meta_path}: {exc}")  # karma 1.0's words
        return True
    actual = {
        "file": snapshot.path.name,
        "tree": snapshot.series,
        "timestamp": snapshot.timestamp,
        "bytes": snapshot.path.stat().st_size,
    }
    for field, value in actual.items():
        if getattr(meta, field) != value:
            findings.add(
                f"Snapshot metadata {field} mismatch for {snapshot.path.name}"
                f" ({snapshot.meta_path.name} says {getattr(meta, field)!r}, the file {value!r})"
            )
    return True


def _check_readable(snapshot: snapshot_files.SnapshotFile, findings: Findings) -> None:
    try:
        snapshot_codec.decode_series(snapshot_files.read(snapshot))
    except (snapshot_codec.SnapshotError, OSError) as exc:
        findings.add(f"{snapshot.path}: {exc}")  # the restore's wording: named once if both do


def _lsn_file(directory: Path, findings: Findings) -> int | None:
    try:
        return wal_files.read_lsn_file(directory)
    except (wal_files.WalCorruptError, OSError, UnicodeDecodeError) as exc:
        findings.add(f"{directory / wal_files.LSN_FILE}: {exc}")
        return None


def _scan(directory: Path, findings: Findings) -> wal_files.Scan | None:
    try:
        scan = wal_files.scan(directory)
    except (wal_files.WalCorruptError, OSError) as exc:
        findings.add(str(exc))  # names the file and byte offset
        return None
    for path, good_end, size in scan.torn:
        findings.add(
            f"{path}: torn last record at byte {good_end} ({size - good_end} bytes): a write cut"
            " short by a crash; the server cuts it off at its next start and keeps the bytes"
            " beside the WAL",
            fatal=False,
        )
    return scan


def _check_lsns(scan: wal_files.Scan, lsn_file: int | None, findings: Findings) -> list[int]:
    """The LSNs in order. Forward jumps are `find_gaps`' (it names the LSNs no file holds)."""
    for record in scan.records:
        if record.lsn is None:
            findings.add(f"WAL entry at {record.path}:{record.offset} is missing v2 LSN envelope")
    numbered = [(r.lsn, r) for r in scan.records if r.lsn is not None]
    for (previous, _), (lsn, record) in itertools.pairwise(numbered):
        if lsn <= previous:
            findings.add(
                f"{record.path}: byte {record.offset}: WAL LSN {lsn} after LSN {previous}:"
                " records out of order or repeated"
            )
    lsns = [lsn for lsn, _ in numbered]
    if lsns and lsn_file is not None and lsn_file > lsns[-1]:
        findings.add(f"WAL LSN file {lsn_file} is ahead of snapshot/WAL LSN {lsns[-1]}")
    return lsns


class _Collected(Logger):
    """The restore's log, kept: a WAL record it skips is a warning of the check."""

    def __init__(self, findings: Findings) -> None:
        super().__init__(enabled=True, level="warning")
        self.findings = findings

    def log(self, level: str, event: str, **fields: object) -> None:
        if event == "wal.replay_skipped":
            self.findings.add(
                f"{fields['path']}: byte {fields['offset']}: WAL record (LSN {fields['lsn']})"
                f" changes nothing and is skipped at restore: {fields['reason']}",
                fatal=False,
            )


def _scratch_restore(directory: Path, engine: Engine, findings: Findings) -> None:
    try:
        recovery.restore(
            directory,
            engine,
            today=days.MIN_DAY,
            now=0,
            replay=True,
            log=_Collected(findings),
            cut_torn=False,
            accept_loss=True,  # every gap is already named; restore the rest to check it too
        )
    except (recovery.RestoreError, wal_files.WalCorruptError, OSError) as exc:
        findings.add(str(exc))
        return
    for name, series in engine.store.series.items():
        for counter in series.values():
            if counter.total != sum(counter.values) or 0 in counter.values:
                findings.add(f'Tree "{name}" failed validation')
