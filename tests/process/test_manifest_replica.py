"""A replica's bootstrap copies its master's `karma.manifest.json` (`snapshot.manifest`) and checks
what it fetched against it before installing anything; its own restarts are then checked with it
(issue 26, item 4). HA re-bootstrap takes the same path (`Follower.bootstrap`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process.proc import Client, Proc
from tests.process.test_limits_replica import ask, start_replica, wait_caught_up

pytestmark = pytest.mark.process
S, T = "usage", "other"
B1 = 20260501


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    for name in ("master", "replica"):
        (tmp_path / name).mkdir()
    master = Proc(tmp_path / "master", "--wal-fsync=false", "--log=true")
    replica = Proc(
        tmp_path / "replica",
        "--role=slave",
        "--replication-poll-interval-ms=50",
        "--wal-fsync=false",
        "--log=true",
    )
    yield master, replica
    for proc in (master, replica):
        proc.close()


def ok(client: Client, op: str, **fields: Any) -> Any:
    answer = client.call(op, **fields)
    assert answer["success"], (op, fields, answer)
    return answer["response"]


def _master_history(master: Proc) -> None:
    master.start()
    client = Client(master.port)
    for series in (S, T):
        ok(client, "counter.increment", series=series, key=1, value=2, bucket=B1)
    ok(client, "snapshot.create_all")
    ok(client, "counter.increment", series=S, key=1, value=3, bucket=B1)
    ok(client, "snapshot.create_all")  # the WAL now starts past both series' first writes
    client.close()


def _manifest(directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((directory / "karma.manifest.json").read_text())
    return found


def test_a_replica_copies_the_manifest_and_its_restart_is_checked_with_it(
    pair: tuple[Proc, Proc],
) -> None:
    master, replica = pair
    _master_history(master)
    assert ask(master.port, "snapshot.manifest")["response"] == _manifest(master.directory)
    start_replica(replica, master)
    wait_caught_up(replica, master)
    assert _manifest(replica.directory) == _manifest(master.directory)
    assert ask(replica.port, "counter.sum", series=S, key=1)["response"] == 5
    replica.kill()
    for tree in replica.directory.glob(f"*_{S}.tree*"):
        tree.unlink()
    replica.start(
        "--replication-source-host=127.0.0.1",
        f"--replication-source-port={master.port}",
        wait=False,
    )
    assert replica.wait() == 1
    assert f"series {S!r}" in replica.stderr()


def test_a_bootstrap_missing_a_series_the_manifest_names_installs_nothing(
    pair: tuple[Proc, Proc],
) -> None:
    master, replica = pair
    _master_history(master)
    for tree in master.directory.glob(f"*_{S}.tree*"):  # removed under the running master
        tree.unlink()
    start_replica(replica, master)
    deadline = time.monotonic() + 30
    while "bootstrap copy incomplete" not in replica.stderr():
        assert time.monotonic() < deadline, replica.stderr()[-2000:]
        time.sleep(0.1)
    failed = [
        json.loads(line)
        for line in replica.stderr().splitlines()
        if '"replication.bootstrap_failed"' in line
    ]
    assert failed
    assert f"series {S!r}" in failed[0]["error"]
    assert not list(replica.directory.glob("*.tree"))
    assert not (replica.directory / "karma.manifest.json").exists()
    # the master's next snapshot names what it holds in memory: the retried bootstrap succeeds
    client = Client(master.port)
    ok(client, "snapshot.create_all")
    client.close()
    wait_caught_up(replica, master, timeout=90)
    assert ask(replica.port, "counter.sum", series=S, key=1)["response"] == 5
    # copied before the files it names (it may be one snapshot older than the master's now)
    assert set(_manifest(replica.directory)["series"]) == {S, T}
