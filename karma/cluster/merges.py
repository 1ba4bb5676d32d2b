"""How the groups' replies become one answer: per op, exactly as one node would answer.

Split ops put each part's answers back at the caller's positions; every-group reads merge
exactly (a key lives in one group, so unions, sums, a merge-sort of keys and a top-K from each
group's top-K are exact); every-group writes answer once every group applied them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Final

from karma.cluster.parts import Part
from karma.cluster.reply import Json, Reply
from karma.errors import ErrorCode
from karma.protocol import requests as r
from karma.protocol.optable import by_class
from karma.protocol.requests import limits as lr

#: error codes that say a group (not the request) failed: the merged answer names the group
_GROUP_FAILURES: Final = frozenset(
    {
        "not_leader",
        "storage_unavailable",
        "replication_timeout",
        "replication_error",
        "internal_error",
        "query_timeout",
    }
)


def not_found(series: str) -> Reply:
    return Reply.error(ErrorCode.NOT_FOUND, f'Tree "{series}" not found')


def series_missing(reply: Reply, series: str) -> bool:
    return reply.error_code == "not_found" and reply.response == f'Tree "{series}" not found'


def _named(group: str, reply: Reply) -> Reply:
    """A group's failure, its message naming the group (once)."""
    if reply.error_code not in _GROUP_FAILURES or reply.message.startswith("Group "):
        return reply
    return Reply(False, f"Group {group}: {reply.message}", reply.error_code)


def _partial(failed: Reply, applied: Sequence[str], refused: Sequence[str]) -> Reply:
    """A write some groups applied and others did not: the first failure, saying where."""
    message = (
        f"{failed.message} (applied on groups {', '.join(applied)}; "
        f"not on {', '.join(refused)}: a retry with the same idempotency key completes it)"
    )
    return Reply(False, message, failed.error_code)


def _idempotent(replies: Sequence[Reply]) -> bool | None:
    """Replayed when every part replayed; absent when no part is a keyed write."""
    flags = [reply.idempotent for reply in replies]
    if all(flag is None for flag in flags):
        return None
    return all(bool(flag) for flag in flags)


# --- empty answers: what one node answers for keys of an existing series that no group holds --
def empty_response(request: r.Request, sent: dict[str, Json]) -> Json:
    found = sent.get("keys")
    keys = found if isinstance(found, list) else []
    count = len(keys)
    if isinstance(request, r.Sum):
        return 0
    if isinstance(request, r.CounterSeries):
        return {}
    if isinstance(request, r.BatchSum):
        return [{"key": key, "value": 0} for key in keys]
    if isinstance(request, r.BatchReset):
        return {"reset": 0, "missing": count}
    if isinstance(request, r.BatchDeleteRange):
        return {"deleted": 0, "missing": count}
    assert isinstance(request, r.MultiSum)
    items = sent.get("items")
    assert isinstance(items, list)
    return [{"series": i["series"], "key": i["key"], "value": 0} for i in items]


#: ops whose part may find its series missing in its group while it exists in another
EMPTYABLE: Final = frozenset(
    by_class(
        dict.fromkeys(
            [r.Sum, r.CounterSeries, r.BatchSum, r.BatchReset, r.BatchDeleteRange, r.MultiSum]
        )
    )
)


# --- split ops --------------------------------------------------------------------------------
def split(request: r.Request, parts: Sequence[Part], replies: Sequence[Reply]) -> Reply:
    failed = [i for i, reply in enumerate(replies) if not reply.success]
    if failed:
        first = min(failed, key=lambda i: parts[i].positions[:1] or (0,))
        reply = _named(parts[first].group, replies[first])
        if type(request) in _SPLIT_WRITES:
            applied = [parts[i].group for i, rp in enumerate(replies) if rp.success]
            if applied:
                refused = [parts[i].group for i in failed]
                return _partial(reply, applied, refused)
        return reply
    merge = _SPLIT_MERGES[type(request)]
    return Reply.ok(merge(request, parts, replies), _idempotent(replies))


def _positional(request: r.Request, parts: Sequence[Part], replies: Sequence[Reply]) -> Json:
    """Lists answered item by item, put back at the caller's positions."""
    size = sum(len(part.positions) for part in parts)
    out: list[Json] = [None] * size
    for part, reply in zip(parts, replies, strict=True):
        answers = reply.response
        assert isinstance(answers, list)
        for position, answer in zip(part.positions, answers, strict=True):
            out[position] = answer
    return out


#: fields of a merged dict that are the same on every part, not summed
_SAME: Final = frozenset({"chunk_seq", "stream_id"})


def _summed(request: r.Request, parts: Sequence[Part], replies: Sequence[Reply]) -> Json:
    """Dicts of counts: counts summed, flags true when every part's is."""
    out: dict[str, Json] = {}
    for reply in replies:
        answer = reply.response
        assert isinstance(answer, dict)
        for name, value in answer.items():
            if name not in out or name in _SAME:
                out.setdefault(name, value)
            elif isinstance(value, bool):
                out[name] = bool(out[name]) and value
            elif isinstance(value, int):
                before = out[name]
                assert isinstance(before, int)
                out[name] = before + value
    return out


def _limit_items(request: r.Request, parts: Sequence[Part], replies: Sequence[Reply]) -> Json:
    """A decision over items (check): allowed when every item is, as one node answers."""
    items: list[Json] = [None] * sum(len(part.positions) for part in parts)
    for part, reply in zip(parts, replies, strict=True):
        answer = reply.response
        assert isinstance(answer, dict)
        part_items = answer["items"]
        assert isinstance(part_items, list)
        for position, item in zip(part.positions, part_items, strict=True):
            items[position] = item
    return decision(items)


def decision(items: list[Json]) -> dict[str, Json]:
    """The items form of a limit answer: `allowed`, `denied` positions, `retry_after_s`."""
    denied: list[int] = []
    retries: list[int] = []
    unknown = False  # a denied item with no retry time: the whole answer has none
    for position, item in enumerate(items):
        if isinstance(item, dict) and not item["allowed"]:
            denied.append(position)
            retry_after = item["retry_after_s"]
            if isinstance(retry_after, int):
                retries.append(retry_after)
            else:
                unknown = True
    retry = None if not retries or unknown else max(retries)
    return {"allowed": not denied, "denied": denied, "retry_after_s": retry, "items": items}


_Merge = Callable[[r.Request, Sequence[Part], Sequence[Reply]], Json]
_SPLIT_MERGES: Final[dict[type[r.Request], _Merge]] = by_class(
    {
        r.BatchSum: _positional,
        r.MultiSum: _positional,
        r.BatchReset: _summed,
        r.BatchDeleteRange: _summed,
        r.BatchAdd: _summed,
        r.BatchSet: _summed,
        r.IngestChunk: _summed,
        lr.LimitCheck: _limit_items,
    }
)
_SPLIT_WRITES: Final = frozenset(
    by_class(
        dict.fromkeys([r.BatchReset, r.BatchDeleteRange, r.BatchAdd, r.BatchSet, r.IngestChunk])
    )
)


# --- every-group ops --------------------------------------------------------------------------
def every_group(request: r.Request, groups: Sequence[str], replies: Sequence[Reply]) -> Reply:
    if isinstance(request, lr.LimitCommit | lr.LimitVoid | lr.LimitReservation):
        return _who_knows(groups, replies)
    name = request.name if isinstance(request, r.SeriesRequest) else None
    # a group that never saw the series holds none of its keys: it adds nothing
    held = [
        (group, reply)
        for group, reply in zip(groups, replies, strict=True)
        if name is None or not series_missing(reply, name)
    ]
    if not held:
        return replies[0]
    failed = [(group, reply) for group, reply in held if not reply.success]
    if failed:
        group, reply = failed[0]
        reply = _named(group, reply)
        if type(request) not in _EVERY_READS:
            applied = [g for g, rp in zip(groups, replies, strict=True) if rp.success]
            if applied:
                return _partial(reply, applied, [g for g, _ in failed])
        return reply
    answers = [reply.response for _, reply in held]
    merge = _EVERY_MERGES.get(type(request))
    response = answers[0] if merge is None else merge(request, answers)
    return Reply.ok(response, _idempotent([reply for _, reply in held]))


def _who_knows(groups: Sequence[str], replies: Sequence[Reply]) -> Reply:
    """A reservation lives on one group: its answer; `not_found` when none knows it."""
    for group, reply in zip(groups, replies, strict=True):
        if reply.success or reply.error_code != "not_found":
            return _named(group, reply)
    return replies[0]


def _union(request: r.Request, answers: list[Json]) -> Json:
    names: dict[str, None] = {}
    for answer in answers:
        assert isinstance(answer, list)
        names.update(dict.fromkeys(answer))
    return list(names)


_KEEP: Final = frozenset({"tree", "branches", "range_from", "range_to"})


def _sums(request: r.Request, answers: list[Json]) -> Json:
    out: dict[str, Json] = {}
    for answer in answers:
        assert isinstance(answer, dict)
        for name, value in answer.items():
            if name in out and name not in _KEEP and isinstance(value, int):
                before = out[name]
                assert isinstance(before, int)
                out[name] = before + value
            else:
                out.setdefault(name, value)
    return out


def _tree_keys(request: r.Request, answers: list[Json]) -> Json:
    """Keys merge-sorted; a group that had more than its page means the merged page is full.

    Each group was asked for `limit` keys after the cursor, so the first `limit` of the merged
    keys are the first `limit` of the series; the next cursor is the last key returned, as on
    one node (no key lives in two groups)."""
    assert isinstance(request, r.TreeKeys)
    limit = r.opt(request.limit) or r.TREE_KEYS_DEFAULT_LIMIT
    pages: list[list[dict[str, int]]] = []
    more = False
    for answer in answers:
        assert isinstance(answer, dict)
        pages.append(answer["keys"])
        more = more or answer["next_cursor"] is not None
    merged = list(heapq.merge(*pages, key=lambda item: item["key"]))
    page = merged[:limit]
    more = more or len(merged) > len(page)
    return {
        "tree": request.name,
        "limit": limit,
        "cursor": request.cursor,
        "next_cursor": page[-1]["key"] if more and page else None,
        "keys": page,
    }


def _tree_top(request: r.Request, answers: list[Json]) -> Json:
    """The top K of the union of each group's top K (every key of the true top K is in its
    own group's top K)."""
    assert isinstance(request, r.TreeTop)
    limit = r.opt(request.limit) or r.TREE_TOP_DEFAULT_LIMIT
    items: list[dict[str, int]] = []
    for answer in answers:
        assert isinstance(answer, dict)
        items.extend(answer["items"])
    items.sort(key=lambda item: (-item["value"], item["key"]))
    return {"tree": request.name, "limit": limit, "items": items[:limit]}


def _tree_series(request: r.Request, answers: list[Json]) -> Json:
    """Points per key, in karma 1.0's branch order (key % 9; within a branch, group order)."""
    merged: dict[str, Json] = {}
    for answer in answers:
        assert isinstance(answer, dict)
        merged.update(answer)
    return dict(sorted(merged.items(), key=lambda kv: int(kv[0]) % 9))


def _first(request: r.Request, answers: list[Json]) -> Json:
    return answers[0]


_EveryMerge = Callable[[r.Request, list[Json]], Json]
_EVERY_MERGES: Final[dict[type[r.Request], _EveryMerge]] = by_class(
    {
        r.TreeList: _union,
        r.TreeInfo: _sums,
        r.TreeSummary: _sums,
        r.TreeKeys: _tree_keys,
        r.TreeTop: _tree_top,
        r.TreeSeries: _tree_series,
        r.IdempotencyPrune: _sums,
        # the rest answer the same on every group ("OK", true, a stream's status)
        r.SystemCompact: _first,
    }
)
_EVERY_READS: Final = frozenset(
    by_class(
        dict.fromkeys([r.TreeList, r.TreeInfo, r.TreeSummary, r.TreeKeys, r.TreeTop, r.TreeSeries])
    )
)
