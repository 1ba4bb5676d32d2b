"""Fan-out rules, written once for the Python client and the router (spec: sharding §4).

Sans-I/O: a request (its decoded Struct, for the rules, and its JSON object, for the parts) and
the shard map go in; a `Plan` comes out, whose parts say which group gets which JSON object.
The caller sends the parts (concurrently, as it likes), turns each group's answer line into a
`Reply` (a group it cannot reach gets `reply.unreachable(group, why)`) and asks the plan to
merge them, in part order, into the one answer a single node would have given.

    plan = fanout.plan_request(request, obj, shardmap, nonce=uuid4().hex)
    if isinstance(plan, ConsumePlan): ... (two phases: karma.cluster.consume)
    replies = [send(part.group, part.request) for part in plan.parts]
    merged = plan.merge(replies)
    if merged is NEED_SERIES:   # a group lacks the series: does any group have it?
        lists = {g: names from `tree.list` on g for g in plan.groups}
        merged = plan.merge(replies, series=lists)

Rules worth knowing (docs/cluster.md, "Fan-out"):
- A part whose group has never seen the series answers `not_found`; one node holding the series
  (because another key created it) would answer as for an empty counter. The merge treats such
  a part as empty when another part or group shows the series exists, and otherwise asks for
  every group's series list once (`NEED_SERIES`) before it answers `not_found`.
- A split write keyed by `idempotency_key` sends each part with `part_key(key, group)`: the
  same request retried under the same map makes the same parts with the same keys, so each
  group replays its part's first answer. A request whose keys all fall in one group is sent
  whole, with the caller's own key.
- Every-group writes keep the caller's key on each group (each group keeps its own table).
- A read that cannot hear from every group it needs fails with that group's error, naming it;
  a write that some groups applied and others did not says which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final

import attrs
from msgspec import UNSET

from karma.cluster import merges
from karma.cluster.consume import ConsumePlan, plan_consume
from karma.cluster.parts import JsonObject, Part
from karma.cluster.reply import Reply
from karma.cluster.routes import Route, route_of
from karma.cluster.shardmap import ShardMap
from karma.errors import ErrorCode
from karma.protocol import requests as r
from karma.protocol.fields import MAX_IDEMPOTENCY_KEY_BYTES
from karma.protocol.requests import limits as lr

__all__ = [
    "NEED_SERIES",
    "ConsumePlan",
    "JsonObject",
    "NeedSeries",
    "Part",
    "Plan",
    "SeriesLists",
    "part_key",
    "plan_request",
]

#: group → the series it holds (`tree.list` on it)
SeriesLists = Mapping[str, Collection[str]]


class NeedSeries:
    """The merge needs every group's series list (`tree.list`) to answer exactly."""

    def __repr__(self) -> str:
        return "NEED_SERIES"


NEED_SERIES: Final = NeedSeries()


@attrs.frozen
class Plan:
    request: r.Request
    route: Route
    parts: tuple[Part, ...]
    #: every group of the map, in map order (where series lists are asked)
    groups: tuple[str, ...]

    @property
    def waves(self) -> tuple[tuple[int, ...], ...]:
        """Part indices to send in turn: a later wave only when every earlier part succeeded
        (`early_answer` says when to stop). One wave, all parts, except for an ingest chunk
        with zero values: an `add` stream refuses those, so the parts holding them go first
        and a refusal leaves the other groups untouched, as one node refuses the whole chunk.
        """
        if not isinstance(self.request, r.IngestChunk) or len(self.parts) < 2:
            return (tuple(range(len(self.parts))),)
        zeros = tuple(
            i
            for i, part in enumerate(self.parts)
            if any(self.request.items[p][2] == 0 for p in part.positions)
        )
        rest = tuple(i for i in range(len(self.parts)) if i not in zeros)
        return (zeros, rest) if zeros and rest else (tuple(range(len(self.parts))),)

    def early_answer(self, replies: Sequence[Reply]) -> Reply | None:
        """After a wave that is not the last: the answer when a part failed (no later wave is
        sent), else None."""
        for reply in replies:
            if not reply.success:
                return reply
        return None

    def merge(
        self, replies: Sequence[Reply], series: SeriesLists | None = None
    ) -> Reply | NeedSeries:
        """The one answer, from each part's reply in part order."""
        if len(replies) != len(self.parts):
            raise ValueError(f"{len(replies)} replies for {len(self.parts)} parts")
        if self.route is Route.EVERY_GROUP:
            return merges.every_group(self.request, [p.group for p in self.parts], replies)
        return _merge_keyed(self, list(replies), series)


def part_key(key: str, group: str) -> str:
    """The idempotency key of group `group`'s part of a split write keyed `key`.

    Deterministic in (key, group), so a retry under the same map sends the same parts with the
    same keys; hashed when the plain form would pass karma 1.0's key size limit.
    """
    plain = f"{key}:{group}"
    if len(plain.encode()) <= MAX_IDEMPOTENCY_KEY_BYTES:
        return plain
    return "karma-part:" + hashlib.sha256(f"{key}\0{group}".encode()).hexdigest()


def plan_request(
    request: r.Request, obj: JsonObject, shardmap: ShardMap, *, nonce: str = ""
) -> Plan | ConsumePlan:
    """How `request` (decoded from `obj`) goes to the groups of `shardmap`.

    `nonce` names the holds of an unkeyed cross-group `limit.consume` (any unique text, e.g.
    a uuid4 hex); keyed ones derive theirs from the key.
    """
    groups = tuple(shardmap.groups())
    route = route_of(request)
    if route in (Route.ROUTER, Route.ONE_NODE):
        return Plan(request, route, (Part(groups[0], obj, whole=True),), groups)
    if route is Route.EVERY_GROUP:
        return Plan(request, route, tuple(Part(g, obj, whole=True) for g in groups), groups)
    if isinstance(request, r.KeyRequest):
        return _whole(request, obj, shardmap.owner_of(request.key), groups)
    if isinstance(request, lr.ChargeRequest):
        return _plan_charges(request, obj, shardmap, groups, nonce)
    splitter = _SPLITTERS[type(request)]
    return splitter(request, obj, shardmap, groups)


def _whole(request: r.Request, obj: JsonObject, group: str, groups: tuple[str, ...]) -> Plan:
    return Plan(request, Route.ONE_GROUP, (Part(group, obj, whole=True),), groups)


def _by_group(keys: Sequence[int], shardmap: ShardMap) -> dict[str, list[int]]:
    """Positions of `keys` per owning group, groups in order of their first key."""
    positions: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        positions.setdefault(shardmap.owner_of(key), []).append(index)
    return positions


def _split(
    request: r.Request,
    obj: JsonObject,
    field: str,
    keys: Sequence[int],
    shardmap: ShardMap,
    groups: tuple[str, ...],
    *,
    every_group: bool = False,
) -> Plan:
    """One part per group owning some of `keys` (every group with `every_group`), each with
    its positions of `obj[field]`."""
    owners = _by_group(keys, shardmap)
    if every_group:
        owners = {g: owners.get(g, []) for g in groups}
    if len(owners) <= 1 and not every_group:
        group = next(iter(owners), groups[0])
        return _whole(request, obj, group, groups)
    raw = obj[field]
    assert isinstance(raw, list)  # decoded from obj: the field is a list
    key = request.key_text if type(request) in _KEYED_SPLITS else None
    parts = []
    for group, positions in owners.items():
        sent = dict(obj)
        sent[field] = [raw[i] for i in positions]
        if key is not None:
            sent["idempotency_key"] = part_key(key, group)
        parts.append(Part(group, sent, tuple(positions)))
    return Plan(request, Route.SPLIT, tuple(parts), groups)


def _split_keys(
    request: r.Request, obj: JsonObject, shardmap: ShardMap, groups: tuple[str, ...]
) -> Plan:
    assert isinstance(request, r.KeysRequest)
    return _split(request, obj, "keys", request.keys, shardmap, groups)


def _split_items(
    request: r.Request, obj: JsonObject, shardmap: ShardMap, groups: tuple[str, ...]
) -> Plan:
    assert isinstance(request, r.BatchAdd | r.BatchSet | r.IngestChunk)
    keys = [item[0] for item in request.items]
    chunk = isinstance(request, r.IngestChunk)
    return _split(request, obj, "items", keys, shardmap, groups, every_group=chunk)


def _split_multi_sum(
    request: r.Request, obj: JsonObject, shardmap: ShardMap, groups: tuple[str, ...]
) -> Plan:
    """Per (group, series): a part that fails `not_found` then fails for one series only (a
    request of one series in one group goes whole)."""
    assert isinstance(request, r.MultiSum)
    owners: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(request.items):
        owners.setdefault((shardmap.owner_of(item.key), item.series), []).append(index)
    if len(owners) <= 1:
        group = next(iter(owners), (groups[0], ""))[0]
        return _whole(request, obj, group, groups)
    raw = obj["items"]
    assert isinstance(raw, list)
    parts = []
    for (group, series), positions in owners.items():
        sent = dict(obj)
        sent["items"] = [raw[i] for i in positions]
        parts.append(Part(group, sent, tuple(positions), series=series))
    return Plan(request, Route.SPLIT, tuple(parts), groups)


_Splitter = Callable[[r.Request, JsonObject, ShardMap, tuple[str, ...]], Plan]
_SPLITTERS: Final[dict[type[r.Request], _Splitter]] = {
    **dict.fromkeys([r.BatchSum, r.SeriesBatchSum, r.BatchReset, r.BatchDeleteRange], _split_keys),
    **dict.fromkeys([r.BatchAdd, r.BatchIncrement, r.BatchSet, r.IngestChunk], _split_items),
    r.MultiSum: _split_multi_sum,
}
#: split writes whose parts carry keys derived from the caller's
_KEYED_SPLITS: Final = frozenset(
    {r.BatchReset, r.BatchDeleteRange, r.BatchAdd, r.BatchIncrement, r.BatchSet}
)


def _plan_charges(
    request: lr.ChargeRequest,
    obj: JsonObject,
    shardmap: ShardMap,
    groups: tuple[str, ...],
    nonce: str,
) -> Plan | ConsumePlan:
    charges = request.charges()
    keys = [item.key for item in charges if isinstance(item.key, int)]
    owners = _by_group(keys, shardmap)
    if len(owners) <= 1 or request.items is UNSET or "items" not in obj:
        group = next(iter(owners), groups[0])
        return _whole(request, obj, group, groups)
    if isinstance(request, lr.LimitReserve):
        return _refused(
            request,
            groups,
            "Field items of limit.reserve must name keys of one group in a cluster",
        )
    if isinstance(request, lr.LimitConsume):
        return plan_consume(request, obj, owners, nonce, groups)
    return _split(request, obj, "items", keys, shardmap, groups)


def _refused(request: r.Request, groups: tuple[str, ...], message: str) -> Plan:
    """A plan with no parts, whose merge is a validation error."""
    return _Refused(request, Route.SPLIT, (), groups, message)


@attrs.frozen
class _Refused(Plan):
    message: str = ""

    def merge(
        self, replies: Sequence[Reply], series: SeriesLists | None = None
    ) -> Reply | NeedSeries:
        return Reply.error(ErrorCode.VALIDATION_ERROR, self.message)


def _merge_keyed(
    plan: Plan, replies: list[Reply], series: SeriesLists | None
) -> Reply | NeedSeries:
    request = plan.request
    if type(request) in merges.EMPTYABLE:
        resolved = _resolve_missing(plan, replies, series)
        if not isinstance(resolved, list):
            return resolved
        replies = resolved
    if plan.route is Route.ONE_GROUP:
        return replies[0]
    return merges.split(request, plan.parts, replies)


def _resolve_missing(
    plan: Plan, replies: list[Reply], series: SeriesLists | None
) -> list[Reply] | Reply | NeedSeries:
    """Replies with each `not_found` part of a series that exists elsewhere made empty; or
    NEED_SERIES to learn where it exists; or the `not_found` one node would answer."""
    request = plan.request
    missing = [
        i
        for i, (part, reply) in enumerate(zip(plan.parts, replies, strict=True))
        if merges.series_missing(reply, _series_of(request, part))
    ]
    if not missing:
        return replies
    seen = {
        _series_of(request, part)
        for part, reply in zip(plan.parts, replies, strict=True)
        if reply.success
    }
    held = set().union(*series.values()) if series is not None else None
    if isinstance(request, r.MultiSum) and held is not None:
        # one node answers not_found for the first item, in the caller's order, whose series
        # no group holds
        for item in request.items:
            if item.series not in held and item.series not in seen:
                return merges.not_found(item.series)
    out = list(replies)
    for index in missing:
        part = plan.parts[index]
        name = _series_of(request, part)
        if name in seen or (held is not None and name in held):
            out[index] = Reply.ok(merges.empty_response(request, part.request))
        elif held is None:
            return NEED_SERIES
        else:
            return replies[index]
    return out


def _series_of(request: r.Request, part: Part) -> str:
    if part.series is not None:
        return part.series
    if isinstance(request, r.MultiSum):  # sent whole: one series
        return request.items[0].series if request.items else ""
    assert isinstance(request, r.SeriesRequest)
    return request.name
