"""The Python client in cluster mode (docs/client.md, "Cluster mode") against real processes:
one etcd member, 3 single-node groups and the map in etcd (tests/process/router_cluster.py,
which also starts the router: a seed for `karma+seeds://`), and one plain node fed the same
calls to compare with.

Keys are chosen so that every multi-key call spans all three groups.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from karma import client as k
from karma.cluster.shardmap import ShardMap, even_split, map_key
from tests.process.etcd import ETCD, EtcdCluster
from tests.process.proc import Proc
from tests.process.router_cluster import Cluster, call

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(ETCD is None, reason="no etcd binary (Debian: apt-get install etcd-server)"),
]

GROUPS = ["g1", "g2", "g3"]
D1 = 20260501
D2 = 20260502
DAY = {"calendar": "day"}


def keys_by_group(count: int) -> dict[str, list[int]]:
    """`count` keys of each group under the even split of GROUPS."""
    shardmap = even_split(GROUPS)
    found: dict[str, list[int]] = {g: [] for g in GROUPS}
    key = 1
    while any(len(v) < count for v in found.values()):
        owned = found[shardmap.owner_of(key)]
        if len(owned) < count:
            owned.append(key)
        key += 1
    return found


KEYS = keys_by_group(6)
#: the keys of one call in an order that interleaves the groups
MIXED = [KEYS[g][i] for i in range(6) for g in GROUPS]


class World:
    def __init__(self, root: Path) -> None:
        self.etcd = EtcdCluster(root / "etcd", size=1).start()
        self.cluster = Cluster(root / "cluster", self.etcd, "c1", GROUPS).start()
        (root / "single").mkdir()
        self.single = Proc(root / "single", "--wal-fsync=false", "--log=false").start()

    @property
    def url(self) -> str:
        return f"karma+etcd://{self.etcd.url.removeprefix('http://')}/c1"

    def close(self) -> None:
        self.cluster.close()
        self.single.close()
        self.etcd.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = World(tmp_path_factory.mktemp("cluster"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def both(world: World) -> Iterator[tuple[k.Client, k.Client]]:
    with (
        k.Client(world.url, timeout=5) as cluster,
        k.Client(port=world.single.port, timeout=5) as single,
    ):
        yield cluster, single


def outcome(do: Callable[[k.Client], Any], client: k.Client) -> Any:
    try:
        return do(client)
    except k.KarmaError as exc:
        return (type(exc).__name__, exc.message)


SCRIPT: list[Callable[[k.Client], Any]] = [
    lambda c: c.ping(),
    lambda c: c.tree_create("v"),
    lambda c: c.increment("v", MIXED[0], 5, bucket=D1),
    lambda c: c.decrement("v", MIXED[1], 2, bucket=D1),
    lambda c: c.batch_add("v", [(key, D1, i + 1) for i, key in enumerate(MIXED)]),
    lambda c: c.batch_set("v", [(key, D2, 7) for key in MIXED[:9]]),
    lambda c: c.sum("v", MIXED[0]),
    lambda c: c.sum("v", MIXED[4], since=D1, until=D1),
    lambda c: c.series("v", MIXED[2], D1, D2),
    lambda c: c.batch_sum("v", MIXED),
    lambda c: c.batch_sum("v", [*MIXED[:4], 999_999]),
    lambda c: c.usages("v", MIXED[3:12]),
    lambda c: c.multi_sum([("v", key) for key in MIXED[:7]] + [("w", MIXED[8])]),
    lambda c: c.tree_info("v"),
    lambda c: c.tree_keys("v", limit=5),
    lambda c: c.tree_keys("v", limit=5, cursor=MIXED[5]),
    lambda c: c.tree_keys("v", limit=100, cursor=c.tree_keys("v", limit=7).next_cursor),
    lambda c: c.tree_top("v", 4),
    lambda c: c.tree_summary("v"),
    lambda c: c.tree_series("v", D1, D2),
    lambda c: c.reset("v", MIXED[0]),
    lambda c: c.batch_reset("v", MIXED[1:4]),
    lambda c: c.delete_range("v", D2, D2, key=MIXED[5]),
    lambda c: c.batch_delete_range("v", MIXED[6:10], D1, D1),
    lambda c: c.batch_sum("v", MIXED),
    lambda c: c.delete_range("v", D2, D2),
    lambda c: c.batch_sum("v", MIXED),
    lambda c: c.reset("v"),
    lambda c: c.tree_info("v"),
    lambda c: c.sum("nosuch", MIXED[0]),
    lambda c: c.batch_sum("nosuch", MIXED),
    lambda c: c.usage("nosuch", MIXED[0]),
    lambda c: c.request("counter.sum", series="v"),
    lambda c: c.request("counter.increment", series="v", key=-1, value=1),
    lambda c: c.request("no.such.op"),
    lambda c: c.ingest_begin("s1", "add"),
    lambda c: c.ingest_chunk("s1", "v", 1, [(key, D1, 3) for key in MIXED[:6]]),
    lambda c: c.ingest_commit("s1"),
    lambda c: c.batch_sum("v", MIXED[:6]),
    lambda c: c.ingest_begin("s2", "add"),
    # an add stream refuses a zero value: the whole chunk, in no group applied
    lambda c: c.ingest_chunk(
        "s2", "v", 1, [(key, D1, 1) for key in MIXED[:5]] + [(MIXED[5], D1, 0)]
    ),
    lambda c: c.ingest_abort("s2"),
    lambda c: c.batch_sum("v", MIXED[:6]),
    lambda c: c.consume("lim", MIXED[0], 2, max=3, window=DAY, idempotency_key="one"),
    lambda c: c.consume("lim", MIXED[0], 2, max=3, window=DAY, idempotency_key="two"),
    lambda c: c.check("lim", MIXED[0], 1, max=3, window=DAY),
    lambda c: c.tree_drop("v"),
    lambda c: sorted(c.tree_list()),
]


def stable(value: Any) -> Any:
    """Answers without what differs between two runs (times of day, replay flags aside)."""
    if isinstance(value, k.LimitAnswer):
        return (value.allowed, [(i.used, i.held, i.remaining) for i in value.items], value.denied)
    return value


def test_every_verb_answers_as_one_node(both: tuple[k.Client, k.Client]) -> None:
    cluster, single = both
    for index, step in enumerate(SCRIPT):
        got = stable(outcome(step, cluster))
        want = stable(outcome(step, single))
        assert got == want, f"step {index}"


def test_fan_out_reads_merge_every_group(both: tuple[k.Client, k.Client]) -> None:
    cluster, _ = both
    cluster.batch_add("fan", [(key, D1, key) for key in MIXED])
    assert cluster.batch_sum("fan", MIXED) == {key: key for key in MIXED}
    assert cluster.tree_info("fan").key_count == len(MIXED)
    pages: list[int] = []
    cursor = None
    while True:
        page = cluster.tree_keys("fan", limit=4, cursor=cursor)
        pages.extend(item.key for item in page.keys)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == sorted(MIXED)
    top = cluster.tree_top("fan", 3)
    assert [item.key for item in top] == sorted(MIXED, reverse=True)[:3]
    cluster.tree_drop("fan")


def test_a_split_keyed_write_resent_counts_once(both: tuple[k.Client, k.Client]) -> None:
    cluster, _ = both
    items = [(key, D1, 1) for key in MIXED]
    first = cluster.batch_add("once", items, idempotency_key="split-1")
    again = cluster.batch_add("once", items, idempotency_key="split-1")
    assert first == again
    assert cluster.batch_sum("once", MIXED) == dict.fromkeys(MIXED, 1)
    # the same through retries: a keyed call is resent whole after a lost answer
    with k.Client(str_url(cluster), timeout=5, retries=3) as retrying:
        for _ in range(3):
            retrying.batch_add("once", items, idempotency_key="split-2")
    assert cluster.batch_sum("once", MIXED) == dict.fromkeys(MIXED, 2)
    cluster.tree_drop("once")


def str_url(client: k.Client) -> str:
    view = client._cluster
    assert view is not None
    return f"karma+etcd://{','.join(u.removeprefix('http://') for u in view.source.etcd)}/c1"


def limit_items(keys: list[int], value: int, maximum: int) -> list[dict[str, Any]]:
    return [
        {"series": "quota", "key": key, "value": value, "max": maximum, "window": DAY}
        for key in keys
    ]


def test_a_cross_group_consume_is_all_or_nothing(both: tuple[k.Client, k.Client]) -> None:
    cluster, single = both
    keys = [KEYS["g1"][0], KEYS["g2"][0], KEYS["g3"][0]]
    for client in (cluster, single):
        client.consume("quota", keys[2], 4, max=5, window=DAY)  # g3 nearly full
    answers = []
    for client in (cluster, single):
        allowed = client.consume(items=limit_items(keys, 1, 5))
        denied = client.consume(items=limit_items(keys, 2, 5))
        used = client.check(items=limit_items(keys, 0, 5))
        answers.append([stable(allowed), stable(denied), stable(used)])
    assert answers[0] == answers[1]
    allowed, denied, used = answers[0]
    assert allowed[0] is True
    assert denied[0] is False
    assert denied[2] == [2]  # the caller's position of g3's item
    assert [item[0] for item in used[1]] == [1, 1, 5]  # nothing of the denial was charged


def test_a_group_without_its_node_fails_its_keys_while_the_others_serve(world: World) -> None:
    victim = world.cluster.nodes["g2"]
    with k.Client(world.url, timeout=2, connect_timeout=0.5) as cluster:
        cluster.batch_add("down", [(key, D1, 1) for key in MIXED])
        victim.kill()
        try:
            assert cluster.sum("down", KEYS["g1"][0]) == 1
            assert cluster.sum("down", KEYS["g3"][0]) == 1
            with pytest.raises((k.NotLeader, k.ConnectionFailed), match="g2"):
                cluster.sum("down", KEYS["g2"][0])
            with pytest.raises((k.NotLeader, k.ConnectionFailed), match="g2"):
                cluster.batch_sum("down", MIXED)  # never a partial sum
            with pytest.raises((k.NotLeader, k.ConnectionFailed), match="g2"):
                cluster.tree_info("down")
            cluster.increment("down", KEYS["g3"][1], 1, bucket=D1)
            assert cluster.sum("down", KEYS["g3"][1]) == 2
        finally:
            victim.start(same_port=True)
            world.cluster.wait_leader("g2", timeout=20)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert cluster.sum("down", KEYS["g2"][0]) == 1
                break
            except k.KarmaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        cluster.tree_drop("down")


def test_a_seed_list_reads_the_map_from_cluster_topology(world: World) -> None:
    world.cluster.wait_router()  # it knows every leader (again, after a test killed one)
    url = f"karma+seeds://127.0.0.1:1,127.0.0.1:{world.cluster.router.port}"
    with k.Client(url, timeout=5) as cluster, k.Client(world.url, timeout=5) as direct:
        view = cluster.cluster_view()
        assert view is not None
        assert view.shardmap.groups() == GROUPS
        assert all(view.leaders[g] for g in GROUPS)
        cluster.batch_add("seeded", [(key, D1, 2) for key in MIXED])
        assert direct.batch_sum("seeded", MIXED) == dict.fromkeys(MIXED, 2)
        cluster.tree_drop("seeded")


def test_the_pool_serves_threads_and_pipelines_route(world: World) -> None:
    with k.Client(world.url, timeout=5) as cluster:

        def work(key: int) -> None:
            for _ in range(20):
                cluster.increment("threads", key, 1, bucket=D1)

        threads = [threading.Thread(target=work, args=(key,)) for key in MIXED[:8]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cluster.batch_sum("threads", MIXED[:8]) == dict.fromkeys(MIXED[:8], 20)
        with cluster.pipeline() as pipe:
            pipe.increment("threads", MIXED[0], 1, bucket=D1).batch_sum("threads", MIXED[:3])
            pipe.sum("nosuch", 1)
            results = pipe.execute()
        assert isinstance(results[0], int)
        assert results[1] == {MIXED[0]: 21, MIXED[1]: 20, MIXED[2]: 20}
        assert isinstance(results[2], k.NotFound)
        cluster.tree_drop("threads")


async def async_script(url: str) -> dict[int, int]:
    once = f"a1-{time.monotonic()}"
    async with k.AsyncClient(url, timeout=5) as cluster:
        await cluster.batch_add("async", [(key, D1, 3) for key in MIXED])
        await cluster.batch_add("async", [(key, D1, 3) for key in MIXED], idempotency_key=once)
        await cluster.batch_add("async", [(key, D1, 3) for key in MIXED], idempotency_key=once)
        keys = [KEYS["g1"][1], KEYS["g2"][1], KEYS["g3"][1]]
        denied = await cluster.consume(items=limit_items(keys, 9, 5))
        assert not denied.allowed
        assert denied.denied == [0, 1, 2]
        async with cluster.pipeline() as pipe:
            pipe.sum("async", MIXED[0]).tree_info("async")
            results = await pipe.execute()
        assert results[0] == 6
        sums = await cluster.batch_sum("async", MIXED)
        await cluster.tree_drop("async")
        return sums


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_async_client_routes_under_both_backends(world: World, backend: str) -> None:
    if backend == "trio":
        sums = trio.run(async_script, world.url)
    else:
        sums = asyncio.run(async_script(world.url))
    assert sums == dict.fromkeys(MIXED, 6)


def cli(world: World, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma", "cli", f"--url={world.url}", *words],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_the_cli_takes_a_cluster_url(world: World) -> None:
    done = cli(world, "increment", "cli", str(KEYS["g3"][0]), "4")
    assert done.returncode == 0, done.stderr
    keys = json.dumps(MIXED[:6])
    done = cli(world, "--json", "call", "counter.batch_sum", "series=cli", f"keys={keys}")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["success"] is True
    assert answer["response"] == [
        {"key": key, "value": 4 if key == KEYS["g3"][0] else 0} for key in MIXED[:6]
    ]
    with k.Client(world.url, timeout=5) as cluster:
        assert cluster.sum("cli", KEYS["g3"][0]) == 4
        cluster.tree_drop("cli")


def swap_map(etcd: EtcdCluster, shardmap: ShardMap) -> None:
    """Give g1's and g2's slots to each other, with a guarded transaction on the map."""
    key = base64.b64encode(map_key("c1").encode()).decode()
    found = etcd.members[0].post("/v3/kv/range", {"key": key})
    revision = found["kvs"][0]["mod_revision"]
    ranges = [[a, b, {"g1": "g2", "g2": "g1"}.get(g, g)] for a, b, g in shardmap.ranges]
    txn: dict[str, object] = {
        "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
        "success": [
            {
                "request_put": {
                    "key": key,
                    "value": base64.b64encode(json.dumps({"ranges": ranges}).encode()).decode(),
                }
            }
        ],
    }
    assert etcd.members[0].post("/v3/kv/txn", txn).get("succeeded")


def test_a_stale_map_follows_moved(tmp_path: Path) -> None:
    etcd = EtcdCluster(tmp_path / "etcd", size=1).start()
    cluster = OwnerCluster(tmp_path / "c", etcd, "c1", ["g1", "g2"], node_flags=["--cluster=c1"])
    try:
        cluster.start()
        url = f"karma+etcd://{etcd.url.removeprefix('http://')}/c1"
        first = two_group_keys(cluster.map)
        with k.Client(url, timeout=5) as client:
            client.batch_add("mv", [(key, D1, 1) for key in first])
            before = client.cluster_view()
            assert before is not None
            swap_map(etcd, cluster.map)
            wait_for_nodes_map(cluster, before.shardmap.version)
            # the client still routes by the old map: g1's old keys go to g1, now not theirs
            client.increment("mv", first[0], 1, bucket=D1)
            client.batch_add("mv", [(key, D1, 1) for key in first])
            routing = client._cluster
            assert routing is not None
            assert routing.moved_refreshes >= 1
            after = client.cluster_view()
            assert after is not None
            assert after.shardmap.version > before.shardmap.version
            assert client.sum("mv", first[0]) >= 2  # counted where the new map says
    finally:
        cluster.close()
        etcd.stop()


class OwnerCluster(Cluster):
    """Nodes that check ownership answer a probe of a key they do not own `moved`: probe one
    of each group's own keys."""

    def wait_leader(self, group: str, timeout: float = 15) -> None:
        proc = self.nodes[group]
        key = next(key for key in range(1, 10_000) if self.map.owner_of(key) == group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = call(proc, "counter.increment", series="_probe", key=key, value=1, bucket=D1)
            if answer["success"]:
                return
            time.sleep(0.1)
        raise AssertionError(f"group {group} has no leader after {timeout} s")


def two_group_keys(shardmap: ShardMap) -> list[int]:
    found: dict[str, int] = {}
    key = 1
    while len(found) < 2:
        found.setdefault(shardmap.owner_of(key), key)
        key += 1
    return [found["g1"], found["g2"]]


def wait_for_nodes_map(cluster: Cluster, old_version: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for proc in cluster.nodes.values():
        while True:
            response = call(proc, "cluster.topology")["response"]
            assert isinstance(response, dict)
            wire = response.get("shardmap") or {}
            if wire.get("version", 0) > old_version:
                break
            assert time.monotonic() < deadline, "the nodes did not see the new map"
            time.sleep(0.1)


def test_reservations_and_node_calls_route(world: World) -> None:
    key = KEYS["g2"][2]
    with k.Client(world.url, timeout=5) as cluster:
        with cluster.reserve("held", key, 2, max=5, window=DAY) as held:
            assert held.answer.allowed
            assert cluster.check("held", key, 0, max=5, window=DAY).items[0].held == 2
        after = cluster.check("held", key, 0, max=5, window=DAY).items[0]
        assert (after.used, after.held) == (2, 0)
        hold = cluster.limit_reserve("held", key, 1, max=5, window=DAY)
        assert hold.id is not None
        assert cluster.void(hold.id).id == hold.id
        assert cluster.check("held", key, 0, max=5, window=DAY).items[0].held == 0
        assert cluster.health().status == "ok"
        assert cluster.ping() == "pong"
