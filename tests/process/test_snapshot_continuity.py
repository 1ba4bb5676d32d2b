"""Snapshots taken back to back, and snapshot files damaged or removed while the server is down:
no acknowledged write is ever lost silently. Either everything is restored, or startup stops
naming the file and the LSN range that no file holds (issue 18, items 1 and 3)."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "usage"
B1 = 20260501


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--wal-fsync=true", "--log=true")
    yield server
    server.close()


def _sum(proc: Proc, key: int = 1) -> int:
    client = Client(proc.port)
    try:
        value: int = client.call("counter.sum", series=S, key=key)["response"]
        return value
    finally:
        client.close()


def test_a_burst_of_snapshots_then_a_clean_restart_keeps_every_write(proc: Proc) -> None:
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.increment", series=S, key=1, value=1, bucket=B1)["success"]
    for _ in range(10):
        assert client.call("snapshot.create_all")["success"]
    assert client.call("counter.increment", series=S, key=1, value=1, bucket=B1)["success"]
    assert client.call("snapshot.create_all")["success"]
    client.close()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    proc.start()
    assert _sum(proc) == 2
    # names only grow, so the newest name is also the newest LSN (what karma 1.0 restores)
    names = sorted(proc.directory.glob(f"*_{S}.tree"), key=lambda p: int(p.name.split("_")[0]))
    metas = [
        int(re.search(r'"last_lsn":(\d+)', (p.parent / (p.name + ".meta.json")).read_text())[1])  # type: ignore[index]
        for p in names
    ]
    assert metas == sorted(metas)
    assert len(names) == 5  # --dump-retention-per-tree


def _history(proc: Proc) -> None:
    """Three snapshots of S (values 1, 3, 6) and 9 acknowledged in all, the WAL truncated."""
    proc.start()
    client = Client(proc.port)
    for value in (1, 2, 3):
        assert client.call("counter.increment", series=S, key=1, value=value, bucket=B1)["success"]
        assert client.call("snapshot.create_all")["success"]
    assert client.call("counter.increment", series=S, key=1, value=3, bucket=B1)["success"]
    assert client.call("counter.sum", series=S, key=1)["response"] == 9
    client.close()
    proc.kill()


def _newest(proc: Proc) -> Path:
    return max(proc.directory.glob(f"*_{S}.tree"), key=lambda p: int(p.name.split("_")[0]))


def _delete_tree(path: Path) -> None:
    path.unlink()


def _delete_meta(path: Path) -> None:
    path.with_name(path.name + ".meta.json").unlink()


def _garbage_meta(path: Path) -> None:
    path.with_name(path.name + ".meta.json").write_bytes(b"\x00garbage{{{\n")


def _delete_everything_but_the_oldest(path: Path) -> None:
    for other in path.parent.glob(f"*_{S}.tree"):
        if other != min(path.parent.glob(f"*_{S}.tree"), key=lambda p: p.name):
            other.unlink()


@pytest.mark.parametrize(
    "damage",
    [_delete_tree, _delete_meta, _garbage_meta, _delete_everything_but_the_oldest],
    ids=["newest-tree-deleted", "its-meta-deleted", "its-meta-garbage", "only-oldest-left"],
)
def test_a_missing_or_damaged_newest_snapshot_refuses_to_start_naming_it(
    proc: Proc, damage: Callable[[Path], None]
) -> None:
    _history(proc)
    newest = _newest(proc)
    damage(newest)
    proc.start(wait=False)
    assert proc.wait() == 1
    line = [x for x in proc.stderr().splitlines() if x.startswith("karma-trio: cannot start")]
    assert len(line) == 1, proc.stderr()[-2000:]
    assert f"_{S}.tree" in line[0]
    assert re.search(r"LSN \d+\.\.\d+", line[0]), line[0]
    assert "--restore-accept-loss" in line[0]


def test_the_operator_may_accept_the_loss_and_it_is_logged(proc: Proc) -> None:
    _history(proc)
    _delete_tree(_newest(proc))
    proc.start("--restore-accept-loss=true")
    assert _sum(proc) == 6  # the older snapshot plus what the WAL still holds
    assert '"restore.accepted_loss"' in proc.stderr()


def test_a_removed_wal_segment_refuses_to_start(proc: Proc) -> None:
    proc.flags += ["--wal-segment-bytes=300"]
    proc.start()
    client = Client(proc.port)
    for n in range(30):
        assert client.call("counter.increment", series=S, key=1, value=1, bucket=B1 + n % 20)[
            "success"
        ]
    client.close()
    proc.kill()
    segments = sorted(proc.directory.glob("karma.wal.*.segment"))
    assert len(segments) >= 3
    segments[1].unlink()
    proc.start(wait=False)
    assert proc.wait() == 1
    assert "a WAL segment is missing" in proc.stderr()


def test_the_idempotency_snapshot_removed_refuses_to_start(proc: Proc) -> None:
    _history(proc)
    (proc.directory / "karma.idempotency.json").unlink()
    proc.start(wait=False)
    assert proc.wait() == 1
    assert "karma.idempotency.json" in proc.stderr()


def test_a_damaged_snapshot_whose_writes_the_wal_still_holds_restores_everything(
    proc: Proc,
) -> None:
    """A single-series snapshot (snapshot.create) never truncates: losing it loses nothing."""
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.increment", series=S, key=1, value=4, bucket=B1)["success"]
    assert client.call("snapshot.create_all")["success"]
    assert client.call("counter.increment", series=S, key=1, value=5, bucket=B1)["success"]
    assert client.call("snapshot.create", series=S)["success"]
    client.close()
    proc.kill()
    _delete_meta(_newest(proc))
    proc.start()
    assert _sum(proc) == 9
