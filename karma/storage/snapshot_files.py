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


@attrs.frozen
class SnapshotFile:
    path: Path
    timestamp: int
    series: str

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".meta.json")

    def has_meta(self) -> bool:
        try:
            snapshot_codec.decode_meta(files.read_regular(self.meta_path))
        except (OSError, ValueError):
            return False
        return True

    def meta(self) -> Meta:
        """The sidecar, or what can be derived without one (karma 1.0: `last_lsn` 0)."""
        try:
            return snapshot_codec.decode_meta(files.read_regular(self.meta_path))
        except (OSError, ValueError):
            size = self.path.stat().st_size
            return Meta(
                tree=self.series,
                file=self.path.name,
                timestamp=self.timestamp,
                last_lsn=0,
                bytes=size,
            )


def parse_name(path: Path) -> SnapshotFile | None:
    match = TREE_NAME.fullmatch(path.name)
    # a symlink is no snapshot, even to one: not listed, restored, pruned or served (files.py)
    if match is None or not files.is_regular(path):
        return None
    return SnapshotFile(path, int(match.group(1)), match.group(2))


def list_snapshots(directory: Path) -> list[SnapshotFile]:
    """Every `<unix>_<series>.tree`, newest first. Stray `*.tree` names are ignored."""
    found = [s for p in directory.glob("*.tree") if (s := parse_name(p)) is not None]
    return sorted(found, key=lambda s: (-s.timestamp, s.series))


def latest_by_series(directory: Path) -> dict[str, SnapshotFile]:
    """The newest *complete* snapshot of each series.

    A `.tree` is written before its `.meta.json`, so one without a sidecar is a snapshot that a
    crash interrupted: the WAL was not truncated for it (truncation comes after every sidecar),
    so the older snapshot plus the WAL restore everything, and trusting it with an unknown LSN
    would count its writes twice.
    """
    latest: dict[str, SnapshotFile] = {}
    for snapshot in list_snapshots(directory):
        if snapshot.series not in latest and snapshot.has_meta():
            latest[snapshot.series] = snapshot
    return latest


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
    while (directory / f"{timestamp}_{series}.tree").exists():
        timestamp += 1
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
    """Keep the `keep` newest snapshots per series (0 keeps all); remove every snapshot of a
    series that no longer exists, so a dropped series cannot come back (DEFECTS.md #4)."""
    removed = 0
    seen: dict[str, int] = {}
    for snapshot in list_snapshots(directory):
        seen[snapshot.series] = seen.get(snapshot.series, 0) + 1
        if snapshot.series not in live or (keep and seen[snapshot.series] > keep):
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
