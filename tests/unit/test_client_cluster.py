"""Cluster mode's pure half: the URL forms, a topology answer's map and leaders
(karma.cluster.directory), and karma.cluster.drive run against in-process engine groups
(tests/unit/test_cluster_fanout.py's EngineNode), including a group that checks ownership by a
newer map than the caller's and answers `moved`."""

from __future__ import annotations

from typing import Any

import pytest

from karma.client import calls
from karma.client.cluster import ClusterUrl, parse_any_url, plan_call
from karma.cluster import drive
from karma.cluster.directory import etcd_urls, topology_view
from karma.cluster.reply import Reply
from karma.cluster.shardmap import ShardMap, even_split
from tests.unit.test_cluster_fanout import EngineNode

GROUPS = ["g1", "g2", "g3"]


def test_cluster_urls_name_etcd_or_seeds() -> None:
    found = parse_any_url("karma+etcd://tok@e1:2379,e2:2379/prod")
    assert found == {
        "cluster": ClusterUrl(etcd=("http://e1:2379", "http://e2:2379"), cluster="prod"),
        "token": "tok",
    }
    found = parse_any_url("karma+seeds://h1:7001,h2")
    assert found["cluster"] == ClusterUrl(seeds=(("h1", 7001), ("h2", 8080)))
    assert parse_any_url("karma://h:1")["port"] == 1
    with pytest.raises(ValueError, match="names one cluster"):
        parse_any_url("karma+etcd://e1:2379")
    assert list(etcd_urls("a:1, http://b:2/")) == ["http://a:1", "http://b:2"]


def test_a_topology_answer_gives_the_map_and_leaders_in_either_shape() -> None:
    wire = {"version": 7, "ranges": [[0, 8191, "g1"], [8192, 16383, "g2"]]}
    node = topology_view(
        {
            "shardmap": wire,
            "groups": [{"group": "g1", "leader": "h:1"}, {"group": "g2", "leader": None}],
        }
    )
    router = topology_view({"shardmap": wire, "groups": {"g1": {"addr": "h:1"}, "g2": None}})
    for view in (node, router):
        assert view is not None
        assert view.shardmap.version == 7
        assert dict(view.leaders) == {"g1": "h:1", "g2": None}
    assert topology_view({"role": "master"}) is None
    assert topology_view({"shardmap": {"ranges": [[0, 5, "g1"]]}}) is None  # not covering


class Group:
    """An engine group that, like a node with the owner check, answers `moved` for a request
    naming a key its group does not own under `truth`, applying nothing."""

    def __init__(self, name: str, truth: list[ShardMap]) -> None:
        self.name, self.truth, self.node = name, truth, EngineNode()
        self.requests = 0

    def call(self, obj: dict[str, Any]) -> Reply:
        self.requests += 1
        keys = [obj["key"]] if isinstance(obj.get("key"), int) else []
        keys += [k for k in obj.get("keys", []) if isinstance(k, int)]
        keys += [i[0] for i in obj.get("items", []) if isinstance(i, list)]
        keys += [i["key"] for i in obj.get("items", []) if isinstance(i, dict) and "key" in i]
        if any(self.truth[0].owner_of(key) != self.name for key in keys):
            return Reply.error("moved", f"Moved: not owned by group {self.name}")
        return self.node.call(obj)


def run(call: Any, shardmap: ShardMap, groups: dict[str, Group], truth: list[ShardMap]) -> Reply:
    planned = plan_call(call, None)
    assert planned.request is not None
    steps = drive.drive(planned.request, planned.obj, shardmap, nonce="n")
    outcome: drive.Outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value
        if isinstance(step, drive.Refresh):
            outcome = truth[0]
        else:
            outcome = [groups[g].call(obj) for g, obj in step.parts]


def world() -> tuple[list[ShardMap], dict[str, Group]]:
    truth = [even_split(GROUPS, version=1)]
    return truth, {g: Group(g, truth) for g in GROUPS}


def keys_of_each(shardmap: ShardMap) -> list[int]:
    found: dict[str, int] = {}
    key = 1
    while len(found) < len(GROUPS):
        found.setdefault(shardmap.owner_of(key), key)
        key += 1
    return [found[g] for g in GROUPS]


def test_a_split_write_and_its_merged_read_go_by_the_map() -> None:
    truth, groups = world()
    keys = keys_of_each(truth[0])
    items = [(key, 20261208, 2) for key in keys]
    done = run(calls.batch_add("s", items, idempotency_key="k"), truth[0], groups, truth)
    assert done.success
    # (replays of the parts' derived keys need a node's idempotency table: the process test
    # test_a_split_keyed_write_resent_counts_once)
    sums = run(calls.batch_sum("s", keys), truth[0], groups, truth)
    assert sums.response == [{"key": key, "value": 2} for key in keys]


def test_moved_reads_the_map_again_once_and_plans_again() -> None:
    truth, groups = world()
    stale = truth[0]
    # the groups now own each other's slots: g1's old keys belong to g2, and so on
    rotated = [(a, b, GROUPS[(GROUPS.index(g) + 1) % 3]) for a, b, g in stale.ranges]
    truth[0] = ShardMap(tuple(rotated), version=2)
    key = keys_of_each(stale)[0]
    answer = run(calls.increment("s", key, 5), stale, groups, truth)
    assert answer.success
    assert (
        groups["g2"].node.call({"v": 2, "op": "counter.sum", "series": "s", "key": key}).response
        == 5
    )


def test_a_second_moved_is_the_answer() -> None:
    truth, groups = world()
    stale = truth[0]

    class Always(Group):
        def call(self, obj: dict[str, Any]) -> Reply:
            return Reply.error("moved", "Moved: always")

    liars = {g: Always(g, truth) for g in GROUPS}
    answer = run(calls.increment("s", 1, 1), stale, liars, truth)
    assert answer.error_code == "moved"
    assert not groups["g1"].requests
