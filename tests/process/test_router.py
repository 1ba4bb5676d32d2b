"""The router against a real cluster: 3 etcd members, 3 single-node groups, a map in etcd.

- a group whose master is killed: its keys answer `not_leader` (retriable) while the other
  groups' keys are served, and a fan-out read fails naming the missing group, never a partial
  sum; once the node is back the same reads answer whole;
- a `limit.consume` whose items span groups is all or nothing: allowed, every group charged;
  denied, no group charged (the holds of the groups that fitted are voided), and the denial
  names the denied items as one node does;
- `/metrics` counts requests by op and group, the fan-out width and errors by code;
  `/healthz` names a group without a leader.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from karma.cluster.shardmap import ShardMap
from tests.process.etcd import ETCD, EtcdCluster
from tests.process.router_cluster import B1, Client, Cluster, call_router

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

GROUPS = ["g1", "g2", "g3"]
WINDOW = {"days": 1}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    etcd = EtcdCluster(tmp_path / "etcd").start()
    running = Cluster(tmp_path, etcd, "rt", GROUPS)
    try:
        running.start()
        yield running
    finally:
        running.close()
        etcd.stop()


def key_in(shardmap: ShardMap, group: str, skip: int = 0) -> int:
    """A subject key that group `group` owns (the `skip`-th one)."""
    found = 0
    for key in range(100_000):
        if shardmap.owner_of(key) == group:
            if found == skip:
                return key
            found += 1
    raise AssertionError(group)


def metrics(cluster: Cluster, path: str = "/metrics") -> tuple[int, str]:
    url = f"http://127.0.0.1:{cluster.router.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_group_without_its_master_answers_not_leader_while_the_others_serve(
    cluster: Cluster,
) -> None:
    keys = {g: key_in(cluster.map, g) for g in GROUPS}
    for group, key in keys.items():
        answer = call_router(cluster, "counter.increment", series="s", key=key, value=2, bucket=B1)
        assert answer["success"], (group, answer)
    info = call_router(cluster, "tree.info", tree="s")
    assert info["response"]["key_count"] == 3  # type: ignore[index]

    cluster.nodes["g2"].kill()
    # g2's keys: not_leader, retriable, naming the group; the others' keys are served
    lost = call_router(cluster, "counter.sum", series="s", key=keys["g2"])
    assert lost["error_code"] == "not_leader"
    assert "g2" in str(lost["response"])
    for group in ("g1", "g3"):
        answer = call_router(cluster, "counter.increment", series="s", key=keys[group], value=1)
        assert answer["success"], answer
        assert call_router(cluster, "counter.sum", series="s", key=keys[group])["success"]
    # a fan-out read fails naming the missing group, never a partial answer
    for op in ("tree.info", "tree.summary", "tree.keys", "tree.top"):
        answer = call_router(cluster, op, tree="s")
        assert not answer["success"], (op, answer)
        assert answer["error_code"] == "not_leader"
        assert "g2" in str(answer["response"])
    batch = call_router(cluster, "counter.batch_sum", series="s", keys=list(keys.values()))
    assert batch["error_code"] == "not_leader"
    assert "g2" in str(batch["response"])
    status, text = metrics(cluster, "/healthz")
    assert status == 200
    assert "no leader for g2" in text or text.strip() == "ok"  # the poll may not have seen it yet

    cluster.nodes["g2"].start(same_port=True)
    cluster.wait_leader("g2", timeout=20)
    deadline = time.monotonic() + 15
    while True:
        info = call_router(cluster, "tree.info", tree="s")
        if info["success"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["success"], info
    assert info["response"]["key_count"] == 3  # type: ignore[index]
    assert info["response"]["total"] == 2 * 3 + 2  # type: ignore[index]


def test_a_cross_group_consume_is_all_or_nothing(cluster: Cluster) -> None:
    k1, k2, k3 = (key_in(cluster.map, g) for g in GROUPS)
    items = [
        {"series": "calls", "key": k1, "max": 2, "window": WINDOW},
        {"series": "calls", "key": k2, "max": 5, "window": WINDOW},
        {"series": "tokens", "key": k3, "value": 10, "max": 10, "window": WINDOW},
    ]
    first = call_router(cluster, "limit.consume", items=items)
    assert first["success"], first
    assert first["response"]["allowed"] is True  # type: ignore[index]
    assert [i["used"] for i in first["response"]["items"]] == [1, 1, 10]  # type: ignore[index]

    # k3's limit is full: nothing is charged anywhere, and the denial names item 2 only
    denied = call_router(cluster, "limit.consume", items=items)
    response = denied["response"]
    assert response["allowed"] is False  # type: ignore[index]
    assert response["denied"] == [2]  # type: ignore[index]
    assert [i["allowed"] for i in response["items"]] == [True, True, False]  # type: ignore[index]
    assert [i["used"] for i in response["items"]] == [1, 1, 10]  # type: ignore[index]
    assert [i["held"] for i in response["items"]] == [0, 0, 0]  # type: ignore[index]
    for series, key, used in (("calls", k1, 1), ("calls", k2, 1), ("tokens", k3, 10)):
        assert call_router(cluster, "counter.sum", series=series, key=key)["response"] == used
    # no hold is left behind on the groups that fitted
    check = call_router(cluster, "limit.check", items=items[:2])
    assert [i["held"] for i in check["response"]["items"]] == [0, 0]  # type: ignore[index]

    # keyed: a retry replays, it never charges twice
    keyed = call_router(cluster, "limit.consume", items=items[:2], idempotency_key="c-1")
    again = call_router(cluster, "limit.consume", items=items[:2], idempotency_key="c-1")
    assert keyed["idempotent"] is False
    assert again["idempotent"] is True
    assert again["response"] == keyed["response"]
    assert call_router(cluster, "counter.sum", series="calls", key=k1)["response"] == 2


def test_metrics_count_requests_by_op_and_group_and_the_fan_out_width(cluster: Cluster) -> None:
    client = Client(cluster.router.port)
    try:
        client.call("counter.increment", series="s", key=1, value=1)
        client.call("tree.info", tree="s")
        client.call("counter.sum", series="s", key="x")  # a node's validation error
    finally:
        client.close()
    status, text = metrics(cluster)
    assert status == 200
    assert 'karma_router_requests_total{group="g' in text
    assert 'op="tree.info"' in text
    assert "karma_router_fanout_width_bucket" in text
    assert 'karma_router_errors_total{code="validation_error"} 1.0' in text
    assert "karma_router_moved_refreshes_total 0.0" in text
    assert metrics(cluster, "/healthz") == (200, "ok\n")
