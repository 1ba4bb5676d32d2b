"""`karma.wal` removed while the server runs (issue 18, item 4): no write is acknowledged into a
file the data directory no longer leads to; the server recovers by itself with a full snapshot
and a new karma.wal, and nothing acknowledged is lost across a SIGKILL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "usage"
B1 = 20260501


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=true")
    yield server
    server.close()


def _increments(client: Client, count: int) -> tuple[int, int]:
    """`count` acknowledged increments of 1, retrying refusals; (acknowledged, refused)."""
    acked = refused = 0
    deadline = time.monotonic() + 60
    while acked < count:
        assert time.monotonic() < deadline, "writes never resumed"
        answer = client.call("counter.increment", series=S, key=1, value=1, bucket=B1)
        if answer["success"]:
            acked += 1
            continue
        assert answer["error_code"] == "storage_unavailable", answer
        assert "karma.wal was removed or replaced" in answer["response"]
        refused += 1
        time.sleep(0.02)
    return acked, refused


@pytest.mark.parametrize("fsync", ["true", "false"])
def test_writes_after_karma_wal_is_unlinked_are_refused_until_recovered(
    proc: Proc, fsync: str
) -> None:
    proc.start(f"--wal-fsync={fsync}")
    client = Client(proc.port)
    first, _ = _increments(client, 20)
    (proc.directory / "karma.wal").unlink()
    after, refused = _increments(client, 200)
    assert refused >= 1  # the first write into the unlinked file was caught, not acknowledged
    client.close()
    assert (proc.directory / "karma.wal").exists()
    log = proc.stderr()
    assert '"wal.lost"' in log
    assert '"wal.recovered"' in log
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == first + after == 220
    client.close()


def test_a_symlinked_karma_wal_stays_a_symlink_and_loses_nothing(
    proc: Proc, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (elsewhere / "karma.wal").touch()
    os.symlink(elsewhere / "karma.wal", proc.directory / "karma.wal")
    proc.start("--wal-fsync=true")
    client = Client(proc.port)
    acked, refused = _increments(client, 30)
    assert refused == 0
    assert client.call("snapshot.create_all")["success"]  # truncates through the link
    more, refused = _increments(client, 30)
    assert refused == 0
    client.close()
    assert (proc.directory / "karma.wal").is_symlink()
    assert (elsewhere / "karma.wal").stat().st_size > 0
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == acked + more
    client.close()


def test_the_symlink_target_removed_is_noticed_too(proc: Proc, tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (elsewhere / "karma.wal").touch()
    os.symlink(elsewhere / "karma.wal", proc.directory / "karma.wal")
    proc.start("--wal-fsync=false")
    client = Client(proc.port)
    first, _ = _increments(client, 10)
    (elsewhere / "karma.wal").unlink()
    after, refused = _increments(client, 50)
    assert refused >= 1
    client.close()
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == first + after
    client.close()
