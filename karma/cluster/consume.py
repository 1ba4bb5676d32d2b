"""A `limit.consume` whose items span groups: all or nothing, through holds (spec: sharding §4).

Two phases, as a pure plan:
1. `reserve_parts`: a `limit.reserve` per group with that group's items, a short TTL and an id
   derived from the caller's idempotency key (or the caller's nonce when unkeyed);
2. `settle(replies)`: when every group held its items, a `limit.commit` per group; otherwise a
   `limit.void` per group that did hold, and the denial;
3. `finish(settle_replies)`: the answer one node would give — the items form, with `used`,
   `held` and `remaining` as a consume reports them, `denied` naming the caller's positions.

A coordinator that dies between the phases leaves holds that expire after `HOLD_TTL_S`: they
count against the limits until then, never as usage. A keyed consume retried with the same
key (and the same map) makes the same ids: each reserve replays its first answer and each
commit or void replays its own, so a retry never charges twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import attrs

from karma.cluster.merges import decision
from karma.cluster.reply import Json, Reply
from karma.protocol import requests as r
from karma.protocol.requests import limits as lr

#: how long a cross-group consume's holds live if nobody settles them (seconds)
HOLD_TTL_S: Final = 30
_ENVELOPE: Final = ("v", "token", "term", "durability")


def hold_id(key_or_nonce: str, group: str) -> str:
    """The id of one group's hold: deterministic in (caller's key or nonce, group), ≤ 128 bytes."""
    digest = hashlib.sha256(f"{key_or_nonce}\0{group}".encode()).hexdigest()[:40]
    return f"karma-consume:{digest}"


@attrs.frozen
class HoldPart:
    group: str
    request: dict[str, Json]
    positions: tuple[int, ...]
    #: one value per distinct (series, key) of the part, in first-seen order: a hold's items
    values: tuple[int, ...]


@attrs.frozen
class Settlement:
    """Phase two: the requests to send, and how to answer once they are done."""

    parts: tuple[HoldPart, ...]
    #: the answer when every settle succeeds (a denial, an allowed consume, or an error)
    answer: Reply
    committing: bool


@attrs.frozen
class ConsumePlan:
    request: lr.LimitConsume
    reserve_parts: tuple[HoldPart, ...]
    groups: tuple[str, ...]

    @property
    def parts(self) -> tuple[HoldPart, ...]:
        return self.reserve_parts

    def settle(self, replies: Sequence[Reply]) -> Settlement:
        """After phase one: commit everywhere when every group held, else void what was held."""
        held = [
            part
            for part, reply in zip(self.reserve_parts, replies, strict=True)
            if reply.success and isinstance(reply.response, dict) and reply.response["allowed"]
        ]
        failed = [
            (p, rp) for p, rp in zip(self.reserve_parts, replies, strict=True) if not rp.success
        ]
        voids = tuple(_settle_part(part, "limit.void") for part in held)
        if failed:
            part, reply = failed[0]
            return Settlement(voids, _named(part.group, reply), committing=False)
        items: list[Json] = [None] * len(self.request.charges())
        everywhere = len(held) == len(self.reserve_parts)
        for part, reply in zip(self.reserve_parts, replies, strict=True):
            answer = reply.response
            assert isinstance(answer, dict)
            part_held = bool(answer["allowed"])
            for position, item in zip(part.positions, answer["items"], strict=True):
                items[position] = _as_consumed(item, part_held, committing=everywhere)
        answer = Reply.ok(decision(items), _replayed(self.request, replies))
        if not everywhere:
            return Settlement(voids, answer, committing=False)
        commits = tuple(_settle_part(part, "limit.commit") for part in self.reserve_parts)
        return Settlement(commits, answer, committing=True)

    def finish(self, settlement: Settlement, replies: Sequence[Reply]) -> Reply:
        """The answer, once phase two's replies are in."""
        failed = [
            (part.group, reply)
            for part, reply in zip(settlement.parts, replies, strict=True)
            if not reply.success
        ]
        if not failed or not settlement.committing:
            # a void that failed leaves a hold that expires: the denial stands either way
            return settlement.answer
        done = [p.group for p, rp in zip(settlement.parts, replies, strict=True) if rp.success]
        group, reply = failed[0]
        message = (
            f"Group {group}: {reply.message} (committed on groups {', '.join(done) or 'none'}; "
            "retry with the same idempotency key to complete it, or the holds expire in "
            f"{HOLD_TTL_S} s)"
        )
        return Reply(False, message, reply.error_code)


def plan_consume(
    request: lr.LimitConsume,
    obj: dict[str, Json],
    owners: dict[str, list[int]],
    nonce: str,
    groups: tuple[str, ...],
) -> ConsumePlan:
    key = request.key_text
    if key is None and not nonce:
        raise ValueError("an unkeyed cross-group limit.consume needs a nonce")
    raw = obj["items"]
    assert isinstance(raw, list)
    charges = request.charges()
    parts = []
    for group, positions in owners.items():
        sent: dict[str, Json] = {name: obj[name] for name in _ENVELOPE if name in obj}
        sent["op"] = "limit.reserve"
        sent["id"] = hold_id(key if key is not None else nonce, group)
        sent["ttl_s"] = HOLD_TTL_S
        sent["items"] = [raw[i] for i in positions]
        values: dict[tuple[str, int], int] = {}
        for i in positions:
            item = charges[i]
            assert isinstance(item.key, int)
            values.setdefault((lr.item_name(item), item.key), lr.item_value(item))
        parts.append(HoldPart(group, sent, tuple(positions), tuple(values.values())))
    return ConsumePlan(request, tuple(parts), groups)


def _settle_part(part: HoldPart, op: str) -> HoldPart:
    sent: dict[str, Json] = {name: part.request[name] for name in _ENVELOPE if name in part.request}
    sent["op"] = op
    sent["id"] = part.request["id"]
    if op == "limit.commit" and len(part.values) > 1:
        sent["values"] = list(part.values)
    return HoldPart(part.group, sent, part.positions, part.values)


def _as_consumed(item: Json, part_held: bool, *, committing: bool) -> Json:
    """A reserve's item answer as a consume reports it: a held item's value counts as used
    (not held) when every group commits, and as nothing when the consume is denied."""
    assert isinstance(item, dict)
    out = dict(item)
    if part_held:
        value = out["value"]
        assert isinstance(value, int)
        held = out["held"]
        used = out["used"]
        assert isinstance(held, int)
        assert isinstance(used, int)
        out["held"] = held - value
        if committing:
            out["used"] = used + value
        maximum = out["max"]
        assert isinstance(maximum, int)
        out["remaining"] = max(0, maximum - (used + value if committing else used) - (held - value))
    return out


def _replayed(request: r.Request, replies: Sequence[Reply]) -> bool | None:
    """A keyed consume says whether it replayed; an unkeyed one says nothing, as on one node."""
    if request.key_text is None:
        return None
    return all(bool(reply.idempotent) for reply in replies)


def _named(group: str, reply: Reply) -> Reply:
    if reply.error_code in ("not_leader", "storage_unavailable", "replication_timeout") and not (
        reply.message.startswith("Group ")
    ):
        return Reply(False, f"Group {group}: {reply.message}", reply.error_code)
    return reply
