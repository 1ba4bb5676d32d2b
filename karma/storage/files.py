"""Opening files in the data directory without following links planted there. Blocking.

karma writes only regular files, each created in the directory itself. Anything else at one of
its names — a symlink to a file elsewhere, a FIFO, a directory — was put there by someone else,
and following it would serve or overwrite a file outside the directory with the server's rights:
`snapshot.fetch` of `<unix>_x.tree -> /etc/shadow`, or a snapshot written through a link planted
at a predictable temp name (`.karma.wal.<pid>.tmp`). So new files are created with
O_CREAT|O_EXCL|O_NOFOLLOW (never through an existing name, link or hard link), and files served
to clients are opened with O_NOFOLLOW and checked to be regular with fstat, on the descriptor
itself (checking the path first and opening it after would leave a window to swap it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Final

#: What opening or lstat-ing a name that holds no regular file of ours fails with: it is missing
#: (ENOENT, ENOTDIR), a symlink under O_NOFOLLOW (ELOOP), a socket (ENXIO), or a name no file
#: system holds (ENAMETOOLONG).
_NOT_THERE: Final = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO, errno.ENAMETOOLONG}
)
#: O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; regular files
#: ignore it.
_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegularFileError(FileNotFoundError):
    """Nothing karma wrote is at this name: it is missing, a symlink, or not a regular file."""


def is_regular(path: Path) -> bool:
    """A regular file is at `path` itself (a symlink to one is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return False
        raise
    except ValueError:  # a NUL in the name: no file has it
        return False


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at `path`; NotRegularFileError if there is none."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            reason = f"not a regular file: {exc.strerror}"
            raise NotRegularFileError(exc.errno, reason, str(path)) from exc
        raise
    except ValueError as exc:
        raise NotRegularFileError(errno.ENOENT, "no such file", str(path)) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # the file opened, not the name again
            raise NotRegularFileError(errno.ENOENT, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def create_new(path: Path, *, replace: bool = False, append: bool = False) -> int:
    """A descriptor open for writing on a new regular file at `path` (O_APPEND with `append`).

    Never through an existing name (O_EXCL), so never through a link planted there. With
    `replace`, whatever is at `path` first is unlinked — for predictable names like a temp left
    by an earlier attempt of this process: unlink removes a link itself, never its target. If
    another name is planted in between, the create fails with EEXIST: a refused write, never one
    through the link.
    """
    if replace:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return os.open(path, _CREATE | (os.O_APPEND if append else 0), 0o644)


def write_new(path: Path, data: bytes, *, fsync: bool, replace: bool = False) -> None:
    """`data` in a new regular file at `path` (see `create_new`); removed again on failure."""
    with open(create_new(path, replace=replace), "wb") as handle:
        try:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise


def planted(directory: Path) -> list[Path]:
    """Entries named like karma's files that hold something else (a symlink, a FIFO, a
    directory): listings, restore and WAL scans skip them, so startup names them in a warning."""
    return sorted(
        path for path in directory.iterdir() if _named_like_ours(path.name) and not is_regular(path)
    )


def _named_like_ours(name: str) -> bool:
    # karma.wal, its segments, .idx, .lsn and torn-tail files, karma.idempotency.json; snapshots
    # and their sidecars; recovery.json
    return (
        name.startswith("karma.")
        or name.endswith((".tree", ".meta.json"))
        or (name == "recovery.json")
    )
