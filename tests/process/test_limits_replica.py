"""Limits on a real master and a real replica: the replica decides as its master does, from
snapshots (karma.limits.json included) and replicated effects, and expires nothing itself."""

from __future__ import annotations

import datetime as dt
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from karma import days
from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process
API, TOKENS = "api_requests", "llm_tokens"
WINDOWS: list[dict[str, Any]] = [
    {"calendar": "day"},
    {"calendar": "week"},
    {"calendar": "month"},
    {"calendar": "year"},
    {"days": 7},
    {"days": 366},
]


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
        proc.close()  # SIGKILL: a stopped (SIGSTOP) process dies too


def start_replica(replica: Proc, master: Proc) -> None:
    replica.start("--replication-source-host=127.0.0.1", f"--replication-source-port={master.port}")


def ask(port: int, op: str, **fields: Any) -> dict[str, Any]:
    client = Client(port)
    try:
        return client.call(op, **fields)
    finally:
        client.close()


def wait_caught_up(replica: Proc, master: Proc, timeout: float = 30) -> None:
    target = ask(master.port, "system.stats")["response"]["wal_current_lsn"]
    deadline = time.monotonic() + timeout
    while True:
        status = ask(replica.port, "replication.status")["response"]
        if status["wal_current_lsn"] >= target and status["replication_lag_entries"] == 0:
            return
        assert time.monotonic() < deadline, f"replica stuck: {status}, master at {target}"
        time.sleep(0.05)


def ok(client: Client, op: str, **fields: Any) -> dict[str, Any]:
    answer = client.call(op, **fields)
    assert answer["success"], (op, fields, answer)
    response: dict[str, Any] = answer["response"]
    return response


def charge(series: str, key: int, maximum: int, window_index: int = 2) -> dict[str, Any]:
    return {"series": series, "key": key, "max": maximum, "window": WINDOWS[window_index]}


@attrs.define
class Sent:
    """What a node was asked and answered: keyed consumes and reserves, by key or id."""

    consumes: dict[str, tuple[dict[str, Any], dict[str, Any]]] = attrs.field(factory=dict)
    reserves: dict[str, tuple[dict[str, Any], dict[str, Any]]] = attrs.field(factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.reserves)


def traffic(client: Client, round_: int, sent: Sent) -> None:
    """Usage on other days, consumes (some keyed, some denied), reserves, commits and voids."""
    day = days.from_date(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3 + round_))
    ok(client, "counter.increment", series=API, key=0, value=4, bucket=day)
    for n in range(30):
        key = n % 3
        fields = {**charge(API, key, 25, n % len(WINDOWS)), "value": 1 + n % 2}
        if n % 2:
            fields["idempotency_key"] = f"k{round_}-{n}"
            sent.consumes[fields["idempotency_key"]] = (
                fields,
                client.call("limit.consume", **fields),
            )
        else:
            ok(client, "limit.consume", **fields)
    for n in range(8):
        hold_id = f"r{round_}-{n}"
        fields = {"id": hold_id, **charge(TOKENS, n % 2, 10_000), "value": 900}
        sent.reserves[hold_id] = (fields, client.call("limit.reserve", **fields))
        assert sent.reserves[hold_id][1]["response"]["status"] == "held"
        if n % 4 == 1:
            ok(client, "limit.commit", id=hold_id, value=100 * n)
        elif n % 4 == 2:
            ok(client, "limit.void", id=hold_id)


def views(port: int, ids: list[str]) -> dict[str, Any]:
    """Every limit.check (value 0, every window) and every reservation, as a node answers."""
    client = Client(port)
    try:
        seen: dict[str, Any] = {}
        for series, keys in ((API, range(3)), (TOKENS, range(2))):
            for key in keys:
                for index, window in enumerate(WINDOWS):
                    seen[f"{series}/{key}/{index}"] = client.call(
                        "limit.check", series=series, key=key, value=0, max=10_000, window=window
                    )
        for hold_id in ids:
            seen[hold_id] = client.call("limit.reservation", id=hold_id)
        return seen
    finally:
        client.close()


def test_a_replica_answers_limit_reads_as_its_master_after_bootstrapping_from_snapshots(
    pair: tuple[Proc, Proc],
) -> None:
    master, replica = pair
    master.start()
    client = Client(master.port)
    sent = Sent()
    traffic(client, 0, sent)
    ok(client, "snapshot.create_all")  # the WAL is truncated: a replica needs the sidecar
    assert (master.directory / "karma.limits.json").exists()
    traffic(client, 1, sent)
    start_replica(replica, master)
    wait_caught_up(replica, master)
    wanted = views(master.port, sent.ids)
    assert any(v["response"]["held"] for k, v in wanted.items() if k.startswith(TOKENS))
    assert any(answer["response"]["allowed"] is False for _, answer in sent.consumes.values())
    assert views(replica.port, sent.ids) == wanted
    assert (replica.directory / "karma.limits.json").exists()
    bootstraps = ask(replica.port, "replication.status")["response"]
    assert bootstraps["replication_bootstrap_success_count"] == 1

    # restarted, the replica comes back from its own files and follows on
    replica.kill()
    traffic(client, 2, sent)
    ok(client, "snapshot.create_all")
    traffic(client, 3, sent)
    client.close()
    start_replica(replica, master)
    wait_caught_up(replica, master)
    assert views(replica.port, sent.ids) == views(master.port, sent.ids)

    # after a failover, retries get the answers the old master gave
    master.kill()
    replica.stop()
    replica.flags = [f for f in replica.flags if not f.startswith("--role")]
    replica.start("--role=master")
    promoted = Client(replica.port)
    try:
        for op, asked in (("limit.consume", sent.consumes), ("limit.reserve", sent.reserves)):
            for fields, first in asked.values():
                assert promoted.call(op, **fields) == {**first, "idempotent": True}
    finally:
        promoted.close()


def test_a_mutating_limit_op_sent_to_a_replica_is_forbidden(pair: tuple[Proc, Proc]) -> None:
    master, replica = pair
    master.start()
    start_replica(replica, master)
    fields = charge(API, 1, 10)
    refusals = {
        "limit.consume": fields,
        "limit.reserve": {**fields, "id": "r-1"},
        "limit.commit": {"id": "r-1", "value": 1},
        "limit.void": {"id": "r-1"},
    }
    for op, body in refusals.items():
        command = op.replace(".", "_")
        assert ask(replica.port, op, **body) == {
            "protocol_version": 2,
            "success": False,
            "response": f"Slave role cannot execute command {command}",
            "error_code": "forbidden",
        }
    assert ask(replica.port, "limit.status")["success"]


def test_holds_expire_on_a_replica_only_through_its_master(pair: tuple[Proc, Proc]) -> None:
    """A replica ignores an overdue hold in its decisions, but it is the master's sweeper
    that settles it, through the WAL: while the master is paused the hold stays overdue on
    the replica, and it is expired there once the master's expiry entry arrives."""
    master, replica = pair
    master.start()
    start_replica(replica, master)
    client = Client(master.port)
    ok(client, "limit.consume", **charge(TOKENS, 7, 10_000), value=5)
    answer = ok(client, "limit.reserve", id="short", **charge(TOKENS, 7, 10_000), value=50, ttl_s=2)
    client.close()
    expires_at = answer["expires_at_unix_ms"] / 1000
    wait_caught_up(replica, master)
    master.signal(signal.SIGSTOP)
    try:
        assert b'"limit.settle"' not in (master.directory / "karma.wal").read_bytes(), (
            "the master expired the hold before it was paused: too slow a machine for a 2 s TTL"
        )
        held = ask(replica.port, "limit.reservation", id="short")["response"]
        assert (held["status"], held["held"]) == ("held", 50)
        # past the TTL and a full sweeper round: a running master would have expired it
        time.sleep(max(0.0, expires_at - time.time()) + 1.5)
        overdue = ask(replica.port, "limit.reservation", id="short")["response"]
        assert (overdue["status"], overdue["held"]) == ("overdue", 50)
        check = ask(replica.port, "limit.check", **charge(TOKENS, 7, 10_000), value=0)["response"]
        assert (check["used"], check["held"]) == (5, 0)  # decisions ignore it already
        assert b'"limit.settle"' not in (replica.directory / "karma.wal").read_bytes()
    finally:
        master.signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while ask(replica.port, "limit.reservation", id="short")["response"]["status"] != "expired":
        assert time.monotonic() < deadline, "the master's expiry never reached the replica"
        time.sleep(0.05)
    assert b'"outcome":"expired"' in (master.directory / "karma.wal").read_bytes()
    assert ask(master.port, "limit.reservation", id="short")["response"]["status"] == "expired"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_replica_forgets_the_same_settled_ids_as_its_master(
    pair: tuple[Proc, Proc],
) -> None:
    """Issue 23: with the same --max-settled-reservations, a replica bootstrapped from the
    master's karma.limits.json and fed its entries keeps exactly the master's newest ids."""
    master, replica = pair
    cap = "--max-settled-reservations=5"
    master.flags.append(cap)
    replica.flags.append(cap)
    metrics_port = free_port()
    master.start()
    client = Client(master.port)
    ids = [f"s-{n}" for n in range(14)]

    def cycles(chosen: list[str]) -> None:
        for n, hold_id in enumerate(chosen):
            ok(client, "limit.reserve", id=hold_id, **charge(TOKENS, 1, 10**9), value=9)
            if n % 3 == 2:
                ok(client, "limit.void", id=hold_id)
            else:
                ok(client, "limit.commit", id=hold_id, value=n)

    cycles(ids[:7])
    ok(client, "snapshot.create_all")  # the replica bootstraps from the sidecar, cut at 5
    replica.start(
        "--replication-source-host=127.0.0.1",
        f"--replication-source-port={master.port}",
        f"--metrics-port={metrics_port}",
    )
    cycles(ids[7:])
    client.close()
    wait_caught_up(replica, master)
    wanted = views(master.port, ids)
    assert [i for i in ids if wanted[i]["success"]] == ids[-5:]
    assert views(replica.port, ids) == wanted
    seen = scrape(metrics_port)
    assert seen["karma_limit_settled_reservations"] == 5
    assert seen["karma_limit_open_reservations"] == 0
    # the sidecar held 5 (the master had pruned 2): each of the 7 entries since prunes one
    assert seen["karma_limit_settled_pruned_total"] == 7
