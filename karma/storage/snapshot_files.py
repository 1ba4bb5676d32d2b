"""Snapshot files on disk: naming, listing, atomic writes, retention. Blocking; run in threads.

Atomic means: write a dot-prefixed temp file in the same directory, fsync it, rename it over the
target, fsync the directory (karma 1.0 skipped the last step, so a rename could be lost).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Final

import attrs
import msgspec

from karma.storage import files, snapshot_codec
from karma.storage.snapshot_codec import Meta
from karma.storage.wal_files import fsync_directory

TREE_NAME: Final = re.compile(r"(\d+)_(.+)\.tree")
#: NAME_MAX of Linux file systems (ext4, xfs, btrfs, tmpfs), in bytes: no longer name can be in
#: the directory, and the OS answers ENAMETOOLONG to any question about one.
NAME_MAX_BYTES: Final = 255
IDEMPOTENCY: Final = "karma.idempotency.json"
RECOVERY: Final = "recovery.json"
#: holds, settled reservation ids and limit ops' idempotency records: karma-trio's own file,
#: beside karma 1.0's (which ignores it), so .tree files and karma.idempotency.json stay its own
LIMITS: Final = "karma.limits.json"


@attrs.frozen
class SnapshotFile:
    path: Path
    timestamp: int
    series: str

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".meta.json")

    def stored_meta(self) -> Meta | None:
        """The sidecar as written, or None when it is missing or unreadable."""
        try:
            return snapshot_codec.decode_meta(files.read_regular(self.meta_path))
        except (OSError, ValueError):
            return None

    def meta(self) -> Meta:
        """The sidecar, or what can be derived without one (karma 1.0: `last_lsn` 0)."""
        meta = self.stored_meta()
        if meta is not None:
            return meta
        size = self.path.stat().st_size
        return Meta(
            tree=self.series, file=self.path.name, timestamp=self.timestamp, last_lsn=0, bytes=size
        )


def parse_name(path: Path) -> SnapshotFile | None:
    match = TREE_NAME.fullmatch(path.name)
    # a symlink is no snapshot, even to one: not listed, restored, pruned or served (files.py)
    if match is None or not files.is_regular(path):
        return None
    return SnapshotFile(path, int(match.group(1)), match.group(2))


def list_snapshots(directory: Path) -> list[SnapshotFile]:
    """Every `<unix>_<series>.tree`, newest name first. Stray `*.tree` names are ignored."""
    found = [s for p in directory.glob("*.tree") if (s := parse_name(p)) is not None]
    return sorted(found, key=lambda s: (-s.timestamp, s.series))


@attrs.frozen
class Ranked:
    """A snapshot with its sidecar read once; `meta` None: not usable (see `latest_by_series`)."""

    file: SnapshotFile
    meta: Meta | None

    @property
    def order(self) -> tuple[int, int]:
        # the LSN decides which snapshot is newer; the name's second only breaks ties. Names
        # are wall-clock seconds, which a burst of snapshots runs ahead of and a clock step
        # moves back: ordering by them once restored an older snapshot than the newest
        return (-1 if self.meta is None else self.meta.last_lsn, self.file.timestamp)


def ranked_by_series(directory: Path) -> dict[str, list[Ranked]]:
    """Each series' snapshots, newest (highest LSN) first; unusable ones last."""
    ranked: dict[str, list[Ranked]] = {}
    for snapshot in list_snapshots(directory):
        ranked.setdefault(snapshot.series, []).append(Ranked(snapshot, snapshot.stored_meta()))
    for entries in ranked.values():
        entries.sort(key=lambda r: r.order, reverse=True)
    return ranked


def latest_by_series(directory: Path) -> dict[str, SnapshotFile]:
    """The newest *complete* snapshot of each series, by LSN.

    A `.tree` is written before its `.meta.json`, so one without a sidecar is a snapshot that a
    crash interrupted: the WAL was not truncated for it (truncation comes after every sidecar),
    so the older snapshot plus the WAL restore everything, and trusting it with an unknown LSN
    would count its writes twice.
    """
    latest: dict[str, SnapshotFile] = {}
    for series, entries in ranked_by_series(directory).items():
        if entries[0].meta is not None:
            latest[series] = entries[0].file
    return latest


def next_timestamp(directory: Path, series: str, wanted: int) -> int:
    """A name second for a new snapshot of `series`: `wanted`, or one past its newest name.

    Names only grow, so the newest snapshot also has the newest name (karma 1.0 restores the
    newest name), and a name freed by pruning is never reused for a newer snapshot.
    """
    newest = max((s.timestamp for s in list_snapshots(directory) if s.series == series), default=-1)
    return max(wanted, newest + 1)


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:
        with open(files.create_new(temp), "wb") as handle:  # never through a planted link
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    if sync_dir:
        fsync_directory(path.parent)


def write_snapshot(
    directory: Path, series: str, data: bytes, timestamp: int, last_lsn: int
) -> Meta:
    # never overwrite an existing snapshot (two in one second): if this one is cut short by a
    # crash, the older one must still be there, sidecar and all
    timestamp = next_timestamp(directory, series, timestamp)
    name = f"{timestamp}_{series}.tree"
    atomic_write(directory / name, data, sync_dir=False)
    meta = Meta(tree=series, file=name, timestamp=timestamp, last_lsn=last_lsn, bytes=len(data))
    atomic_write(directory / (name + ".meta.json"), snapshot_codec.encode_meta(meta))
    return meta


def write_idempotency(
    directory: Path, document: tuple[bytes, int, int], timestamp: int, last_lsn: int
) -> None:
    data, records, streams = document
    atomic_write(directory / IDEMPOTENCY, data, sync_dir=False)
    meta = {
        "file": IDEMPOTENCY,
        "timestamp": timestamp,
        "last_lsn": last_lsn,
        "bytes": len(data),
        "record_count": records,
        "committed_stream_count": streams,
    }
    atomic_write(directory / (IDEMPOTENCY + ".meta.json"), msgspec.json.encode(meta) + b"\n")


def write_limits(directory: Path, data: bytes, timestamp: int, last_lsn: int) -> None:
    atomic_write(directory / LIMITS, data, sync_dir=False)
    meta = {"file": LIMITS, "timestamp": timestamp, "last_lsn": last_lsn, "bytes": len(data)}
    atomic_write(directory / (LIMITS + ".meta.json"), msgspec.json.encode(meta) + b"\n")


def limits_meta(directory: Path) -> dict[str, object] | None:
    """The limits snapshot's metadata, or None when there is none (or it is unreadable)."""
    try:
        meta = msgspec.json.decode(files.read_regular(directory / (LIMITS + ".meta.json")))
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    return {field: meta.get(field, 0) for field in ("file", "timestamp", "bytes", "last_lsn")}


def idempotency_meta(directory: Path) -> dict[str, object] | None:
    """The idempotency snapshot's metadata in API order, or None when there is none."""
    path = directory / (IDEMPOTENCY + ".meta.json")
    try:
        meta = msgspec.json.decode(files.read_regular(path))
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    order = ("file", "timestamp", "bytes", "last_lsn", "record_count", "committed_stream_count")
    return {field: meta.get(field, 0) for field in order}


def remove(snapshot: SnapshotFile) -> None:
    for path in (snapshot.path, snapshot.meta_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def prune(directory: Path, keep: int, live: set[str]) -> int:
    """Keep the `keep` newest snapshots per series by LSN (0 keeps all); remove every snapshot
    of a series not in `live`, so a dropped series cannot come back (DEFECTS.md #4).

    The newest usable snapshot of a live series is never removed, whatever `keep` says: it may
    be the only copy of writes the WAL no longer holds.
    """
    removed = 0
    for series, entries in ranked_by_series(directory).items():
        if series in live:
            kept = entries[:keep] if keep else entries
            doomed = [r.file for r in entries if r not in kept]
        else:
            doomed = [r.file for r in entries]
        for snapshot in doomed:
            remove(snapshot)
            removed += 1
    if removed:
        fsync_directory(directory)
    return removed


def resolve(directory: Path, file: str) -> SnapshotFile | None:
    """The snapshot named `file` (a validated basename) inside `directory`, if it exists.

    None for every other name, never an error: a name the OS cannot hold names no snapshot,
    so it is not asked (it raises ENAMETOOLONG, which clients saw as internal_error).
    """
    path = directory / file
    if path.parent != directory or not _fits_a_directory(file):
        return None
    return parse_name(path)


def read(snapshot: SnapshotFile) -> bytes:
    """The snapshot's bytes; NotRegularFileError if its name holds no regular file (any more)."""
    return files.read_regular(snapshot.path)


def _fits_a_directory(name: str) -> bool:
    try:
        return len(os.fsencode(name)) <= NAME_MAX_BYTES
    except UnicodeEncodeError:  # a lone surrogate: no file system name either
        return False
