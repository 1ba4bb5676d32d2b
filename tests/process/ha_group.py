"""Helpers for HA groups on a real etcd: karma-trio nodes, writes, reads, waiting for a master.

Shared by test_ha.py (one etcd member) and test_ha_etcd_quorum.py (three). ttl 3 s and
loop_wait 1 s, so a failover takes about ttl + loop_wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from karma.tls import client_context
from tests.process.proc import Client, Proc
from tests.tls_certs import Certs

TTL = 3
LOOP_WAIT = 1.0
#: the fence closes this long after a keepalive was sent (karma.ha.rules.margin_s at TTL)
DEADLINE_S = TTL - min(2.0, TTL / 4)
B1 = 20260501


class HasUrl(Protocol):
    """An Etcd member or an EtcdCluster: what --ha-etcd= needs."""

    @property
    def url(self) -> str: ...


def node(tmp_path: Path, etcd: HasUrl, name: str, *flags: str) -> Proc:
    """A node of the group; when `etcd` speaks TLS (its `tls` certificates), so does the node:
    its client port and links with mTLS, and its etcd client with a client certificate."""
    certs: Certs | None = getattr(etcd, "tls", None)
    if certs is not None:
        flags = (
            *certs.server_flags(mtls=True),
            f"--ha-etcd-ca={certs.ca_file}",
            f"--ha-etcd-cert={certs.client_cert}",
            f"--ha-etcd-key={certs.client_key}",
            *flags,
        )
    proc = Proc(
        tmp_path / name,
        f"--ha-etcd={etcd.url}",
        "--ha-cluster=t",
        f"--ha-node={name}",
        f"--ha-ttl={TTL}",
        f"--ha-loop-wait={LOOP_WAIT}",
        "--replication-poll-interval-ms=100",
        "--wal-fsync=false",
        *flags,
    )
    if certs is not None:
        proc.client_tls = client_context(certs.ca_file, certs.client_cert, certs.client_key)
    return proc


def call(proc: Proc, op: str, **fields: object) -> dict[str, object]:
    client = Client(proc.port, proc.client_tls)
    try:
        return client.call(op, **fields)
    finally:
        client.close()


def increment(proc: Proc, key: int = 1) -> dict[str, object]:
    return call(proc, "counter.increment", series="s", key=key, value=1, bucket=B1)


def leader_of(procs: list[Proc], timeout: float) -> Proc:
    """The node that takes a write first, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            try:
                if increment(proc, key=999)["success"]:
                    return proc
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no node took a write within {timeout} s")


def total(proc: Proc, key: int = 1) -> int:
    answer = call(proc, "counter.sum", series="s", key=key, from_day=B1, to_day=B1)
    if answer.get("error_code") == "not_found":
        return 0  # nothing replicated yet
    assert answer["success"], answer
    value = answer["response"]
    assert isinstance(value, int)
    return value


def topology(proc: Proc) -> dict[str, object]:
    answer = call(proc, "cluster.topology")["response"]
    assert isinstance(answer, dict)
    return answer


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def start_group(procs: list[Proc]) -> Proc:
    for proc in procs:
        proc.start()
    return leader_of(procs, TTL + LOOP_WAIT + 5)
