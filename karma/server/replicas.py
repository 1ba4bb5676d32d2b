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

    def report(self, node: str, lsn: int) -> None:
        self.polled[node] = self.clock()
        self.lsns[node] = lsn
        if self._waiters:
            still = []
            for waiter in self._waiters:
                if self.confirmed(waiter[0]) >= waiter[1]:
                    waiter[2].set()
                else:
                    still.append(waiter)
            self._waiters = still

    def confirmed(self, lsn: int) -> int:
        """How many replicas reported holding `lsn`."""
        return sum(1 for held in self.lsns.values() if held >= lsn)

    def max_lsn(self) -> int:
        return max(self.lsns.values(), default=0)

    async def wait_for(self, lsn: int, count: int, timeout_s: float) -> bool:
        """True once `count` replicas hold `lsn`; False after `timeout_s`."""
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
