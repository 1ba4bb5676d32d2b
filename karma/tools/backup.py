"""`karma-trio backup [--url URL] [DIR] DEST`: a consistent copy of a running server's data.

1. Ask the server for `snapshot.create_all`: every series and the idempotency records are cut at
   one LSN and written, and the WAL is truncated through that LSN.
2. Make sure DIR is that server's data directory: its idempotency snapshot must be the one the
   server just reported (`snapshot.info`). Without DIR, the directory is where the server says
   its snapshots are (`snapshot.list`), which needs at least one series.
3. Copy `karma.manifest.json` (first, so every file it names is copied as new or newer), the
   newest snapshot of each series with its `.meta.json`, `karma.idempotency.json`,
   `karma.limits.json` and their sidecars, `recovery.json`, `karma.wal.lsn`, then the WAL
   written since (segments with their `.idx`, then `karma.wal`, without a record still being
   appended).
4. Run `karma-trio check` on DEST: a backup that would not restore exactly is reported (exit 1),
   e.g. when another snapshot truncated the WAL during the copy; run it again then.

Snapshot files are never rewritten once written, so copying them while the server runs is
safe; the WAL only grows until the next snapshot, and the check catches the rest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from karma.storage import manifest, snapshot_files, wal_files
from karma.tools import check
from karma.tools.session import Address, Exit, Session, UnreachableError

READ_BACK = 1 << 16  # bytes read at a time from the end of karma.wal to find its last newline


class BackupRefusedError(Exception):
    """The backup cannot be made as asked; the message says why. Nothing was copied."""


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="karma-trio backup",
        description="Snapshot a running server (snapshot.create_all) and copy its snapshot,"
        " idempotency, recovery and WAL files to DEST, then check DEST. Run it where the data"
        " directory is readable.",
        epilog="exit codes: 0 backup made and checked; 1 the server refused the snapshot or DEST"
        " failed its check; 2 usage error (DEST not empty, DIR not the server's); 3 the server"
        " cannot be reached",
    )
    parser.add_argument(
        "--url", help="karma://[token@]host:port (default: $KARMA_URL, else karma://127.0.0.1:8080)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("paths", nargs="+", metavar="[DIR] DEST", type=Path)
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error("expected [DIR] DEST")
    directory, dest = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    try:
        address = Address.from_url(args.url)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise BackupRefusedError(f"{dest}: exists and is not an empty directory")
        with Session(address, args.timeout) as session:
            source = snapshot(session, directory)
    except (ValueError, BackupRefusedError) as exc:
        print(f"karma-trio backup: {exc}", file=sys.stderr)
        return Exit.USAGE
    except UnreachableError as exc:
        print(f"karma-trio backup: cannot reach {exc}", file=sys.stderr)
        return Exit.UNREACHABLE
    except ServerRefusedError as exc:
        print(f"karma-trio backup: {exc}", file=sys.stderr)
        return Exit.REFUSED
    try:
        copied = copy(source, dest)
    except OSError as exc:  # e.g. a snapshot pruned by a later one while being copied
        print(f"karma-trio backup: copying failed: {exc}; run the backup again", file=sys.stderr)
        return Exit.REFUSED
    size = sum(path.stat().st_size for path in copied)
    print(f"copied {len(copied)} files ({size} bytes) from {source} to {dest}")
    return check.run(dest)


class ServerRefusedError(Exception):
    """The server answered an error; the message holds its code and text."""


def ask(session: Session, op: str) -> object:
    answer = session.request({"op": op})
    if not answer.success:
        raise ServerRefusedError(f"{op}: {answer.error_code}: {answer.response}")
    return answer.response


def snapshot(session: Session, directory: Path | None) -> Path:
    """Take the snapshot; the server's data directory, checked to be `directory` if given."""
    ask(session, "snapshot.create_all")
    info = ask(session, "snapshot.info")
    if directory is None:
        directory = directory_of(ask(session, "snapshot.list"))
    reported = info.get("idempotency_snapshot") if isinstance(info, dict) else None
    if snapshot_files.idempotency_meta(directory) != reported:
        raise BackupRefusedError(
            f"{directory} is not the data directory of the server at {session.address} (its"
            " idempotency snapshot is not the one the server just wrote), or another snapshot"
            " was taken meanwhile: run the backup again"
        )
    return directory


def directory_of(listing: object) -> Path:
    paths = [Path(str(p)) for p in listing] if isinstance(listing, list) else []
    if not paths:
        raise BackupRefusedError(
            "the server holds no series, so it names no snapshot file to find its data directory"
            " by: give the directory (karma-trio backup DIR DEST)"
        )
    directory = paths[0].parent
    if not directory.is_dir():
        raise BackupRefusedError(
            f"the server's data directory {directory} is not readable here: run the backup on"
            " the server's machine, or give the directory as this machine mounts it"
        )
    return directory


#: copies of a server whose WAL rotates or is truncated while it is copied, before giving up
ATTEMPTS = 5


def copy(source: Path, dest: Path) -> list[Path]:
    """Copy what a restore reads; the copied files, fsynced.

    Between two rotations or truncations `karma.wal` only grows, so a copy made while the WAL
    files stayed the same files (names and inodes) is a consistent prefix of the server's
    history. A copy that saw them change (the WAL rotated into a segment, or another snapshot
    truncated it, pruning old snapshots) is thrown away and made again.
    """
    dest.mkdir(mode=0o750, parents=True, exist_ok=True)  # the data is as private as the server's
    for _ in range(ATTEMPTS):
        try:
            before = wal_state(source)
            copied = copy_once(source, dest)
            if wal_state(source) == before:
                wal_files.fsync_directory(dest)
                return copied
        except FileNotFoundError:
            pass  # a file removed under us by another snapshot, whose truncation changed the WAL
        for path in dest.iterdir():
            path.unlink()
    raise OSError(f"the WAL of {source} kept changing while it was copied ({ATTEMPTS} tries)")


def wal_state(source: Path) -> list[tuple[str, int]]:
    return [(path.name, path.stat().st_ino) for path in wal_files.wal_paths(source)]


def copy_once(source: Path, dest: Path) -> list[Path]:
    """Snapshots first, then the WAL oldest first, so every record the snapshots do not hold
    is in a WAL file copied after them."""
    names: list[str] = [manifest.NAME]
    for snapshot_file in snapshot_files.latest_by_series(source).values():
        names += [snapshot_file.path.name, snapshot_file.meta_path.name]
    for state in (snapshot_files.IDEMPOTENCY, snapshot_files.LIMITS):
        names += [state, state + ".meta.json"]
    names.append(snapshot_files.RECOVERY)
    names.append(wal_files.LSN_FILE)
    for path in wal_files.wal_paths(source):
        names += [path.name] if path.name == wal_files.ACTIVE else [path.name, path.name + ".idx"]
    copied = [copy_file(source / name, dest / name) for name in names if (source / name).exists()]
    if (dest / wal_files.ACTIVE).exists():
        drop_partial_line(dest / wal_files.ACTIVE)
    return copied


def copy_file(source: Path, target: Path) -> Path:
    with open(source, "rb") as reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())
    return target


def drop_partial_line(path: Path) -> None:
    """Cut a record the server was still appending when it was copied: it is not acknowledged
    before it is whole, and a backup should not start with a torn tail to repair."""
    with open(path, "r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        keep = end_of_last_line(handle, end)
        if keep != end:
            handle.truncate(keep)
            os.fsync(handle.fileno())


def end_of_last_line(handle: BinaryIO, end: int) -> int:
    """The offset just past the last newline before `end`, read backwards; 0 if there is none."""
    position = end
    while position > 0:
        start = max(0, position - READ_BACK)
        handle.seek(start)
        newline = handle.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0
