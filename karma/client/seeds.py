"""Seed lists (HA, docs/ha.md): who the leader is, the one failover retry, the highest term.

With several addresses (`karma://h1:p1,h2:p2,h3:p3`, or `seeds=[...]`) a client sends every
call, reads too, to the node it believes is the leader. It learns which node that is by asking
the seeds `cluster.topology` in order: the first that says it is the master (`role` "master":
it holds the leader key and its fence is open) is the leader. No I/O here; `Client` and
`AsyncClient` do the asking.

A call that meets `not_leader`, or loses its connection, makes the client look for the leader
again, for up to `failover_timeout` seconds (a failover takes the group's ttl + loop_wait), and
is sent once more to the leader it finds, if repeating it is safe (`Call.retry_safe`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import msgspec

from karma.client.call import READ_OPS, Call
from karma.client.errors import ConnectionFailed, KarmaError, NotLeader
from karma.client.wire import Answer

Address = tuple[str, int]

#: Seconds between two rounds of questions while no node says it is the master. A failover
#: takes ttl + loop_wait seconds (4 in the tests, 12 by default), so a fifth of a second adds
#: little to it and asks each seed at most five times a second.
POLL_S: Final = 0.2
#: karma/errors.py `KarmaError.not_leader`: "Not the leader: the leader is H:P; retry there".
_HINT: Final = re.compile(r"the leader is (\S+); retry there")


class LeaderAddress(msgspec.Struct, frozen=True):
    node: str = ""
    addr: str = ""


class Topology(msgspec.Struct, frozen=True):
    """The parts of a `cluster.topology` answer the client uses (karma/server/ha_task.py)."""

    role: str = ""
    term: int = 0
    leader: LeaderAddress | None = None

    @property
    def takes_writes(self) -> bool:
        return self.role == "master"

    @property
    def leader_address(self) -> Address | None:
        return None if self.leader is None else address(self.leader.addr)


def read_topology(answer: Answer) -> Topology | None:
    """A successful `cluster.topology` answer's response, or None when it is not one (an error:
    karma 1.0 has no such op)."""
    if not answer.success:
        return None
    try:
        return _decode_topology(answer.response)
    except msgspec.DecodeError:
        return None


_decode_topology: Final = msgspec.json.Decoder(Topology).decode


def address(text: str) -> Address | None:
    """`host:port` (or `[v6]:port`) as an address; None when it is not one."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def hint(exc: KarmaError) -> Address | None:
    """The leader a `not_leader` answer names, if it names one."""
    found = _HINT.search(exc.message) if isinstance(exc, NotLeader) else None
    return None if found is None else address(found.group(1))


def fails_over(exc: KarmaError) -> bool:
    """True for the errors after which the leader is looked for again: the node is not (or no
    longer) the leader, or it could not be reached."""
    return isinstance(exc, NotLeader | ConnectionFailed)


@attrs.frozen
class SeedStatistics:
    #: where calls go now; None until the first call, and after a failover found no leader
    leader: Address | None
    #: the highest term seen in answers and topologies (0: none yet)
    term: int
    #: calls sent a second time, to a leader found after `not_leader` or a lost connection
    failovers: int


@attrs.define(eq=False)
class Seeds:
    addresses: tuple[Address, ...]
    leader: Address | None = None
    term: int = 0
    failovers: int = 0
    #: counts changes of leader: callers that failed at once look for the leader only once
    generation: int = 0

    @classmethod
    def of(cls, addresses: Iterable[Sequence[Any]]) -> Seeds:
        chosen = tuple((str(host), int(port)) for host, port in addresses)
        if not chosen:
            raise ValueError("an empty seed list")
        return cls(chosen)

    def candidates(self, first: Address | None = None) -> list[Address]:
        """Whom to ask, in order: `first` (a not_leader hint), then the seeds."""
        return list(dict.fromkeys([*([] if first is None else [first]), *self.addresses]))

    def elect(self, leader: Address) -> None:
        self.leader = leader
        self.generation += 1

    def forget(self, generation: int) -> None:
        """The leader chosen at `generation` failed: the next call looks for the leader first
        (unless another caller already found a new one)."""
        if generation == self.generation:
            self.leader = None
            self.generation += 1

    def heard(self, generation: int, answers: Iterable[Answer]) -> None:
        """Answers from the leader chosen at `generation`: their terms, and whether it said it
        is not the leader (then the next call looks for the leader first)."""
        for answer in answers:
            self.saw_term(answer.term)
            if answer.error_code == "not_leader":
                self.forget(generation)

    def saw_term(self, term: int | None) -> None:
        if term is not None and term > self.term:
            self.term = term

    def term_for(self, call: Call[Any]) -> int | None:
        """The `term` field a request carries: the highest seen, on writes only."""
        return None if call.op in READ_OPS else self.term

    def statistics(self) -> SeedStatistics:
        return SeedStatistics(self.leader, self.term, self.failovers)


@attrs.define(eq=False)
class Search:
    """One round of questions: ask the candidates in order, and any leader they name."""

    queue: list[Address]
    asked: set[Address] = attrs.field(factory=set)
    #: the first node that answered at all: where calls go when none says it is the master
    answered: Address | None = None
    found: Address | None = None

    def __iter__(self) -> Search:
        return self

    def __next__(self) -> Address:
        if self.found is not None or not self.queue:
            raise StopIteration
        asked = self.queue.pop(0)
        self.asked.add(asked)
        return asked

    def heard(self, asked: Address, topology: Topology | None) -> None:
        if topology is None:
            return
        if self.answered is None:
            self.answered = asked
        if topology.takes_writes:
            self.found = asked
            return
        named = topology.leader_address
        # the leader's own address, as it published it, when it is not among the seeds
        if named is not None and named not in self.asked and named not in self.queue:
            self.queue.insert(0, named)
