"""A cluster node's pure parts: which keys a request names, the owner check and its `moved`
answer, the options, and the etcd shapes of a guarded map change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from karma import config_cli
from karma.cluster import shardmap
from karma.cluster.keys import KEYED, keys_of
from karma.cluster.owner import Moved, Ownership, moved_of
from karma.cluster.slots import slot_of
from karma.errors import ErrorCode, KarmaError
from karma.ha import etcd_wire
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate

OPEN = Gate()
B1 = 20260501
RANGE = {"from": B1, "to": B1}
CHARGE = {"series": "s", "max": 10, "window": "day"}


def request(op: str, **fields: Any) -> r.Request:
    return decode(json.dumps({"v": 2, "op": op, **fields}).encode(), OPEN)


#: every keyed op (aliases included) with a request naming keys, and the keys it names
KEYED_CASES: list[tuple[str, dict[str, Any], list[int]]] = [
    ("counter.increment", {"series": "s", "key": 7}, [7]),
    ("series.increment", {"series": "s", "key": 7}, [7]),
    ("counter.decrement", {"series": "s", "key": 8}, [8]),
    ("counter.sum", {"series": "s", "key": 9}, [9]),
    ("series.sum", {"series": "s", "key": 9}, [9]),
    ("counter.series", {"series": "s", "key": 10, "range": RANGE}, [10]),
    ("series.points", {"series": "s", "key": 10, "range": RANGE}, [10]),
    ("counter.delete_range", {"series": "s", "key": 11, "range": RANGE}, [11]),
    ("counter.reset", {"series": "s", "key": 12}, [12]),
    ("counter.batch_sum", {"series": "s", "keys": [1, 2, 1]}, [1, 2, 1]),
    ("series.batch_sum", {"series": "s", "keys": [3]}, [3]),
    ("counter.batch_reset", {"series": "s", "keys": [4, 5]}, [4, 5]),
    ("counter.batch_delete_range", {"series": "s", "keys": [6], "range": RANGE}, [6]),
    (
        "counter.multi_sum",
        {"items": [{"series": "a", "key": 1}, {"series": "b", "key": 2}]},
        [1, 2],
    ),
    ("series.batch_add", {"series": "s", "items": [[1, B1, 1], [2, B1, 1]]}, [1, 2]),
    ("counter.batch_increment", {"series": "s", "items": [[3, B1, 1]]}, [3]),
    ("series.batch_set", {"series": "s", "items": [[4, B1, 0]]}, [4]),
    ("ingest.chunk", {"series": "s", "stream_id": "x", "chunk_seq": 1, "items": [[5, B1, 1]]}, [5]),
    ("limit.consume", {**CHARGE, "key": 21}, [21]),
    (
        "limit.consume",
        {"items": [{**CHARGE, "key": 22}, {**CHARGE, "series": "t", "key": 23}]},
        [22, 23],
    ),
    ("limit.check", {**CHARGE, "key": 24, "value": 0}, [24]),
    ("limit.reserve", {**CHARGE, "key": 25, "id": "r1"}, [25]),
    ("limit.reserve", {"id": "r2", "items": [{**CHARGE, "key": 26}]}, [26]),
]

#: ops that name no subject key: answered for the node's own group
KEYLESS = {
    "system.ping", "system.health", "system.stats", "system.metrics", "system.compact",
    "system.slowlog", "tree.list", "tree.create", "tree.drop", "tree.reset", "tree.info",
    "tree.keys", "tree.summary", "tree.top", "tree.series", "tree.delete_range",
    "series.compact", "tree.compact", "series.delete_before", "tree.delete_before",
    "snapshot.create", "snapshot.create_all", "snapshot.list", "snapshot.info",
    "snapshot.verify", "snapshot.load", "snapshot.fetch", "snapshot.fetch_chunk",
    "snapshot.manifest", "recovery.checkpoint", "recovery.status", "reconciliation.report",
    "replication.entries", "replication.status", "cluster.topology", "ingest.begin",
    "ingest.commit", "ingest.abort", "idempotency.prune", "idempotency.snapshot_fetch_chunk",
    "limit.commit", "limit.void", "limit.reservation", "limit.status",
    "limit.snapshot_fetch_chunk", "limit.apply", "limit.hold", "limit.settle",
}  # fmt: skip


@pytest.mark.parametrize(("op", "fields", "keys"), KEYED_CASES)
def test_keys_of_every_keyed_op(op: str, fields: dict[str, Any], keys: list[int]) -> None:
    assert keys_of(request(op, **fields)) == keys


def test_every_op_is_keyed_or_listed_as_keyless() -> None:
    """A new op must be classified here: a keyed op missing from KEYED would skip the check."""
    keyed = {optable.TAG_BY_CLASS[cls] for cls in KEYED}
    assert keyed == {op for op, _, _ in KEYED_CASES}
    assert keyed | KEYLESS == set(optable.CLASS_BY_TAG)
    assert not keyed & KEYLESS


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("tree.list", {}),
        ("tree.info", {"series": "s"}),
        ("limit.commit", {"id": "r1"}),
        ("limit.void", {"id": "r1"}),
        ("limit.reservation", {"id": "r1"}),
        ("ingest.begin", {"stream_id": "x", "series": "s", "mode": "add"}),
        ("cluster.topology", {}),
    ],
)
def test_keyless_requests_name_no_key(op: str, fields: dict[str, Any]) -> None:
    assert keys_of(request(op, **fields)) is None


def keys_in(group: str, shardmap_: shardmap.ShardMap, count: int) -> list[int]:
    found = [k for k in range(10_000) if shardmap_.owner_of(k) == group]
    return found[:count]


MAP = shardmap.even_split(["g1", "g2", "g3"], version=42)


def ownership(group: str = "g1") -> Ownership:
    own = Ownership("c", group)
    own.set_map(MAP)
    own.leaders = {"g1": "127.0.0.1:1", "g2": "127.0.0.1:2", "g3": None}
    return own


def test_owned_keys_are_admitted_and_keyless_requests_always() -> None:
    own = ownership()
    mine = keys_in("g1", MAP, 3)
    own.admit(request("counter.increment", series="s", key=mine[0]))
    own.admit(request("counter.batch_sum", series="s", keys=mine))
    own.admit(request("tree.list"))
    own.admit(request("limit.commit", id="not-ours-maybe"))


def moved(own: Ownership, req: r.Request) -> KarmaError:
    with pytest.raises(KarmaError) as caught:
        own.admit(req)
    assert caught.value.code is ErrorCode.MOVED
    return caught.value


def test_a_foreign_key_answers_moved_naming_slot_owner_leader_and_version() -> None:
    key = keys_in("g2", MAP, 1)[0]
    error = moved(ownership(), request("counter.increment", series="s", key=key))
    details = {"slot": slot_of(key), "group": "g2", "leader": "127.0.0.1:2", "version": 42}
    assert error.extra == {"moved": details}
    assert "g2" in error.message
    assert "127.0.0.1:2" in error.message
    answer = json.loads(envelope.encode_error(error))
    assert answer["error_code"] == "moved"
    assert answer["success"] is False
    assert answer["moved"] == details
    assert list(answer) == ["protocol_version", "success", "response", "moved", "error_code"]
    assert moved_of(answer) == Moved(slot_of(key), "g2", "127.0.0.1:2", 42)


def test_one_foreign_key_refuses_the_whole_request() -> None:
    mine, theirs = keys_in("g1", MAP, 2), keys_in("g3", MAP, 1)
    error = moved(ownership(), request("counter.batch_reset", series="s", keys=[*mine, *theirs]))
    assert error.extra == {
        "moved": {"slot": slot_of(theirs[0]), "group": "g3", "leader": None, "version": 42}
    }
    items = [{**CHARGE, "key": mine[0]}, {**CHARGE, "key": theirs[0]}]
    moved(ownership(), request("limit.consume", items=items))


def test_before_any_map_every_keyed_request_is_moved_without_an_owner() -> None:
    own = Ownership("c", "g1")
    error = moved(own, request("counter.sum", series="s", key=1))
    assert error.extra == {
        "moved": {"slot": slot_of(1), "group": None, "leader": None, "version": 0}
    }
    own.admit(request("tree.list"))


def test_a_new_map_moves_the_check() -> None:
    own = ownership("g1")
    key = keys_in("g2", MAP, 1)[0]
    moved(own, request("counter.sum", series="s", key=key))
    own.set_map(shardmap.even_split(["g2", "g1"], version=50))  # g1 now owns the upper half
    assert own.owns_slot(16383)
    assert not own.owns_slot(0)
    assert own.map is not None
    assert own.map.version == 50


def test_topology_part_lists_map_groups_then_recorded_ones() -> None:
    own = ownership()
    own.registered = ("g4", "g2")
    wire = own.to_wire()
    assert wire["cluster"] == "c"
    assert wire["group"] == "g1"
    assert wire["shardmap"] == {"version": 42, "ranges": [list(x) for x in MAP.ranges]}
    assert wire["groups"] == [
        {"group": "g1", "slots": 5461, "leader": "127.0.0.1:1"},
        {"group": "g2", "slots": 5461, "leader": "127.0.0.1:2"},
        {"group": "g3", "slots": 5462, "leader": None},
        {"group": "g4", "slots": 0, "leader": None},
    ]


def test_moved_of_ignores_other_answers() -> None:
    assert moved_of({"error_code": "not_leader", "response": "x"}) is None
    assert moved_of({"error_code": "moved", "moved": "garbage"}) is None


# --- options ----------------------------------------------------------------------------------
def test_group_is_the_ha_cluster_alias() -> None:
    config = config_cli.load(["--group=g1", "--ha-etcd=http://127.0.0.1:1"], {})
    assert config.ha_cluster == "g1"
    assert config.group == "g1"
    config = config_cli.load(["--ha-cluster=g2"], {"KARMA_GROUP": "g2"})
    assert config.ha_cluster == "g2"
    config = config_cli.load(["--ha-cluster=g3"], {})
    assert config.ha_cluster == "g3"
    assert config.group is None
    assert config.cluster is None


def test_group_and_ha_cluster_naming_different_groups_is_refused() -> None:
    with pytest.raises(config_cli.ConfigError, match="different groups"):
        config_cli.load(["--group=a", "--ha-cluster=b"], {})


def test_cluster_needs_etcd() -> None:
    with pytest.raises(config_cli.ConfigError, match="--cluster needs --ha-etcd"):
        config_cli.load(["--cluster=c", "--group=g1"], {})
    with pytest.raises(config_cli.ConfigError, match="--cluster needs --ha-etcd"):
        config_cli.load([], {"KARMA_CLUSTER": "c"})
    config = config_cli.load(
        ["--cluster=c"], {"KARMA_GROUP": "g1", "KARMA_HA_ETCD": "http://127.0.0.1:1"}
    )
    assert (config.cluster, config.ha_cluster) == ("c", "g1")


# --- etcd shapes ------------------------------------------------------------------------------
def test_guarded_map_write_compares_the_mod_revision() -> None:
    call = etcd_wire.put_if_mod_revision_request("/karma/c/shardmap", b"{}", mod_revision=17)
    assert call.path == "/v3/kv/txn"
    (compare,) = call.body["compare"]
    assert (compare["target"], compare["result"], compare["mod_revision"]) == ("MOD", "EQUAL", "17")
    assert "request_put" in call.body["success"][0]
    assert "request_range" in call.body["failure"][0]


def test_ranges_request_reads_every_key_in_one_txn() -> None:
    call = etcd_wire.ranges_request(["/karma/a/leader", "/karma/b/leader"])
    assert call.body["compare"] == []
    assert len(call.body["success"]) == 2


def test_group_keys_live_under_the_cluster() -> None:
    assert shardmap.group_key("c", "g4") == "/karma/c/groups/g4"
    assert shardmap.group_key("c", "g4").startswith(shardmap.groups_prefix("c"))
