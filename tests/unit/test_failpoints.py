"""Failpoints: a test's faults, read from a file named by KARMA_FAILPOINTS."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from karma.storage.failpoints import _Failpoints


def test_without_a_file_nothing_fires() -> None:
    _Failpoints(None).hit("wal.write")


def test_an_error_fires_count_times_then_stops(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text('{"wal.write": {"error": "ENOSPC", "count": 2}}')
    points = _Failpoints(str(path))
    for _ in range(2):
        with pytest.raises(OSError, match=r"failpoint wal\.write") as caught:
            points.hit("wal.write")
        assert caught.value.errno == errno.ENOSPC
        assert "failpoint wal.write" in str(caught.value)
    points.hit("wal.write")  # the third hit: spent
    points.hit("other")


def test_a_delay_sleeps_and_a_removed_file_turns_it_off(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text('{"wal.write": {"delay_ms": 50}}')
    points = _Failpoints(str(path))
    began = time.monotonic()
    points.hit("wal.write")
    assert time.monotonic() - began >= 0.05
    path.unlink()
    began = time.monotonic()
    points.hit("wal.write")
    assert time.monotonic() - began < 0.05


def test_a_half_written_file_fires_nothing(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text('{"wal.write": {"err')
    _Failpoints(str(path)).hit("wal.write")
