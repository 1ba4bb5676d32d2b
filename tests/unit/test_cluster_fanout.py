"""The fan-out rules against the pure engine: a cluster of N groups, each an in-process core
engine holding only its slots' keys, answers every request as one engine holding every key.

No mocks: each group is a real `Engine` (karma.core is pure), requests are decoded by the same
protocol code as a node's, and answers go through the JSON envelope both ways.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karma.cluster import fanout, merges
from karma.cluster.fanout import NEED_SERIES, ConsumePlan, Plan, part_key, plan_request
from karma.cluster.reply import Reply, unreachable
from karma.cluster.routes import ROUTE_BY_CLASS, Route
from karma.cluster.shardmap import ShardMap, even_split
from karma.core.budget import Unlimited
from karma.core.engine import WRITES, Engine, Immediate
from karma.errors import KarmaError
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate

TODAY = 20261208
NOW = 1_796_000_000
DAYS = [20261201, 20261205, 20261207, 20261208]
SERIES = ["a", "b", "c"]
KEYS = st.integers(min_value=0, max_value=60)
GATE = Gate()


class EngineNode:
    """One node's answers, from the pure engine (no WAL, no network)."""

    def __init__(self) -> None:
        self.engine = Engine()

    def call(self, obj: dict[str, Any]) -> Reply:
        try:
            request = decode(json.dumps(obj).encode(), GATE)
            if type(request) in WRITES:
                mutation = self.engine.mutation_for(request, TODAY, NOW)
                if isinstance(mutation, Immediate):
                    response = mutation.response
                else:
                    response = self.engine.apply(mutation)
            else:
                response = self.engine.read(request, Unlimited())
        except KarmaError as exc:
            return Reply.error(exc.code, exc.message)
        return Reply.decode(envelope.encode_ok(response).rstrip())


class EngineCluster:
    def __init__(self, shardmap: ShardMap) -> None:
        self.map = shardmap
        self.groups = {group: EngineNode() for group in shardmap.groups()}

    def call(self, obj: dict[str, Any]) -> Reply:
        try:
            request = decode(json.dumps(obj).encode(), GATE)
        except KarmaError as exc:
            return Reply.error(exc.code, exc.message)
        plan = plan_request(request, obj, self.map, nonce="n")
        assert isinstance(plan, Plan)
        replies = [self.groups[part.group].call(part.request) for part in plan.parts]
        merged = plan.merge(replies)
        if merged is NEED_SERIES:
            lists = {
                group: node.call({"v": 2, "op": "tree.list"}).response
                for group, node in self.groups.items()
            }
            merged = plan.merge(replies, series=lists)  # type: ignore[arg-type]
        assert isinstance(merged, Reply)
        return merged


def same(one: Reply, many: Reply, op: str) -> None:
    if op == "tree.list" and one.success:  # its order is free
        assert isinstance(one.response, list)
        assert isinstance(many.response, list)
        assert sorted(one.response) == sorted(many.response)
        return
    assert (one.success, one.error_code, one.response) == (
        many.success,
        many.error_code,
        many.response,
    )


# --- requests --------------------------------------------------------------------------------
def req(op: str, **fields: Any) -> dict[str, Any]:
    return {"v": 2, "op": op, **fields}


series_st = st.sampled_from(SERIES)
day_st = st.sampled_from(DAYS)
range_st = st.tuples(day_st, day_st).map(lambda p: {"from": min(p), "to": max(p)})
value_st = st.integers(min_value=1, max_value=9)
item_st = st.tuples(KEYS, day_st, value_st).map(list)

writes = st.one_of(
    st.builds(
        lambda s, k, d, v: req("counter.increment", series=s, key=k, bucket=d, value=v),
        series_st,
        KEYS,
        day_st,
        value_st,
    ),
    st.builds(
        lambda s, k, d, v: req("counter.decrement", series=s, key=k, bucket=d, value=v),
        series_st,
        KEYS,
        day_st,
        value_st,
    ),
    st.builds(
        lambda s, items: req("series.batch_add", series=s, items=items),
        series_st,
        st.lists(item_st, max_size=8),
    ),
    st.builds(
        lambda s, items: req("series.batch_set", series=s, items=items),
        series_st,
        st.lists(st.tuples(KEYS, day_st, st.integers(0, 9)).map(list), max_size=8),
    ),
    st.builds(
        lambda s, keys: req("counter.batch_reset", series=s, keys=keys),
        series_st,
        st.lists(KEYS, max_size=6),
    ),
    st.builds(
        lambda s, keys, rg: req("counter.batch_delete_range", series=s, keys=keys, range=rg),
        series_st,
        st.lists(KEYS, max_size=6),
        range_st,
    ),
    st.builds(lambda s, k: req("counter.reset", series=s, key=k), series_st, KEYS),
    st.builds(
        lambda s, k, rg: req("counter.delete_range", series=s, key=k, range=rg),
        series_st,
        KEYS,
        range_st,
    ),
    st.builds(lambda s: req("tree.create", tree=s), series_st),
    st.builds(lambda s: req("tree.drop", tree=s), series_st),
    st.builds(lambda s: req("tree.reset", tree=s), series_st),
    st.builds(lambda s, rg: req("tree.delete_range", tree=s, range=rg), series_st, range_st),
    st.builds(lambda s, d: req("series.delete_before", series=s, before=d), series_st, day_st),
    st.builds(lambda s: req("series.compact", series=s), series_st),
    st.just(req("system.compact")),
)

reads = st.one_of(
    st.builds(lambda s, k: req("counter.sum", series=s, key=k), series_st, KEYS),
    st.builds(
        lambda s, k, rg: req("counter.sum", series=s, key=k, range=rg), series_st, KEYS, range_st
    ),
    st.builds(
        lambda s, k, rg: req("counter.series", series=s, key=k, range=rg),
        series_st,
        KEYS,
        range_st,
    ),
    st.builds(
        lambda s, keys: req("counter.batch_sum", series=s, keys=keys),
        series_st,
        st.lists(KEYS, max_size=8),
    ),
    st.builds(
        lambda s, keys, rg: req("counter.batch_sum", series=s, keys=keys, range=rg),
        series_st,
        st.lists(KEYS, max_size=8),
        range_st,
    ),
    st.builds(
        lambda items: req("counter.multi_sum", items=items),
        st.lists(st.builds(lambda s, k: {"series": s, "key": k}, series_st, KEYS), max_size=8),
    ),
    st.just(req("tree.list")),
    st.builds(lambda s: req("tree.info", tree=s), series_st),
    st.builds(lambda s: req("tree.summary", tree=s), series_st),
    st.builds(lambda s, rg: req("tree.summary", tree=s, range=rg), series_st, range_st),
    st.builds(lambda s, n: req("tree.top", tree=s, limit=n), series_st, st.integers(1, 12)),
    st.builds(
        lambda s, n, rg: req("tree.top", tree=s, limit=n, range=rg),
        series_st,
        st.integers(1, 12),
        range_st,
    ),
    st.builds(lambda s, rg: req("tree.series", tree=s, range=rg), series_st, range_st),
    st.builds(
        lambda s, n, c: req("tree.keys", tree=s, limit=n, cursor=c),
        series_st,
        st.integers(1, 12),
        st.one_of(st.none(), KEYS),
    ),
)

maps = st.sampled_from(
    [
        even_split(["g1"]),
        even_split(["g1", "g2"]),
        even_split(["g1", "g2", "g3"]),
        ShardMap(((0, 99, "g2"), (100, 9000, "g1"), (9001, 16383, "g3"))),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shardmap=maps, steps=st.lists(st.one_of(writes, reads), min_size=1, max_size=40))
def test_a_cluster_answers_every_request_as_one_node(
    shardmap: ShardMap, steps: list[dict[str, Any]]
) -> None:
    one, many = EngineNode(), EngineCluster(shardmap)
    for step in steps:
        same(one.call(step), many.call(step), step["op"])


@settings(max_examples=60, deadline=None)
@given(
    shardmap=maps,
    items=st.lists(item_st, min_size=1, max_size=60),
    limit=st.integers(1, 7),
)
def test_tree_keys_paged_through_a_cluster_is_one_nodes_paging(
    shardmap: ShardMap, items: list[list[int]], limit: int
) -> None:
    one, many = EngineNode(), EngineCluster(shardmap)
    write = req("series.batch_add", series="a", items=items)
    same(one.call(write), many.call(write), "series.batch_add")
    cursor = None
    pages = 0
    while True:
        ask = req("tree.keys", tree="a", limit=limit, cursor=cursor)
        a, b = one.call(ask), many.call(ask)
        same(a, b, "tree.keys")
        assert isinstance(b.response, dict)
        cursor = b.response["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == max(1, -(-len({k for k, _, _ in items}) // limit))


@settings(max_examples=60, deadline=None)
@given(shardmap=maps, items=st.lists(item_st, min_size=1, max_size=60), limit=st.integers(1, 9))
def test_tree_top_merged_from_each_groups_top_k(
    shardmap: ShardMap, items: list[list[int]], limit: int
) -> None:
    one, many = EngineNode(), EngineCluster(shardmap)
    write = req("series.batch_add", series="a", items=items)
    one.call(write)
    many.call(write)
    ask = req("tree.top", tree="a", limit=limit)
    same(one.call(ask), many.call(ask), "tree.top")


# --- the rules themselves ----------------------------------------------------------------------
def test_every_op_of_the_op_table_has_a_route() -> None:
    assert set(ROUTE_BY_CLASS) == set(optable.ALL_CLASSES)
    assert ROUTE_BY_CLASS[r.SeriesIncrement] is Route.ONE_GROUP  # an alias takes its op's
    assert ROUTE_BY_CLASS[r.Ping] is Route.ROUTER
    assert ROUTE_BY_CLASS[r.TreeKeys] is Route.EVERY_GROUP
    assert ROUTE_BY_CLASS[r.BatchSum] is Route.SPLIT


def plan_of(obj: dict[str, Any], shardmap: ShardMap) -> Plan | ConsumePlan:
    return plan_request(decode(json.dumps(obj).encode(), GATE), obj, shardmap, nonce="n1")


def keys_in_each_group(shardmap: ShardMap) -> dict[str, int]:
    found: dict[str, int] = {}
    key = 0
    while len(found) < len(shardmap.groups()):
        found.setdefault(shardmap.owner_of(key), key)
        key += 1
    return found


def test_a_split_keyed_write_derives_one_key_per_part_the_same_on_every_retry() -> None:
    shardmap = even_split(["g1", "g2", "g3"])
    keys = list(keys_in_each_group(shardmap).values())
    obj = req("counter.batch_reset", series="a", keys=keys, idempotency_key="job-7")
    first, again = plan_of(obj, shardmap), plan_of(obj, shardmap)
    assert isinstance(first, Plan)
    assert first == again
    sent = {part.group: part.request["idempotency_key"] for part in first.parts}
    assert sent == {g: f"job-7:{g}" for g in ("g1", "g2", "g3")}
    assert part_key("k" * 256, "g1").startswith("karma-part:")
    # all keys in one group: the request goes whole, with the caller's own key
    one = plan_of({**obj, "keys": keys[:1]}, shardmap)
    assert isinstance(one, Plan)
    assert one.parts[0].whole
    assert one.parts[0].request["idempotency_key"] == "job-7"


def test_a_fan_out_read_that_cannot_reach_a_group_fails_naming_it() -> None:
    shardmap = even_split(["g1", "g2"])
    plan = plan_of(req("tree.info", tree="a"), shardmap)
    assert isinstance(plan, Plan)
    ok = Reply.ok({"tree": "a", "key_count": 1, "bucket_count": 1, "total": 3, "branches": 9})
    merged = plan.merge([ok, unreachable("g2", "no leader")])
    assert isinstance(merged, Reply)
    assert merged.error_code == "not_leader"
    assert "g2" in merged.message
    # a node's own not_leader answer is named too
    merged = plan.merge([Reply.error("not_leader", "Not the leader: x"), ok])
    assert isinstance(merged, Reply)
    assert merged.message.startswith("Group g1:")


def test_a_split_write_that_one_group_refused_says_where_it_applied() -> None:
    shardmap = even_split(["g1", "g2"])
    keys = list(keys_in_each_group(shardmap).values())
    plan = plan_of(
        req("series.batch_add", series="a", items=[[k, TODAY, 1] for k in keys]), shardmap
    )
    assert isinstance(plan, Plan)
    replies = [
        Reply.ok({"applied": 1, "total": 1}) if p.group == "g1" else unreachable("g2", "gone")
        for p in plan.parts
    ]
    merged = plan.merge(replies)
    assert isinstance(merged, Reply)
    assert not merged.success
    assert "applied on groups g1" in merged.message
    assert "not on g2" in merged.message


def test_an_every_group_write_one_group_refused_says_where_it_applied() -> None:
    plan = plan_of(req("tree.create", tree="a"), even_split(["g1", "g2", "g3"]))
    assert isinstance(plan, Plan)
    merged = plan.merge([Reply.ok("OK"), unreachable("g2", "gone"), Reply.ok("OK")])
    assert isinstance(merged, Reply)
    assert merged.error_code == "not_leader"
    assert "applied on groups g1, g3" in merged.message


def test_a_reservation_is_answered_by_the_group_that_knows_it() -> None:
    plan = plan_of(req("limit.void", id="r1"), even_split(["g1", "g2"]))
    assert isinstance(plan, Plan)
    missing = Reply.error("not_found", 'Reservation "r1" not found')
    voided = Reply.ok({"id": "r1", "status": "voided", "released": 3}, idempotent=False)
    assert plan.merge([missing, voided]) == voided
    assert plan.merge([missing, missing]) == missing


def test_reply_envelope_round_trips_in_karma_order() -> None:
    line = envelope.encode_idempotent({"a": 1}, replayed=True)
    assert Reply.decode(line.rstrip()).encode() == line
    line = envelope.encode_error(KarmaError.series_not_found("x"))
    assert Reply.decode(line.rstrip()).encode() == line
    assert merges.not_found("x") == Reply.decode(line.rstrip())


def test_cross_group_limit_reserve_is_refused_with_a_validation_error() -> None:
    shardmap = even_split(["g1", "g2"])
    k1, k2 = keys_in_each_group(shardmap).values()
    item = {"series": "s", "max": 5, "window": {"days": 1}}
    plan = plan_of(
        req("limit.reserve", id="r", items=[{**item, "key": k1}, {**item, "key": k2}]), shardmap
    )
    assert isinstance(plan, Plan)
    assert plan.parts == ()
    merged = plan.merge([])
    assert isinstance(merged, Reply)
    assert merged.error_code == "validation_error"


@pytest.mark.parametrize("keyed", [True, False])
def test_cross_group_consume_plans_holds_then_commits(keyed: bool) -> None:
    shardmap = even_split(["g1", "g2"])
    k1, k2 = keys_in_each_group(shardmap).values()
    item = {"series": "s", "max": 5, "window": {"days": 1}}
    extra = {"idempotency_key": "c-1"} if keyed else {}
    obj = req(
        "limit.consume", items=[{**item, "key": k1}, {**item, "key": k2, "value": 2}], **extra
    )
    plan = plan_of(obj, shardmap)
    assert isinstance(plan, fanout.ConsumePlan)
    assert [p.request["op"] for p in plan.parts] == ["limit.reserve", "limit.reserve"]
    ids = {p.request["id"] for p in plan.parts}
    assert len(ids) == 2
    assert ids == {p.request["id"] for p in plan_of(obj, shardmap).parts}


def test_an_ingest_chunk_sends_its_zero_valued_parts_first() -> None:
    shardmap = even_split(["g1", "g2"])
    keys = keys_in_each_group(shardmap)
    items = [[keys["g1"], TODAY, 1], [keys["g2"], TODAY, 0]]
    obj = req("ingest.chunk", stream_id="s", series="a", chunk_seq=1, items=items)
    plan = plan_of(obj, shardmap)
    assert isinstance(plan, Plan)
    first, rest = plan.waves
    assert [plan.parts[i].group for i in first] == ["g2"]
    assert [plan.parts[i].group for i in rest] == ["g1"]
    refused = Reply.error("validation_error", "Batch item value must be greater than 0")
    assert plan.early_answer([refused]) == refused
    plain = plan_of({**obj, "items": [[k, TODAY, 1] for k in keys.values()]}, shardmap)
    assert isinstance(plain, Plan)
    assert plain.waves == ((0, 1),)


def _item(allowed: bool, used: int, held: int, value: int = 1, maximum: int = 5) -> dict[str, Any]:
    return {
        "allowed": allowed,
        "max": maximum,
        "used": used,
        "held": held,
        "remaining": max(0, maximum - used - held),
        "value": value,
        "window": {"from": TODAY, "to": TODAY},
        "reset_at_unix": NOW,
        "retry_after_s": None if allowed else 60,
    }


def _reserved(items: list[dict[str, Any]]) -> Reply:
    allowed = all(i["allowed"] for i in items)
    denied = [n for n, i in enumerate(items) if not i["allowed"]]
    body = {"allowed": allowed, "id": "x", "status": "held" if allowed else "denied"}
    body.update({"denied": denied, "retry_after_s": None if allowed else 60, "items": items})
    return Reply.ok(body, idempotent=False)


def test_a_cross_group_consume_answers_as_one_node_allowed_or_denied() -> None:
    shardmap = even_split(["g1", "g2"])
    keys = keys_in_each_group(shardmap)
    window = {"days": 1}
    items = [{"series": "s", "key": keys[g], "max": 5, "window": window} for g in ("g1", "g2")]
    plan = plan_of(req("limit.consume", items=items), shardmap)
    assert isinstance(plan, ConsumePlan)
    by_group = {p.group: i for i, p in enumerate(plan.parts)}
    # both held: commit everywhere; the answer counts the value as used, not held
    replies = [Reply.ok({})] * 2
    replies[by_group["g1"]] = _reserved([_item(True, 2, 1)])
    replies[by_group["g2"]] = _reserved([_item(True, 0, 1)])
    settlement = plan.settle(replies)
    assert settlement.committing
    assert [p.request["op"] for p in settlement.parts] == ["limit.commit"] * 2
    answer = plan.finish(settlement, [Reply.ok({"status": "committed"})] * 2)
    assert answer.response == {
        "allowed": True,
        "denied": [],
        "retry_after_s": None,
        "items": [_item(True, 3, 0), _item(True, 1, 0)],
    }
    assert answer.idempotent is None  # unkeyed, as on one node
    # g2 denied: void g1's hold; the denial names item 1, nothing counted as used or held
    replies[by_group["g2"]] = _reserved([_item(False, 5, 0)])
    settlement = plan.settle(replies)
    assert not settlement.committing
    assert [(p.group, p.request["op"]) for p in settlement.parts] == [("g1", "limit.void")]
    answer = plan.finish(settlement, [Reply.ok({"status": "voided"})])
    assert answer.response == {
        "allowed": False,
        "denied": [1],
        "retry_after_s": 60,
        "items": [_item(True, 2, 0), _item(False, 5, 0)],
    }
    # a group that cannot be reached: its error, and the held group's hold voided
    replies[by_group["g2"]] = unreachable("g2", "gone")
    settlement = plan.settle(replies)
    assert [p.request["op"] for p in settlement.parts] == ["limit.void"]
    assert settlement.answer.error_code == "not_leader"
