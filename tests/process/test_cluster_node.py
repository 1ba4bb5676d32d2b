"""A sharded cluster's nodes (spec: sharding §2-3): 3 etcd members, 3 groups.

Groups g1 and g2 are single-node HA groups; g3 is a master and a replica that never promotes
(--ha-nofailover), so killing g3's master leaves g3 without a leader for good. The map is made
with `karma-trio cluster create` after the nodes start: they pick it up through their watch.
Checked: each key is served by exactly one group and the others answer `moved` naming the
owner, its leader and the map version, with nothing applied; a guarded map change reaches
every node; a bad map is logged and ignored; `cluster show/check/add-group` and their exit
codes; a group whose master dies answers `not_leader` while the others keep serving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from karma.cluster import shardmap
from karma.cluster.owner import Moved, moved_of
from karma.cluster.slots import slot_of
from karma.ha.etcd_client import EtcdClient
from karma.ha.shardmap_store import MapConflictError, MapRead, ShardMapStore
from tests.process.etcd import ETCD, Etcd, EtcdCluster
from tests.process.ha_group import wait_for
from tests.process.proc import Client, Proc

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

CLUSTER = "c"
GROUPS = ["g1", "g2", "g3"]
B1 = 20260501
TTL = 3
LOOP_WAIT = 0.5


def start_node(tmp_path: Path, etcd_url: str, group: str, name: str, *flags: str) -> Proc:
    proc = Proc(
        tmp_path / name,
        f"--ha-etcd={etcd_url}",
        f"--cluster={CLUSTER}",
        f"--group={group}",
        f"--ha-node={name}",
        f"--ha-ttl={TTL}",
        f"--ha-loop-wait={LOOP_WAIT}",
        "--replication-poll-interval-ms=100",
        "--wal-fsync=false",
        *flags,
    )
    return proc.start()


def call(proc: Proc, op: str, **fields: Any) -> dict[str, Any]:
    client = Client(proc.port)
    try:
        return client.call(op, **fields)
    finally:
        client.close()


def cli(etcd_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma", "cluster", args[0], f"--etcd={etcd_url}",
         f"--cluster={CLUSTER}", *args[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def store_do(etcd_url: str, work: Callable[[ShardMapStore], Any]) -> Any:
    """Run `work(store)` against etcd, as an admin tool would (its own event loop)."""

    async def run() -> Any:
        store = ShardMapStore(EtcdClient(etcd_url.split(","), timeout_s=2.0), CLUSTER)
        try:
            return await work(store)
        finally:
            await store.etcd.aclose()

    return anyio.run(run)


@attrs.define
class Cluster:
    etcd: EtcdCluster
    #: group → its nodes; the first is the master
    groups: dict[str, list[Proc]]

    @property
    def url(self) -> str:
        return self.etcd.url

    def master(self, group: str) -> Proc:
        return self.groups[group][0]

    def version(self) -> int:
        read: MapRead = store_do(self.url, lambda s: s.read())
        return read.mod_revision

    def wait_version(self, version: int, timeout: float = 10) -> None:
        """Until every live master serves map `version` (cluster.topology)."""

        def served() -> bool:
            for nodes in self.groups.values():
                proc = nodes[0]
                if proc.process is None or proc.process.poll() is not None:
                    continue
                shards = call(proc, "cluster.topology")["response"].get("shardmap")
                if shards is None or shards["version"] != version:
                    return False
            return True

        wait_for(served, timeout)


def keys_of_group(shards: shardmap.ShardMap, group: str, count: int, start: int = 0) -> list[int]:
    return [k for k in range(start, start + 20_000) if shards.owner_of(k) == group][:count]


def current_map(url: str) -> shardmap.ShardMap:
    read: MapRead = store_do(url, lambda s: s.read())
    assert read.map is not None
    return read.map


def increment(proc: Proc, key: int, series: str = "s") -> dict[str, Any]:
    return call(proc, "counter.increment", series=series, key=key, value=1, bucket=B1)


def sum_of(proc: Proc, key: int, series: str = "s") -> dict[str, Any]:
    return call(proc, "counter.sum", series=series, key=key)


def keys_held(proc: Proc, series: str) -> set[int]:
    answer = call(proc, "tree.keys", series=series, limit=10_000)
    if answer["error_code"] == "not_found":
        return set()
    assert answer["success"], answer
    return {row["key"] for row in answer["response"]["keys"]}


def wait_leaders(cluster: Cluster, groups: list[str], timeout: float = 20) -> None:
    def known() -> bool:
        rows = json.loads(cli(cluster.url, "show", "--json").stdout)["groups"]
        return all(row["leader"] for row in rows if row["group"] in groups)

    wait_for(known, timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    etcd = EtcdCluster(tmp / "etcd").start()
    groups: dict[str, list[Proc]] = {}
    try:
        for group in GROUPS:
            groups[group] = [start_node(tmp, etcd.url, group, f"{group}a")]
        groups["g3"].append(start_node(tmp, etcd.url, "g3", "g3b", "--ha-nofailover=true"))
        made = Cluster(etcd, groups)
        wait_leaders(made, GROUPS)
        # before any map: keyed requests are refused (moved, no owner), others served
        before = increment(made.master("g1"), 1)
        assert before["error_code"] == "moved", before
        assert moved_of(before) == Moved(slot_of(1), None, None, 0)
        assert call(made.master("g1"), "tree.list")["success"]
        created = cli(etcd.url, "create", *GROUPS)
        assert created.returncode == 0, created.stderr
        made.wait_version(made.version())
        yield made
    finally:
        for nodes in groups.values():
            for proc in nodes:
                proc.close()
        etcd.stop()


def test_every_key_is_served_by_exactly_one_group(cluster: Cluster) -> None:
    shards = current_map(cluster.url)
    version = shards.version
    for key in range(200):
        owner = shards.owner_of(key)
        for group in GROUPS:
            answer = increment(cluster.master(group), key, series="every")
            if group == owner:
                assert answer["success"], answer
                continue
            assert answer["error_code"] == "moved", answer
            leader = f"127.0.0.1:{cluster.master(owner).port}"
            assert moved_of(answer) == Moved(slot_of(key), owner, leader, version)
    for group in GROUPS:
        held = keys_held(cluster.master(group), "every")
        assert held == {k for k in range(200) if shards.owner_of(k) == group}
        for key in held:
            assert sum_of(cluster.master(group), key, series="every")["response"] == 1


def test_a_request_with_one_foreign_key_is_refused_whole(cluster: Cluster) -> None:
    shards = current_map(cluster.url)
    mine = keys_of_group(shards, "g1", 3)
    theirs = keys_of_group(shards, "g2", 1)[0]
    g1 = cluster.master("g1")
    items = [[k, B1, 5] for k in [*mine, theirs]]
    answer = call(g1, "series.batch_add", series="whole", items=items)
    assert answer["error_code"] == "moved", answer
    assert answer["moved"]["group"] == "g2"
    assert answer["moved"]["slot"] == slot_of(theirs)
    assert keys_held(g1, "whole") == set()  # nothing applied
    charge = {"series": "lim", "max": 10, "window": {"calendar": "day"}}
    answer = call(
        g1, "limit.consume", items=[{**charge, "key": mine[0]}, {**charge, "key": theirs}]
    )
    assert answer["error_code"] == "moved", answer
    assert keys_held(g1, "lim") == set()
    assert call(g1, "series.batch_add", series="whole", items=items[:-1])["success"]
    assert keys_held(g1, "whole") == set(mine)


def test_reservation_ops_are_served_by_id(cluster: Cluster) -> None:
    shards = current_map(cluster.url)
    key = keys_of_group(shards, "g2", 1)[0]
    g1, g2 = cluster.master("g1"), cluster.master("g2")
    charge = {"series": "res", "max": 10, "window": {"calendar": "day"}, "value": 2}
    assert call(g2, "limit.reserve", id="r-27", key=key, **charge)["success"]
    unknown = call(g1, "limit.commit", id="r-27")
    assert unknown["error_code"] == "not_found", unknown  # the id lives on g2
    assert call(g2, "limit.commit", id="r-27")["success"]


def test_topology_names_the_map_and_every_group_with_its_leader(cluster: Cluster) -> None:
    shards = current_map(cluster.url)
    answer = call(cluster.master("g2"), "cluster.topology")["response"]
    assert answer["cluster"] == CLUSTER
    assert answer["group"] == "g2"
    assert answer["ha"] is True
    assert answer["shardmap"] == {
        "version": shards.version,
        "ranges": [list(r) for r in shards.ranges],
    }
    leaders = {row["group"]: row["leader"] for row in answer["groups"]}
    assert leaders == {g: f"127.0.0.1:{cluster.master(g).port}" for g in GROUPS} | {
        g: leaders[g] for g in leaders if g not in GROUPS
    }
    assert [row["slots"] for row in answer["groups"] if row["group"] in GROUPS] == [
        5461,
        5461,
        5462,
    ]


def test_cluster_show_check_create_and_add_group(cluster: Cluster) -> None:
    version = cluster.version()
    shown = cli(cluster.url, "show")
    assert shown.returncode == 0, shown.stderr
    assert f"cluster {CLUSTER}, map version {version}" in shown.stdout
    for group in GROUPS:
        assert f"127.0.0.1:{cluster.master(group).port}" in shown.stdout
    as_json = json.loads(cli(cluster.url, "show", "--json").stdout)
    assert as_json["version"] == version
    assert [row["group"] for row in as_json["groups"]][:3] == GROUPS
    checked = cli(cluster.url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok:")
    again = cli(cluster.url, "create", "g1", "g2")
    assert again.returncode == 1
    assert "already has a map" in again.stderr
    assert cluster.version() == version  # nothing written
    added = cli(cluster.url, "add-group", "g9")
    assert added.returncode == 0, added.stderr
    assert cli(cluster.url, "add-group", "g9").returncode == 1
    assert cli(cluster.url, "add-group", "g1").returncode == 1  # owns slots already
    rows = json.loads(cli(cluster.url, "show", "--json").stdout)["groups"]
    assert {"group": "g9", "slots": 0, "ranges": [], "leader": None, "recorded": True} in rows
    assert cli(cluster.url, "check").returncode == 0  # a group with no slots needs no leader yet
    # and the nodes list it in their topology at their next round
    wait_for(
        lambda: (
            "g9"
            in [
                row["group"]
                for row in call(cluster.master("g1"), "cluster.topology")["response"]["groups"]
            ]
        ),
        5,
    )


def test_a_guarded_change_reaches_every_node_and_a_stale_one_loses(cluster: Cluster) -> None:
    before = current_map(cluster.url)
    key = keys_of_group(before, "g1", 1, start=5000)[0]
    slot = slot_of(key)
    g1, g2 = cluster.master("g1"), cluster.master("g2")
    assert increment(g1, key, series="watch")["success"]

    def give_slot_to_g2(read: MapRead) -> shardmap.ShardMap:
        assert read.map is not None
        ranges = [
            piece
            for first, last, group in read.map.ranges
            for piece in (
                [(first, slot - 1, group), (slot, slot, "g2"), (slot + 1, last, group)]
                if first <= slot <= last
                else [(first, last, group)]
            )
            if piece[0] <= piece[1]
        ]
        return shardmap.ShardMap(shardmap.check_ranges(ranges))

    changed: shardmap.ShardMap = store_do(cluster.url, lambda s: s.change(give_slot_to_g2))
    assert changed.version > before.version
    cluster.wait_version(changed.version, timeout=5)
    answer = increment(g1, key, series="watch")
    assert answer["error_code"] == "moved", answer
    assert moved_of(answer) == Moved(slot, "g2", f"127.0.0.1:{g2.port}", changed.version)
    assert increment(g2, key, series="watch")["success"]
    # an admin that read the old version loses: nothing written
    with pytest.raises(MapConflictError):
        store_do(cluster.url, lambda s: s.write_if(before, mod_revision=before.version))
    assert cluster.version() == changed.version
    # put the even split back, guarded by the version just read
    restored: shardmap.ShardMap = store_do(
        cluster.url, lambda s: s.write_if(before, mod_revision=changed.version)
    )
    cluster.wait_version(restored.version, timeout=5)
    assert increment(g1, key, series="watch")["success"]


def test_a_bad_map_is_logged_and_ignored(cluster: Cluster) -> None:
    good = current_map(cluster.url)
    member: Etcd = cluster.etcd.members[0]
    import base64

    bad = base64.b64encode(b'{"ranges": [[0, 100, "g1"]]}').decode()
    key = base64.b64encode(shardmap.map_key(CLUSTER).encode()).decode()
    member.post("/v3/kv/put", {"key": key, "value": bad})
    g1 = cluster.master("g1")
    wait_for(lambda: "cluster.bad_map" in g1.stderr(), 5)
    line = next(json.loads(text) for text in g1.stderr().splitlines() if "cluster.bad_map" in text)
    assert "without a group" in line["problem"]
    assert line["kept_version"] == good.version
    served = call(g1, "cluster.topology")["response"]["shardmap"]
    assert served["version"] == good.version  # the last good map stays
    mine = keys_of_group(good, "g1", 1, start=7000)[0]
    assert increment(g1, mine, series="bad")["success"]
    theirs = keys_of_group(good, "g3", 1, start=7000)[0]
    assert increment(g1, theirs, series="bad")["error_code"] == "moved"
    shown = cli(cluster.url, "check")
    assert shown.returncode == 1
    assert "is not valid" in shown.stdout
    stored = cluster.version()
    restored: shardmap.ShardMap = store_do(
        cluster.url, lambda s: s.write_if(good, mod_revision=stored)
    )
    cluster.wait_version(restored.version, timeout=5)


def test_zz_a_group_without_a_leader_answers_not_leader_while_others_serve(
    cluster: Cluster,
) -> None:
    """Last in the module: g3's master stays dead."""
    shards = current_map(cluster.url)
    g3_key = keys_of_group(shards, "g3", 1, start=9000)[0]
    g1_key = keys_of_group(shards, "g1", 1, start=9000)[0]
    g3_master, g3_replica = cluster.groups["g3"]
    assert increment(g3_master, g3_key, series="down")["success"]
    g3_master.kill()
    wait_for(lambda: increment(g3_replica, g3_key, series="down")["error_code"] == "not_leader", 10)

    def no_leader_seen() -> bool:
        answer = increment(cluster.master("g1"), g3_key, series="down")
        return moved_of(answer) == Moved(slot_of(g3_key), "g3", None, shards.version)

    wait_for(no_leader_seen, TTL + 5)  # the leader key expires with the dead master's lease
    answer = increment(g3_replica, g3_key, series="down")
    assert answer["error_code"] == "not_leader", answer
    assert increment(cluster.master("g1"), g1_key, series="down")["success"]
    other = keys_of_group(shards, "g2", 1, start=9000)[0]
    assert increment(cluster.master("g2"), other, series="down")["success"]
    checked = cli(cluster.url, "check")
    assert checked.returncode == 1
    assert "problem: group g3 (5462 slots) has no leader" in checked.stdout


def test_cluster_without_etcd_is_refused_at_startup(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "karma", "--cluster=c", f"--directory={tmp_path}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--cluster needs --ha-etcd" in done.stderr
