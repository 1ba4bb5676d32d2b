"""A real master and two real replicas: once writes stop, every replica answers as the master."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process
B1 = 20260501
FULL = {"from": 20260101, "to": 20261231}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Proc, list[Proc]]]:
    for name in ("master", "s1", "s2"):
        (tmp_path / name).mkdir()
    master = Proc(tmp_path / "master", "--wal-fsync=false", "--max-request-bytes=1048576")
    replicas = [
        Proc(
            tmp_path / name,
            "--role=slave",
            "--replication-poll-interval-ms=50",
            "--replication-batch-size=100",
            "--wal-fsync=false",
            "--log=true",
        )
        for name in ("s1", "s2")
    ]
    yield master, replicas
    for proc in (master, *replicas):
        proc.close()


def start_replica(replica: Proc, master: Proc) -> None:
    replica.start("--replication-source-host=127.0.0.1", f"--replication-source-port={master.port}")


def ask(port: int, op: str, **fields: Any) -> dict[str, Any]:
    client = Client(port)
    try:
        return client.call(op, **fields)
    finally:
        client.close()


def full_read(port: int) -> dict[str, Any]:
    client = Client(port)
    try:
        state: dict[str, Any] = {}
        for name in sorted(client.call("tree.list")["response"]):
            state[name] = {
                "info": client.call("tree.info", series=name)["response"],
                "points": client.call("tree.series", series=name, range=FULL)["response"],
            }
        return state
    finally:
        client.close()


def wait_caught_up(replica: Proc, master: Proc, timeout: float = 30) -> None:
    target = ask(master.port, "system.stats")["response"]["wal_current_lsn"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = ask(replica.port, "replication.status")["response"]
        if status["wal_current_lsn"] >= target and status["replication_lag_entries"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"replica stuck: {status}, master at {target}")


def writes(client: Client, round_: int) -> None:
    for key in range(20):
        client.call(
            "counter.increment", series="api", key=key, value=round_ + 1, bucket=B1 + key % 5
        )
    client.call(
        "series.batch_add", series="emails", items=[[k, B1 + round_ % 3, k + 1] for k in range(50)]
    )
    for _ in range(2):  # the second is a retry: counted once, everywhere
        client.call(
            "counter.increment",
            series="api",
            key=99,
            value=7,
            bucket=B1,
            idempotency_key=f"ev-{round_}",
        )
    client.call("counter.decrement", series="api", key=3, value=1, bucket=B1 + 3)
    client.call("series.batch_set", series="emails", items=[[1, B1, 0], [2, B1 + 9, 4]])
    client.call("counter.delete_range", series="api", key=4, range={"from": B1, "to": B1 + 1})
    stream = f"rebuild-{round_}"
    client.call("ingest.begin", stream_id=stream, mode="replace_series")
    client.call(
        "ingest.chunk",
        stream_id=stream,
        series="rebuilt",
        chunk_seq=1,
        items=[[k, B1, round_ * 10 + k] for k in range(1, 30)],
    )
    client.call("ingest.commit", stream_id=stream)


def test_replicas_converge_through_crashes_snapshots_and_rebootstraps(
    cluster: tuple[Proc, list[Proc]],
) -> None:
    master, (s1, s2) = cluster
    master.start()
    start_replica(s1, master)
    start_replica(s2, master)
    client = Client(master.port)
    writes(client, 0)
    client.call("snapshot.create_all")
    writes(client, 1)
    client.close()

    s1.kill()  # s1 falls behind a WAL truncation: it must bootstrap again by itself
    client = Client(master.port)
    writes(client, 2)
    client.call("snapshot.create_all")
    writes(client, 3)
    client.close()
    start_replica(s1, master)

    master.kill()  # and the master crashes, restarts on the same port, replays its WAL
    master.start(same_port=True)
    client = Client(master.port)
    writes(client, 4)
    client.call("tree.create", series="empty")
    client.call("tree.drop", series="empty")
    client.close()

    s2.kill()  # s2 restarts from its own snapshots and WAL, no bootstrap needed
    start_replica(s2, master)

    wanted = full_read(master.port)
    for replica in (s1, s2):
        wait_caught_up(replica, master)
        assert full_read(replica.port) == wanted
    status = ask(s1.port, "replication.status")["response"]
    assert status["replication_bootstrap_success_count"] >= 1
    assert ask(s2.port, "counter.increment", series="api", key=1)["error_code"] == "forbidden"


def test_a_replica_promoted_to_master_keeps_its_data_and_lsns(
    cluster: tuple[Proc, list[Proc]],
) -> None:
    master, (s1, _) = cluster
    master.start()
    start_replica(s1, master)
    client = Client(master.port)
    writes(client, 0)
    client.close()
    wait_caught_up(s1, master)
    wanted = full_read(master.port)
    lsn = ask(master.port, "system.stats")["response"]["wal_current_lsn"]
    master.kill()
    s1.stop()
    s1.flags = [f for f in s1.flags if not f.startswith("--role")]
    s1.start("--role=master")
    assert full_read(s1.port) == wanted
    promoted = Client(s1.port)
    assert promoted.call("counter.increment", series="api", key=1, bucket=B1)["success"]
    assert promoted.call("system.stats")["response"]["wal_current_lsn"] == lsn + 1
    promoted.close()


def test_a_replica_that_never_reaches_its_master_says_its_bootstrap_fails(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    replica = Proc(
        tmp_path / "r", "--role=slave", "--replication-poll-interval-ms=50", "--log=true"
    )
    try:
        nobody = free_port()  # nothing listens there
        replica.start("--replication-source-host=127.0.0.1", f"--replication-source-port={nobody}")
        deadline = time.monotonic() + 20
        while '"replication.bootstrap_failed"' not in replica.stderr():
            assert time.monotonic() < deadline, replica.stderr()[-2000:]
            time.sleep(0.1)
        assert '"replication.poll_failed"' not in replica.stderr()
        stats = ask(replica.port, "system.stats")["response"]
        assert stats["replication_bootstrap_error_count"] >= 1
        assert stats["replication_bootstrap_success_count"] == 0
    finally:
        replica.close()
