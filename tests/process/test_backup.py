"""`karma-trio backup` from a running server: a second server started on the copy answers what
the first did when the backup was taken."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from karma.storage import verify, wal_files
from karma.tools import backup as backup_tool
from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
B1 = 20260501


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=false")
    yield server
    server.close()


def backup(*args: str | Path, karma_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("KARMA_URL", None)
    if karma_url is not None:
        env["KARMA_URL"] = karma_url
    return subprocess.run(
        [sys.executable, "-m", "karma", "backup", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def answers(port: int) -> dict[str, object]:
    """What a client sees: every series, its keys and totals, and the recovery checkpoints."""
    client = Client(port)
    try:
        seen: dict[str, object] = {}
        for series in client.call("tree.list")["response"]:
            keys = client.call("tree.keys", series=series, limit=1000)["response"]["keys"]
            seen[series] = {k["key"]: k["total"] for k in keys}
        seen["checkpoints"] = client.call("recovery.status")["response"]["checkpoints"]
        return seen
    finally:
        client.close()


def test_a_server_started_on_the_backup_answers_as_the_original_did(
    proc: Proc, tmp_path: Path
) -> None:
    proc.start()
    client = Client(proc.port)
    for key in range(1, 6):
        for series in ("api_requests", "emails_sent"):
            client.call("counter.increment", series=series, key=key, value=key * 10, bucket=B1)
    keyed = {"series": "api_requests", "key": 99, "value": 3, "idempotency_key": "evt-1"}
    assert client.call("counter.increment", **keyed)["success"]
    assert client.call("recovery.checkpoint", source="billing", offset=77)["success"]
    client.close()
    before = answers(proc.port)

    dest = tmp_path / "backup"
    done = backup("--url", f"karma://127.0.0.1:{proc.port}", dest)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{dest}: ok: " in done.stdout
    proc.stop()  # the copy must not need the original

    copy = Proc(dest, "--log=false").start()
    try:
        assert answers(copy.port) == before
        # the idempotency records came along: a retried write is recognised, not counted twice
        retried = Client(copy.port)
        assert retried.call("counter.increment", **keyed)["idempotent"] is True
        retried.close()
    finally:
        copy.close()


def test_the_backup_carries_the_manifest_and_open_holds(proc: Proc, tmp_path: Path) -> None:
    """karma.limits.json and karma.manifest.json are copied too (issue 26): an open hold is
    still held on the copy, and the copy's restore is checked against the manifest."""
    proc.start()
    client = Client(proc.port)
    hold = {"series": "tokens", "key": 1, "value": 40, "max": 100, "window": {"days": 1}}
    assert client.call("limit.reserve", id="r-1", ttl_s=3600, **hold)["success"]
    client.close()
    dest = tmp_path / "backup"
    done = backup("--url", f"karma://127.0.0.1:{proc.port}", dest)
    assert done.returncode == 0, done.stdout + done.stderr
    proc.stop()
    for name in ("karma.manifest.json", "karma.limits.json", "karma.limits.json.meta.json"):
        assert (dest / name).exists(), name
    copy = Proc(dest, "--log=false").start()
    try:
        client = Client(copy.port)
        assert client.call("limit.reservation", id="r-1")["response"]["status"] == "held"
        client.close()
    finally:
        copy.close()


def test_backup_of_a_named_directory_with_writes_arriving_meanwhile(
    proc: Proc, tmp_path: Path
) -> None:
    proc.flags.append("--wal-segment-bytes=2048")  # rotations during the copy too
    proc.start()
    acknowledged = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal acknowledged
        client = Client(proc.port)
        while not stop.is_set():
            if client.call("counter.increment", series="busy", key=1, bucket=B1)["success"]:
                acknowledged += 1
        client.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while acknowledged < 200:
            threading.Event().wait(0.01)
        low = acknowledged
        done = backup(
            proc.directory, tmp_path / "backup", karma_url=f"karma://127.0.0.1:{proc.port}"
        )
        high = acknowledged
    finally:
        stop.set()
        writer.join(timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr

    copy = Proc(tmp_path / "backup", "--log=false").start()
    try:
        client = Client(copy.port)
        restored = client.call("counter.sum", series="busy", key=1)["response"]
        client.close()
    finally:
        copy.close()
    # a consistent prefix: every write acknowledged before the backup began, nothing invented
    assert low <= restored <= high


def test_the_copy_holds_the_wal_segments_and_no_half_written_record(
    proc: Proc, tmp_path: Path
) -> None:
    # the copying step alone, on a directory a killed server left: a snapshot, WAL segments
    # after it, and a record cut short at the end of karma.wal
    proc.flags.append("--wal-segment-bytes=300")
    proc.start()
    client = Client(proc.port)
    client.call("counter.increment", series="s", key=1, value=1, bucket=B1)
    assert client.call("snapshot.create_all")["success"]
    for value in range(2, 12):
        assert client.call("counter.increment", series="s", key=1, value=value, bucket=B1)[
            "success"
        ]
    client.close()
    proc.kill()
    with open(proc.directory / wal_files.ACTIVE, "ab") as handle:
        handle.write(b'{"v":2,"lsn":12,"entry":{"op":"counter.incr')

    dest = tmp_path / "backup"
    copied = {path.name for path in backup_tool.copy(proc.directory, dest)}
    segments = {p.name for p in wal_files.wal_paths(proc.directory)} - {wal_files.ACTIVE}
    assert len(segments) >= 2
    assert segments | {s + ".idx" for s in segments} <= copied
    assert (dest / wal_files.ACTIVE).read_bytes().endswith(b"}\n")
    assert not verify.examine(dest).problems  # no torn tail left to warn about
    copy = Proc(dest, "--log=false").start()
    try:
        client = Client(copy.port)
        assert client.call("counter.sum", series="s", key=1)["response"] == sum(range(1, 12))
        client.close()
    finally:
        copy.close()


def test_a_directory_that_is_not_the_servers_is_refused(proc: Proc, tmp_path: Path) -> None:
    proc.start()
    other = tmp_path / "other"
    other.mkdir()
    done = backup(other, tmp_path / "backup", karma_url=f"karma://127.0.0.1:{proc.port}")
    assert done.returncode == 2
    assert "is not the data directory of the server" in done.stderr
    assert not (tmp_path / "backup").exists()


def test_a_destination_that_is_not_empty_is_refused(proc: Proc, tmp_path: Path) -> None:
    proc.start()
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / "something").write_text("keep me")
    done = backup(proc.directory, dest, karma_url=f"karma://127.0.0.1:{proc.port}")
    assert done.returncode == 2
    assert (dest / "something").read_text() == "keep me"


def test_the_directory_cannot_be_learned_from_a_server_without_series(
    proc: Proc, tmp_path: Path
) -> None:
    proc.start()
    done = backup("--url", f"karma://127.0.0.1:{proc.port}", tmp_path / "backup")
    assert done.returncode == 2
    assert "karma-trio backup DIR DEST" in done.stderr


def test_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    from tests.process.proc import free_port

    done = backup("--url", f"karma://127.0.0.1:{free_port()}", tmp_path / "backup")
    assert done.returncode == 3
    assert "cannot reach" in done.stderr
