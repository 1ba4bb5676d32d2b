"""`karma.manifest.json`: which series exist, and which snapshot file holds each one's newest state.

Snapshot files alone cannot prove that nothing is missing: when every `.tree` of one series is
removed after the WAL was truncated past its writes, nothing left on disk names the series, and a
restore would simply not know it. The manifest is written after the snapshot files it names and
before the WAL is truncated (`snapshot.create_all`; `snapshot.create` updates its one series), so
whenever the WAL no longer holds a series' early writes, the manifest names the file that does.
The restore refuses to start when such a file is missing (`recovery.find_gaps`).

karma-trio's own file: karma 1.0 ignores it, and a directory without one restores as before.
Blocking; run in threads.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Final

import msgspec

from karma.storage import files
from karma.storage.snapshot_files import atomic_write

NAME: Final = "karma.manifest.json"
FORMAT: Final = 1


class ManifestError(ValueError):
    """The manifest is there but cannot be read: it proves nothing."""


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot file, the LSN its state reaches, and the cut of the first manifest that
    named its series: a series first named after the WAL's start is still whole in the WAL."""

    file: str
    last_lsn: int
    first_lsn: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    #: the snapshot's cut: WAL entries up to it may be truncated once this file is durable
    lsn: int
    written_at_unix: int
    series: dict[str, Entry]
    #: `karma.limits.json` (holds, settled reservations, limit records), None when not written
    limits: Entry | None = None


def entry(previous: Manifest | None, series: str, file: str, last_lsn: int) -> Entry:
    """`series`' entry for a snapshot at `last_lsn`, keeping when it was first named."""
    before = None if previous is None else previous.series.get(series)
    first = last_lsn if before is None else before.first_lsn
    return Entry(file=file, last_lsn=last_lsn, first_lsn=first)


def encode(manifest: Manifest) -> bytes:
    return msgspec.json.encode(manifest) + b"\n"


def decode(data: bytes) -> Manifest:
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise ManifestError(str(exc)) from exc
    if manifest.format != FORMAT:
        raise ManifestError(f"format {manifest.format} is not {FORMAT}")
    return manifest


def read(directory: Path) -> Manifest | None:
    """The manifest, None when there is none (karma 1.0, or no snapshot taken since the
    upgrade); ManifestError when it is there but unreadable."""
    try:
        data = files.read_regular(directory / NAME)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(str(exc)) from exc
    return decode(data)


def write(directory: Path, manifest: Manifest) -> None:
    """Atomically: temp file, fsync, rename, directory fsync."""
    atomic_write(directory / NAME, encode(manifest))


def remove(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / NAME).unlink()
