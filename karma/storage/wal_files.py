"""The WAL on disk: `karma.wal`, rotated `karma.wal.<lsn20>.segment` files with `.idx` sidecars,
and `karma.wal.lsn`. Blocking helpers; the server calls the slow ones from threads.

Only the WAL writer task appends; readers (replication) scan files up to the durable end.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Final

import attrs

from karma.storage import failpoints, files, wal_codec

ACTIVE: Final = "karma.wal"
LSN_FILE: Final = "karma.wal.lsn"
SEGMENT: Final = re.compile(r"karma\.wal\.(\d{20})\.segment")
INDEX_HEADER: Final = "KARMA_WAL_INDEX_V1"
#: O_NOFOLLOW: WAL records appended to the target of a link planted at karma.wal would leave
#: the directory; startup stops instead (ELOOP), naming the file.
# karma.wal and its segments may be symlinks (the WAL on another disk is the operator's choice);
# every file karma-trio creates itself is created without following links (files.py)
_OPEN_ACTIVE: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class WalCorruptError(Exception):
    """A damaged record followed by more records: refusing to guess."""


class WalLostError(OSError):
    """`karma.wal` was removed or replaced under the open file: what is written to it now is
    in no file the data directory leads to, so it must not be acknowledged."""


def segment_name(first_lsn: int) -> str:
    return f"karma.wal.{first_lsn:020d}.segment"


def wal_paths(directory: Path) -> list[Path]:
    """Segments by first LSN, then the active file: the order records were written in."""
    segments = sorted(
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := SEGMENT.fullmatch(path.name)) and path.is_file()
    )
    paths = [path for _, path in segments]
    active = directory / ACTIVE
    if active.is_file():  # followed: a symlinked karma.wal is supported
        paths.append(active)
    return paths


def read_lsn_file(directory: Path) -> int:
    path = directory / LSN_FILE
    if not path.exists():
        return 0
    text = path.read_text().strip()
    if not text:
        return 0  # cut short by a crash (karma 1.0 rewrote it in place); snapshots carry the LSN
    if not text.isdigit():
        raise WalCorruptError(f"{path}: not an LSN: {text[:40]!r}")
    return int(text)


@attrs.frozen
class Record:
    path: Path
    offset: int
    lsn: int | None
    entry: bytes


@attrs.frozen
class Scan:
    records: list[Record]
    torn: list[tuple[Path, int, int]]  # (file, good end, original size) of torn tails


def scan(directory: Path) -> Scan:
    """Every record of every WAL file in order.

    A bad or partial *last line of the last file* is a torn tail from a crash mid-write: it is
    reported, not raised. Anything else that does not parse is corruption: WalCorruptError names the
    file and byte offset, and startup stops rather than restore part of the data.
    """
    paths = wal_paths(directory)
    records: list[Record] = []
    torn: list[tuple[Path, int, int]] = []
    for index, path in enumerate(paths):
        data = path.read_bytes()
        lines, good_end, damage = wal_codec.parse(data)
        records.extend(Record(path, line.offset, line.lsn, line.entry) for line in lines)
        if good_end == len(data):
            continue
        single_line_left = b"\n" not in data[good_end:].rstrip(b"\n")
        if index == len(paths) - 1 and single_line_left:
            torn.append((path, good_end, len(data)))
            continue
        reason = damage.reason if damage is not None else "incomplete record"
        raise WalCorruptError(f"{path}: damaged record at byte {good_end}: {reason}")
    return Scan(records, torn)


def cut_torn_tail(path: Path, good_end: int) -> Path:
    """Truncate a torn tail, first saving the removed bytes beside the WAL.

    Nothing is destroyed silently (ZODB's habit with its `.trN` files).
    """
    data = path.read_bytes()
    saved = path.with_name(f"{path.name}.torn-{good_end}")
    # a name chosen from the offset: one left by an earlier crash at the same offset is
    # replaced as before, a link planted there is removed rather than written through
    files.write_new(saved, data[good_end:], fsync=True, replace=True)
    with open(path, "r+b") as handle:
        handle.truncate(good_end)
        handle.flush()
        os.fsync(handle.fileno())
    return saved


@attrs.define(eq=False)
class ActiveWal:
    """The open `karma.wal` plus what rotation and stats need, kept in memory."""

    directory: Path
    fsync: bool
    segment_bytes: int
    _handle: int = -1
    #: (st_dev, st_ino) of the open file, to notice the path no longer leading to it
    _identity: tuple[int, int] = (0, 0)
    #: set once the open file was found unreachable; cleared when a new karma.wal is in place
    #: (`truncate_through` after a full snapshot holds everything)
    lost: bool = False
    _active_path: str = ""
    size: int = 0
    other_bytes: int = 0  # bytes in segments
    offsets: list[tuple[int, int]] = attrs.field(factory=list)  # (lsn, offset) in karma.wal

    def open(self, records: list[Record]) -> None:
        path = self.directory / ACTIVE
        self._adopt(os.open(path, _OPEN_ACTIVE, 0o644))
        self.size = os.fstat(self._handle).st_size
        self.offsets = [(r.lsn, r.offset) for r in records if r.path == path and r.lsn is not None]
        self.other_bytes = sum(p.stat().st_size for p in wal_paths(self.directory) if p != path)

    def _adopt(self, handle: int) -> None:
        """`handle` is now the open karma.wal: remember which file that is."""
        self._handle = handle
        self._active_path = os.fspath(self.directory / ACTIVE)
        stat = os.fstat(handle)
        self._identity = (stat.st_dev, stat.st_ino)
        self.lost = False

    def reachable(self) -> bool:
        """Does `karma.wal` (followed, if it is a symlink) still lead to the file we write?"""
        try:
            stat = os.stat(self._active_path)  # a str: a Path costs a conversion per call
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    @property
    def total_bytes(self) -> int:
        return self.size + self.other_bytes

    def append(self, data: bytes, line_starts: list[tuple[int, int]]) -> str | None:
        """Write a batch in one call; fsync when configured. On failure the file is cut back.

        Returns the name of the segment the active file was rotated into first, if it was.
        """
        if self.lost:
            raise WalLostError(errno.ENOENT, "karma.wal was removed; waiting for a full snapshot")
        rotated = None
        if self.segment_bytes and self.size >= self.segment_bytes and self.offsets:
            rotated = self._rotate()
        before = self.size
        try:
            written = os.write(self._handle, data)
            while written < len(data):
                written += os.write(self._handle, data[written:])
            failpoints.hit("wal.write")  # tests: a slow or failing disk (KARMA_FAILPOINTS)
            if self.fsync:
                os.fdatasync(self._handle)  # data and size; mtime need not be durable
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._handle, before)
            raise
        # one stat per batch: a cleanup script that unlinked karma.wal leaves us writing to a
        # file no restart will read, so this batch must fail instead of being acknowledged
        if not self.reachable():
            self.lost = True
            raise WalLostError(errno.ENOENT, "karma.wal was removed or replaced")
        self.offsets.extend((lsn, before + start) for lsn, start in line_starts)
        self.size = before + len(data)
        return rotated

    def _rotate(self) -> str:
        first_lsn = self.offsets[0][0]
        target = self.directory / segment_name(first_lsn)
        if target.exists():
            raise OSError(f"WAL segment already exists: {target}")
        # The handle is closed only once the new karma.wal is open: a refused rename or create
        # (disk full, immutable directory) leaves the WAL as it was, and never a closed
        # descriptor whose number the next accepted socket gets (the next append went there).
        active = self.directory / ACTIVE
        os.rename(active, target)  # the open handle follows the file
        try:
            handle = os.open(active, _OPEN_ACTIVE, 0o644)
        except OSError:
            os.rename(target, active)
            raise
        os.close(self._handle)
        self._adopt(handle)
        size, offsets = self.size, self.offsets
        self.other_bytes += size
        self.size = 0
        self.offsets = []
        _write_index(target, size, offsets)  # if refused, the batch is; the rotation stands
        fsync_directory(self.directory)
        return target.name

    def truncate_through(self, lsn: int, current_lsn: int) -> None:
        """Drop every record with an LSN <= `lsn` (they are in a durable snapshot).

        Records written after the snapshot's cut stay: the active file is rewritten from the
        first later record. `karma.wal.lsn` keeps LSNs monotonic across the truncation.
        """
        segments = [p for p in wal_paths(self.directory) if p.name != ACTIVE]
        for segment in segments:
            last = max((r.lsn for r in _records(segment) if r.lsn is not None), default=0)
            if last <= lsn:
                for path in (segment.with_name(segment.name + ".idx"), segment):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        keep_from = next((offset for entry_lsn, offset in self.offsets if entry_lsn > lsn), None)
        active = self.directory / ACTIVE
        tail = b""
        if keep_from is not None:
            if self.lost:  # cannot happen: nothing is written once the file is lost
                raise WalLostError(errno.ENOENT, "karma.wal lost with records after the cut")
            with open(active, "rb") as handle:
                handle.seek(keep_from)
                tail = handle.read()
        # The new file's descriptor becomes the WAL's handle: nothing is closed or reopened
        # until the rewrite is in place, so a refused write (disk full, immutable directory)
        # leaves the old file and a valid handle, and no reopen can fail after the replace.
        # a symlinked karma.wal (the WAL on another disk) keeps its link: the file it leads to
        # is replaced, next to itself
        target = Path(os.path.realpath(active))
        temp = target.with_name(f".{ACTIVE}.{os.getpid()}.tmp")
        # a predictable name (see files.py); O_APPEND as every karma.wal handle: append's
        # cut-back after a failed write moves the end, and the next write must follow it
        fd = files.create_new(temp, replace=True, append=True)
        try:
            _write_all(fd, tail)
            if self.fsync:
                os.fsync(fd)
            os.replace(temp, target)
            if target.parent != self.directory:
                fsync_directory(target.parent)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        os.close(self._handle)
        self._adopt(fd)
        shift = keep_from or 0
        self.offsets = [(e, o - shift) for e, o in self.offsets if e > lsn]
        self.size = len(tail)
        lsn_file = self.directory / LSN_FILE
        temp = self.directory / f".{LSN_FILE}.{os.getpid()}.tmp"
        # replaced whole: a crash never leaves it half written
        files.write_new(temp, f"{current_lsn}\n".encode(), fsync=self.fsync, replace=True)
        os.replace(temp, lsn_file)
        fsync_directory(self.directory)
        self.other_bytes = sum(p.stat().st_size for p in wal_paths(self.directory) if p != active)

    def reset_to(self, lsn: int) -> None:
        """Drop every record and set the next LSN to lsn + 1 (a replica's new bootstrap)."""
        self.truncate_through(2**63, lsn)

    def close(self) -> None:
        if self._handle >= 0:
            os.close(self._handle)
            self._handle = -1


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def _records(path: Path) -> list[wal_codec.Line]:
    lines, _, _ = wal_codec.parse(path.read_bytes())
    return lines


def _write_index(segment: Path, size: int, offsets: list[tuple[int, int]]) -> None:
    index = segment.with_name(segment.name + ".idx")
    temp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    rows = [f"{INDEX_HEADER} size={size}"] + [f"{lsn} {offset}" for lsn, offset in offsets]
    files.write_new(temp, ("\n".join(rows) + "\n").encode(), fsync=False, replace=True)
    os.replace(temp, index)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_after(
    directory: Path,
    after_lsn: int,
    limit: int,
    byte_limit: int,
    durable_lsn: int,
    active_index: list[tuple[int, int]] | None = None,
) -> tuple[list[tuple[int, bytes]], bool, int | None]:
    """Entries with after_lsn < lsn <= durable_lsn, at most `limit` and about `byte_limit` bytes.

    Segments wholly at or before `after_lsn` are skipped by name, and in the active file the
    writer's (lsn, offset) index lets the read start at the first wanted record, so a replica
    that keeps up reads only what is new. Returns (entries, truncated_by_bytes, first lsn
    available or None).
    """
    out: list[tuple[int, bytes]] = []
    used = 0
    paths = wal_paths(directory)
    firsts = [_first_lsn(path) for path in paths]
    first = next((f for f in firsts if f is not None), None)
    for index, path in enumerate(paths):
        following = next((f for f in firsts[index + 1 :] if f is not None), None)
        if following is not None and following <= after_lsn + 1:
            continue  # every record here is <= after_lsn
        start = 0
        if path.name == ACTIVE and active_index:
            position = bisect.bisect_right(active_index, (after_lsn, 2**63))
            if position < len(active_index):
                start = active_index[position][1]
            elif active_index[-1][0] <= after_lsn:
                continue
        with open(path, "rb") as handle:
            handle.seek(start)
            lines, _, _ = wal_codec.parse(handle.read())
        for line in lines:
            if line.lsn is None or line.lsn <= after_lsn or line.lsn > durable_lsn:
                continue
            size = len(line.entry) + len(b'{"lsn":,"entry":}') + len(str(line.lsn))
            if out and used + size > byte_limit:
                return out, True, first
            out.append((line.lsn, line.entry))
            used += size
            if len(out) >= limit:
                return out, False, first
    return out, False, first


def _first_lsn(path: Path) -> int | None:
    match = SEGMENT.fullmatch(path.name)
    if match is not None:
        return int(match.group(1))
    with open(path, "rb") as handle:
        head = handle.readline()
    lines, _, _ = wal_codec.parse(head)
    return lines[0].lsn if lines else None
