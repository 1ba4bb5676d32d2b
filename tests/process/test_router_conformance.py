"""Every shared conformance case that runs against a network endpoint, replayed through the
router in front of 3 single-node groups, answers as karma 1.0's node did (spec: sharding §6).

The cases, golden answers and normalisation are the shared harness's (../shared/conformance,
as run.sh drives them); the steps are replayed against the router, and a case's `restart` kills
and restarts every group's node behind it. Left out: cases about the process itself (bad
options that stop a start, SIGUSR1, the data directory's files) and the replica-only case,
which need one node, not a cluster. `tree.list` order is free: compared sorted.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import GOLDEN, SHARED
from tests.process.etcd import ETCD, EtcdCluster
from tests.process.router_cluster import Cluster

sys.path.insert(0, str(SHARED / "conformance"))
import cases as shared_cases
import harness

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

#: cases about one process, not about answers: they have no meaning behind a router
NOT_ROUTED = {
    "bad_config_bool": "a bad option stops a node's start",
    "bad_config_port": "a bad option stops a node's start",
    "sigusr1_snapshots": "a signal to one process",
    "snapshot_then_wal_then_kill": "one data directory's files",
    "slave_rejects_writes": "a karma 1.0 replica, not an HA group",
}
#: node ops (spec §4: one node, as today): the first group's node answers them about its own
#: WAL, files and counters, which hold only that group's share of a case's writes; their
#: answers are compared by envelope (success and error code), not by content
NODE_OPS = frozenset(
    {
        "system.stats",
        "system.metrics",
        "snapshot.create",
        "snapshot.create_all",
        "snapshot.list",
        "snapshot.info",
        "snapshot.verify",
        "snapshot.fetch",
        "snapshot.fetch_chunk",
        "replication.entries",
        "replication.status",
    }
)
#: the cases as the harness runs them (cases.py), each with its golden answers
CASES = {case["name"]: case for case in shared_cases.CASES}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def comparable(case: dict[str, Any], answers: list[Any], steps: list[Any]) -> list[Any]:
    """The harness's form, with `tree.list` answers sorted (their order is free) and node ops'
    answers cut to their envelope."""
    out = []
    for answer, step in zip(answers, steps, strict=True):
        shaped = harness.strip_private(answer)
        send = case["steps"][step].get("send") if step is not None else None
        op = send.get("op") if isinstance(send, dict) else None
        if op == "tree.list" and shaped.get("success"):
            shaped = {**shaped, "response": sorted(shaped["response"])}
        elif op in NODE_OPS:
            shaped = {k: shaped.get(k) for k in ("success", "error_code")}
        out.append(shaped)
    return out


def replay(cluster: Cluster, case: dict[str, Any]) -> list[Any]:
    t = harness.today()
    directory = str(cluster.nodes[cluster.groups[0]].directory)
    results: list[Any] = []
    conn = harness.Conn(cluster.router.port)
    try:
        for index, step in enumerate(case["steps"]):
            before = len(results)
            if "send" in step:
                obj = step["send"]
                conn.send((json.dumps(obj, separators=(",", ":")) + "\n").encode())
                op = obj.get("op") if isinstance(obj, dict) else None
                results.append(harness.shape(conn.line(), t, op, directory))
            elif "raw" in step:
                data = step["raw"].encode() if isinstance(step["raw"], str) else step["raw"]
                conn.send(data)
                lines = range(step.get("lines", 1))
                results.extend(harness.shape(conn.line(), t, None, directory) for _ in lines)
            elif "pipeline" in step:
                objs = step["pipeline"]
                conn.send(
                    b"".join((json.dumps(o, separators=(",", ":")) + "\n").encode() for o in objs)
                )
                results.extend(harness.shape(conn.line(), t, o.get("op"), directory) for o in objs)
            elif "restart" in step:
                conn.close()
                cluster.restart_nodes()
                conn = harness.Conn(cluster.router.port)
            elif "sleep" in step:
                time.sleep(step["sleep"])
            elif "reconnect" in step:
                conn.close()
                conn = harness.Conn(cluster.router.port)
            else:
                raise AssertionError(f"step {step} is not replayed through a router")
            for result in results[before:]:
                result["_step"] = index
    finally:
        conn.close()
    return results


def expected(case: dict[str, Any], got: list[Any]) -> list[Any]:
    """The golden answers, with the harness's own rules for steps that carry `expect`."""
    want: list[Any] = json.loads((GOLDEN / f"{case['name']}.json").read_text())["expect"]
    if want and isinstance(want[-1], dict) and "start_error" in want[-1] and len(got) >= len(want):
        want = want[:-1] + [dict(g) for g in got[len(want) - 1 :]]
    if len(want) == len(got):
        for i, g in enumerate(got):
            exp = case["steps"][g["_step"]].get("expect")
            if exp is not None:
                ok = all(g.get(k) == v for k, v in exp.items())
                want[i] = dict(g) if ok else {**g, **exp}
    for w, g in zip(want, got, strict=False):
        if (
            isinstance(w, dict)
            and w.get("response") == "<message>"
            and w.get("error_code") == g.get("error_code")
            and g.get("success") is False
        ):
            g["response"] = "<message>"
    return want


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_case_through_the_router(name: str, etcd: EtcdCluster, tmp_path: Path) -> None:
    if name in NOT_ROUTED:
        pytest.skip(NOT_ROUTED[name])
    case = CASES[name]
    flags = list(case.get("flags", []))
    router_flags = [
        f
        for f in flags
        if f.split("=", 1)[0] in ("--max-request-bytes", "--auth-token", "--read-auth-token")
    ]
    named = {f.split("=", 1)[0] for f in flags}
    base = [f for f in ("--restore=true", "--wal=true") if f.split("=", 1)[0] not in named]
    tag = re.sub(r"[^a-z0-9]", "", name)[:20] + str(time.monotonic_ns() % 100000)
    cluster = Cluster(
        tmp_path,
        etcd,
        f"c{tag}",
        [f"{tag}g1", f"{tag}g2", f"{tag}g3"],
        node_flags=[*base, *flags],
        router_flags=router_flags,
    )
    try:
        cluster.start()
        got = replay(cluster, case)
    finally:
        cluster.close()
    want = expected(case, got)
    assert len(got) == len(want)
    steps = [g.get("_step") for g in got]
    assert comparable(case, got, steps) == comparable(case, want, steps)
