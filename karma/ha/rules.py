"""What the HA task decides, as plain functions: key names, key values, who may be promoted,
and whether a node's WAL tail diverged from the leader's history (spec/ha.md §1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs
import msgspec

#: below the TTL by this much the gate closes (spec default 2 s at ttl 10; a quarter of
#: short test TTLs so that ttl=3 still leaves 2.25 s of leadership per keepalive)
MAX_MARGIN_S: Final = 2.0


def margin_s(ttl_s: float) -> float:
    return min(MAX_MARGIN_S, ttl_s / 4)


@attrs.frozen
class Keys:
    cluster: str

    @property
    def prefix(self) -> str:
        return f"/karma/{self.cluster}/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def status(self) -> str:
        return self.prefix + "status"

    @property
    def term(self) -> str:
        return self.prefix + "term"

    @property
    def history(self) -> str:
        return self.prefix + "history"

    @property
    def sync(self) -> str:
        return self.prefix + "sync"

    def member(self, node: str) -> str:
        return self.prefix + "members/" + node


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """A member key's value: what every node publishes each loop."""

    node: str
    addr: str
    role: str
    lsn: int
    term: int = 0
    nofailover: bool = False
    priority: int = 1


class LeaderValue(msgspec.Struct, frozen=True, kw_only=True):
    """The leader key's value; its term is the key's create_revision."""

    node: str
    addr: str
    start_lsn: int


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The leader's last published LSN (no lease: it outlives the leader, for the lag rule)."""

    term: int
    lsn: int


class SyncSet(msgspec.Struct, frozen=True, kw_only=True):
    """The replicas whose reports count for `durability:"replicated:N"` writes in `term`.

    Once `strict` (the term acknowledged a replicated write, or is about to), a failover
    must reach every node of the set and only a node in it may win (Patroni's /sync key;
    spec/ha.md §3 with N = 1, the most careful quorum): an acknowledged replicated write is
    then on the winner.
    """

    term: int
    nodes: list[str]
    strict: bool = False


class TermStart(msgspec.Struct, frozen=True, array_like=True):
    """One history row: from `start_lsn + 1` on, entries were written in `term`."""

    term: int
    start_lsn: int
    node: str


@attrs.frozen
class Leader:
    node: str
    addr: str
    start_lsn: int
    term: int


def encode(value: msgspec.Struct | list[TermStart]) -> bytes:
    return msgspec.json.encode(value)


def decode_member(data: bytes) -> Member | None:
    try:
        return msgspec.json.decode(data, type=Member)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # someone else's key, or a newer format: ignored, never fatal


def decode_leader(data: bytes, term: int) -> Leader | None:
    try:
        value = msgspec.json.decode(data, type=LeaderValue)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return Leader(value.node, value.addr, value.start_lsn, term)


def decode_status(data: bytes) -> Status | None:
    try:
        return msgspec.json.decode(data, type=Status)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_sync(data: bytes) -> SyncSet | None:
    try:
        return msgspec.json.decode(data, type=SyncSet)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def next_sync_nodes(
    published: Sequence[str], polling: Iterable[str], lsns: dict[str, int], acked_lsn: int
) -> list[str]:
    """The sync set to publish next: the replicas polling now, plus any published member
    that stopped polling while the new set does not yet hold every acknowledged replicated
    write (dropping it then could lose one at failover)."""
    nodes = sorted(set(polling))
    covered = any(lsns.get(node, 0) >= acked_lsn for node in nodes) if acked_lsn else True
    if not covered:
        nodes = sorted(set(nodes) | set(published))
    return nodes


def deciding_sync(sync: SyncSet | None, latest_term: int) -> SyncSet | None:
    """The sync set that decides who may be promoted: the newest term's, once strict."""
    if sync is not None and sync.strict and sync.nodes and sync.term >= latest_term:
        return sync
    return None


def rivals(members: Iterable[Member], sync: SyncSet | None) -> list[Member]:
    """The members a candidate defers to (by rank or because they are ahead of it).

    While a strict sync set decides, a node outside it can never win, however far ahead: the
    old master of a strict term is not in its own set, and ranking it first would leave every
    node waiting on a candidate that refuses (a read-only group for ever). Its extra entries
    were never acknowledged as replicated; they go aside when it follows the winner. A member
    that still says master is always kept: nobody races a live master.
    """
    if sync is None:
        return list(members)
    return [m for m in members if m.node in sync.nodes or m.role == "master"]


def decode_history(data: bytes) -> list[TermStart]:
    try:
        return msgspec.json.decode(data, type=list[TermStart])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def _rank(member: Member) -> tuple[int, int, str]:
    # the most entries first, then the higher priority, then the smaller name (stable, total)
    return (-member.lsn, -member.priority, member.node)


def refusal_to_promote(
    me: Member, others: Iterable[Member], latest_lsn: int, max_lag: int
) -> str | None:
    """Why `me` must not race for the leader key now, or None when it may.

    Patroni's `_is_healthiest_node`: not nofailover; within the lag bound of the last master
    LSN known; no member still says master; no eligible member is ahead (or level with a
    better priority or name). The guarded create in etcd decides any race that remains.
    """
    if me.nofailover:
        return "nofailover"
    if latest_lsn - me.lsn > max_lag:
        return f"lag {latest_lsn - me.lsn} > --ha-max-lag-on-failover {max_lag}"
    for other in others:
        if other.node == me.node:
            continue
        if other.role == "master":
            return f"member {other.node} still says master"
        if not other.nofailover and latest_lsn - other.lsn <= max_lag and _rank(other) < _rank(me):
            return f"member {other.node} is a better candidate (lsn {other.lsn})"
    return None


def refusal_after_asking(
    me: Member,
    others: Sequence[Member],
    answers: Mapping[str, tuple[str, int] | None],
    sync: SyncSet | None,
    latest_term: int,
) -> str | None:
    """Rule 3, on every other member's own word (`answers`: its (role, lsn), None when it did
    not answer): defer if one is ahead of us or still says master. A member that does not
    answer is taken as gone."""
    if sync is not None:
        # the last term acknowledged replicated writes: they are on some node of its sync
        # set, so only a member of it may win, and only having heard from all of it
        if me.node not in sync.nodes:
            return f"not in term {sync.term}'s sync set {sync.nodes}"
        for name in sync.nodes:
            if name != me.node and answers.get(name) is None:
                return f"sync member {name} of term {sync.term} did not answer"
    rival_names = {m.node for m in rivals(others, sync)}
    for member in others:
        answer = answers.get(member.node)
        if answer is None:
            continue
        role, lsn = answer
        if role == "master":
            return f"member {member.node} says it is master"
        if (
            member.node in rival_names
            and not member.nofailover
            and member.term >= latest_term
            and lsn > me.lsn
        ):
            return f"member {member.node} is ahead (lsn {lsn} > {me.lsn})"
    return None


def with_leader(history: Sequence[TermStart], leader: Leader) -> list[TermStart]:
    """`history`, with the leader's own term appended when it is not there yet."""
    if last_term(history) >= leader.term:
        return list(history)
    return [*history, TermStart(leader.term, leader.start_lsn, leader.node)]


def term_of_entry(history: Sequence[TermStart], lsn: int) -> int:
    """The term entry `lsn` was written in, by `history` (0: before any term)."""
    term = 0
    for row in history:
        if row.start_lsn < lsn:
            term = max(term, row.term)
    return term


def last_term(history: Sequence[TermStart]) -> int:
    return max((row.term for row in history), default=0)


def diverged_after(my_term: int, my_lsn: int, history: Sequence[TermStart]) -> int | None:
    """The LSN after which this node's WAL is not the leader's, or None if it is a prefix.

    Every entry a node holds was written in its last known term or before it. A later term
    that started at an LSN below ours means our entries above that LSN were never the new
    leader's (Raft's prevLogTerm check, PostgreSQL's timeline switch point).
    """
    cut: int | None = None
    for row in history:
        if row.term > my_term and row.start_lsn < my_lsn:
            cut = row.start_lsn if cut is None else min(cut, row.start_lsn)
    return cut
