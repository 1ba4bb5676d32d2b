"""The real server under a shifted wall clock: libfaketime's preload reads an offset from a
file on every clock call, so a test steps the clock of a running server by rewriting it.
Monotonic time is left real (FAKETIME_DONT_FAKE_MONOTONIC): trio's timers, leases and hold
deadlines run on it, as they would on a host whose NTP steps the wall clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: where Debian's libfaketime package puts it (apt-get install faketime)
CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
    Path("/usr/local/lib/faketime/libfaketime.so.1"),
)
LIBRARY = next((path for path in CANDIDATES if path.exists()), None)

needs_faketime = pytest.mark.skipif(
    LIBRARY is None, reason="libfaketime is not installed (apt-get install faketime)"
)


class ShiftedClock:
    """An offset from real time, in seconds, that a server started with `env()` reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0
        self.set(0)

    def set(self, offset_s: int) -> None:
        """Step the wall clock of every server using this file (at its next clock read)."""
        self.offset_s = offset_s
        aside = self.path.with_suffix(".tmp")
        aside.write_text(f"{offset_s:+d}\n")
        os.replace(aside, self.path)  # whole: a reader never sees half an offset

    def env(self) -> dict[str, str]:
        assert LIBRARY is not None
        return {
            "LD_PRELOAD": str(LIBRARY),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",  # read the file on every call: steps apply at once
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",  # file times stay real (Python's bytecode cache compares them)
        }
