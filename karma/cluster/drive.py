"""One request through a cluster, start to finish, as a sans-I/O generator (spec: sharding §4).

The fan-out plan (karma.cluster.fanout) says which parts go where and how to merge them; this
drives it: the parts, the two phases of a cross-group `limit.consume`, the series lists a merge
may ask for, and the one map refresh after `moved`. It does no I/O: it yields what to do and is
sent back the outcome, so the blocking client, the async client (and any router) share it.

    steps = drive(request, obj, shardmap, nonce=uuid4().hex)
    outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value                   # the Reply one node would have given
        if isinstance(step, Send):              # send each (group, object), concurrently
            outcome = [reply of each part, in order]   # reply.unreachable(...) for a lost group
        else:                                   # Refresh: read the map again
            outcome = the new ShardMap

Rules:
- the parts go in the plan's waves (one, except for an ingest chunk whose zero values one node
  would refuse: those parts first, and nothing more when one is refused);
- a request every part of which answered `moved` was applied nowhere: the map is read again
  once and the request planned again under it (a split keyed write's parts then carry the
  keys derived for the new map's groups); a second `moved` is the answer (an error);
- parts answered `moved` among parts applied: the map is read again (so the next request goes
  right) and the merged answer, an error naming the group, is given; a retry with the same
  idempotency key replays what was applied.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import attrs

from karma.cluster import fanout
from karma.cluster.consume import ConsumePlan
from karma.cluster.parts import JsonObject
from karma.cluster.reply import Reply
from karma.cluster.routes import Route
from karma.cluster.shardmap import ShardMap
from karma.protocol import requests as r

MOVED = "moved"


@attrs.frozen
class Send:
    """Send each object to its group's leader (concurrently); answer with their replies."""

    parts: tuple[tuple[str, JsonObject], ...]


@attrs.frozen
class Refresh:
    """A group said the map is stale: read it again and answer with the new map."""


Step = Send | Refresh
Outcome = Sequence[Reply] | ShardMap | None
Driver = Generator[Step, Outcome, Reply]


def drive(request: r.Request, obj: JsonObject, shardmap: ShardMap, *, nonce: str) -> Driver:
    """The steps of `request` (decoded from `obj`) under `shardmap`; returns the answer."""
    for attempt in range(2):
        plan = fanout.plan_request(request, obj, shardmap, nonce=nonce)
        if isinstance(plan, ConsumePlan):
            held = _replies((yield Send(tuple((p.group, p.request) for p in plan.parts))))
            if attempt == 0 and _all_moved(held):
                shardmap = _map((yield Refresh()))
                continue
            settlement = plan.settle(held)
            parts = tuple((p.group, p.request) for p in settlement.parts)
            settled = _replies((yield Send(parts))) if parts else []
            return plan.finish(settlement, settled)
        sent: dict[int, Reply] = {}
        waves = plan.waves
        for number, wave in enumerate(waves):
            parts = tuple((plan.parts[i].group, plan.parts[i].request) for i in wave)
            got = _replies((yield Send(parts)))
            sent.update(zip(wave, got, strict=True))
            early = plan.early_answer(got) if number < len(waves) - 1 else None
            if early is not None:
                return early
        replies = [sent[i] for i in range(len(plan.parts))]
        if _all_moved(replies):
            if attempt == 0:
                shardmap = _map((yield Refresh()))
                continue
            return replies[0]
        if any(reply.error_code == MOVED for reply in replies):
            yield Refresh()
        if plan.route in (Route.ROUTER, Route.ONE_NODE):
            return replies[0]  # one node's own answer (a client has no router to answer)
        merged = plan.merge(replies)
        if merged is fanout.NEED_SERIES:
            probe: JsonObject = {"v": 2, "op": "tree.list"}
            if "token" in obj:
                probe["token"] = obj["token"]
            lists = _replies((yield Send(tuple((g, probe) for g in plan.groups))))
            merged = plan.merge(replies, series=_series(plan.groups, lists))
        assert isinstance(merged, Reply)
        return merged
    raise AssertionError("unreachable: the second attempt returns")


def _all_moved(replies: Sequence[Reply]) -> bool:
    return bool(replies) and all(reply.error_code == MOVED for reply in replies)


def _replies(outcome: Outcome) -> Sequence[Reply]:
    if isinstance(outcome, ShardMap) or outcome is None:
        raise TypeError("a Send step is answered with the parts' replies")
    return outcome


def _map(outcome: Outcome) -> ShardMap:
    if not isinstance(outcome, ShardMap):
        raise TypeError("a Refresh step is answered with the map")
    return outcome


def _series(groups: Sequence[str], replies: Sequence[Reply]) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for group, reply in zip(groups, replies, strict=True):
        names = reply.response if reply.success else []
        lists[group] = [str(n) for n in names] if isinstance(names, list) else []
    return lists
