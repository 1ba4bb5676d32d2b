"""Failpoints: faults a test switches on in a running server (as etcd's gofail does).

Off unless the process starts with `KARMA_FAILPOINTS=<path>`; then every `hit(name)` looks at
that file (one stat; re-read only when it changed) and, if it names `name`, sleeps or raises
there. The file is JSON, one entry per failpoint:

    {"wal.write": {"delay_ms": 2500}}            every WAL flush takes 2.5 s longer
    {"wal.write": {"error": "EIO", "count": 1}}  the next WAL flush fails with EIO, once

`count` (optional) is how many hits fire from the moment the file was (re)read. Deleting the
file, or writing `{}`, turns every failpoint off. Tests only: nothing in a release reads it
unless that variable is set, and an unset variable costs one attribute test per hit.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Final

import attrs
import msgspec

ENV: Final = "KARMA_FAILPOINTS"


class Fault(msgspec.Struct, forbid_unknown_fields=True):
    delay_ms: int = 0
    error: str | None = None  # an errno name: "EIO", "ENOSPC"
    count: int | None = None


@attrs.define(eq=False)
class _Failpoints:
    path: str | None
    _seen: tuple[int, int] | None = None
    _faults: dict[str, Fault] = attrs.field(factory=dict)
    _fired: dict[str, int] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def hit(self, name: str) -> None:
        if self.path is None:
            return
        with self._lock:
            fault = self._current(name)
            if fault is None:
                return
            if fault.count is not None:
                fired = self._fired.get(name, 0)
                if fired >= fault.count:
                    return
                self._fired[name] = fired + 1
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if fault.error is not None:
            code = getattr(errno, fault.error, errno.EIO)
            raise OSError(code, f"{os.strerror(code)} (failpoint {name})")

    def _current(self, name: str) -> Fault | None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except OSError:
            self._seen, self._faults = None, {}
            return None
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen, self._fired = seen, {}
            try:
                with open(self.path, "rb") as handle:
                    self._faults = msgspec.json.decode(handle.read(), type=dict[str, Fault])
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                self._faults = {}  # half-written by the test: read again when it changes
                self._seen = None
        return self._faults.get(name)


_ACTIVE: Final = _Failpoints(os.environ.get(ENV) or None)


def hit(name: str) -> None:
    """Sleep or raise here if the failpoints file says so (no-op without KARMA_FAILPOINTS)."""
    _ACTIVE.hit(name)
