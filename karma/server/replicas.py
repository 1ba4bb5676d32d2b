"""What a master knows of the replicas polling it, for `durability:"replicated:N"` writes.

Each `replication.entries` poll that names its node reports that node's durable LSN (its
`after_lsn`: a replica asks for what follows the last entry it wrote, fsynced when it runs with
--wal-fsync=true), like PostgreSQL's flush feedback or Redis's REPLCONF ACK. A write that asks
for N replicas waits until N nodes reported an LSN at or past its own. Polls long-wait here for
the next entry, so a replica reports a new entry within one round trip of its being logged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs
import trio


@attrs.define(eq=False)
class Replicas:
    clock: Callable[[], float] = time.monotonic
    #: node name -> the LSN it reported on its last poll
    lsns: dict[str, int] = attrs.field(factory=dict)
    #: node name -> monotonic time of its last poll
    polled: dict[str, float] = attrs.field(factory=dict)
    _waiters: list[tuple[int, int, trio.Event]] = attrs.field(factory=list)
    _appended: trio.Event | None = None
    #: HA: only these nodes' reports count (the sync set published in etcd); None: all do
    counted: frozenset[str] | None = None
    #: HA: the published sync set is strict (a failover must reach all of it)
    strict: bool = False
    #: HA: a replicated write waits for the set to be strict; the HA task publishes it
    strict_wanted: bool = False
    _strict_published: trio.Event = attrs.field(factory=trio.Event)
    #: set when a replicated write waits for a strict set: wakes the HA task early
    strict_requested: trio.Event = attrs.field(factory=trio.Event)
    #: the highest LSN acknowledged as replicated (the sync set keeps a node until another
    #: member holds it)
    acked_lsn: int = 0

    def report(self, node: str, lsn: int) -> None:
        self.polled[node] = self.clock()
        self.lsns[node] = lsn
        if self._waiters:
            self._wake_confirmed()

    def _wake_confirmed(self) -> None:
        still = []
        for waiter in self._waiters:
            if self.confirmed(waiter[0]) >= waiter[1]:
                waiter[2].set()
            else:
                still.append(waiter)
        self._waiters = still

    def confirmed(self, lsn: int) -> int:
        """How many replicas that count reported holding `lsn`."""
        counted = self.counted
        return sum(
            1
            for node, held in self.lsns.items()
            if held >= lsn and (counted is None or node in counted)
        )

    def polling(self, within_s: float) -> list[str]:
        """The replicas that polled in the last `within_s` seconds."""
        since = self.clock() - within_s
        return [node for node, at in self.polled.items() if at >= since]

    def published(self, nodes: frozenset[str], *, strict: bool) -> None:
        """HA: the sync set in etcd is now `nodes` (guarded by our term)."""
        self.counted = nodes
        self.strict = strict
        if strict:
            self._strict_published.set()
            self.strict_requested = trio.Event()
        self._wake_confirmed()  # the reports already in may count now

    def unpublished(self) -> None:
        """HA: not the leader (any more), or leading anew: no report counts until a set is
        published, and reports from before (another term's) are forgotten."""
        self.counted = frozenset()
        self.lsns.clear()
        self.polled.clear()
        self.strict = self.strict_wanted = False
        self._strict_published = trio.Event()
        self.strict_requested = trio.Event()
        self.acked_lsn = 0

    async def until_strict(self, timeout_s: float) -> bool:
        if self.strict:
            return True
        self.strict_wanted = True
        self.strict_requested.set()
        event = self._strict_published
        with trio.move_on_after(timeout_s):
            await event.wait()
        return event.is_set()

    def max_lsn(self) -> int:
        return max(self.lsns.values(), default=0)

    async def wait_for(self, lsn: int, count: int, timeout_s: float) -> bool:
        """True once `count` replicas that count hold `lsn`; False after `timeout_s`."""
        if self.confirmed(lsn) >= count:
            return True
        event = trio.Event()
        waiter = (lsn, count, event)
        self._waiters.append(waiter)
        with trio.move_on_after(timeout_s):
            await event.wait()
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        return event.is_set()

    def acknowledged(self, lsn: int) -> None:
        self.acked_lsn = max(self.acked_lsn, lsn)

    def wal_appended(self) -> None:
        """The WAL writer logged entries: wake the polls waiting for one (cheap when none)."""
        if self._appended is not None:
            self._appended.set()
            self._appended = None

    async def wait_for_entries(self, timeout_s: float) -> None:
        if timeout_s <= 0 or math.isnan(timeout_s):
            return
        if self._appended is None:
            self._appended = trio.Event()
        event = self._appended
        with trio.move_on_after(timeout_s):
            await event.wait()
