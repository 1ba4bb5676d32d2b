"""What an op family's handlers may use: the node's parts, not the node.

The request's life (decode, admit, dispatch, record) is `server/node.py`; the families beside it
(`write_ops`, `limit_ops`, `system_ops`, `recovery_ops`, `replication_ops`, `snapshot_ops`)
receive this context and return their answers, so none of them imports the node back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry

from karma.cluster.owner import Ownership
from karma.config import Config
from karma.core.counters import NodeStatus, SlowLog
from karma.core.engine import Engine
from karma.ha.fence import Fence
from karma.ha.rules import TermStart
from karma.observability.logs import Logger
from karma.protocol.scopes import TokenTable
from karma.server.claims import Claims
from karma.server.clock import NodeClock
from karma.server.replicas import Replicas
from karma.server.snapshotter import Snapshotter
from karma.server.wal_writer import WalWriter


@attrs.define(eq=False)
class HaView:
    """The HA task's answers, for the ops that need them (set once the task runs)."""

    #: cluster.topology's answer; None: HA is off
    topology: Callable[[], dict[str, object]] | None = None
    #: the term this node leads or follows (answers carry it when asked)
    current_term: Callable[[], int] = lambda: 0
    #: the group's term history (a replica's poll is checked against it)
    history: Callable[[], Sequence[TermStart]] = lambda: ()
    #: a poll showed a newer term than the one this node leads (refused and logged)
    newer_term_seen: Callable[[int], None] = lambda term: None


@attrs.define(eq=False)
class Context:
    config: Config
    engine: Engine
    status: NodeStatus
    log: Logger
    directory: Path
    writer: WalWriter | None = None
    snapshots: Snapshotter | None = None
    #: recovery checkpoints by source (recovery.json's rows)
    checkpoints: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: HA (--ha-etcd): writes are acknowledged only while this is open (karma.ha.fence)
    fence: Fence | None = None
    ha: HaView = attrs.field(factory=HaView)
    #: in a sharded cluster (--cluster): the map and the owner check (None: not sharded)
    cluster: Ownership | None = None
    #: the replicas polling this node and the LSN each holds (durability "replicated:N")
    replicas: Replicas = attrs.field(factory=Replicas)
    #: the newest slow requests (system.slowlog)
    slowlog: SlowLog = attrs.field(factory=SlowLog)
    #: the karma_* families of system.metrics (made on first use, by system_ops)
    karma_metrics: CollectorRegistry | None = None
    #: --tokens-file's table, with --auth-token/--read-auth-token in it (None: no file)
    tokens: TokenTable | None = None
    _files: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(2))

    #: keys and reservation ids being written (made from the engine and the writer)
    claims: Claims = attrs.field(init=False)
    #: the day written to (never backwards), wall and monotonic time (server/clock.py)
    clocks: NodeClock = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.claims = Claims(self.engine, self.writer)
        self.clocks = NodeClock(self.log)

    def clock(self) -> tuple[int, int]:
        """(the UTC day bucket to write to, Unix seconds): the day never goes backwards."""
        return self.clocks.today()

    async def in_thread(self, fn: Callable[..., Any], *args: object) -> Any:
        """Blocking file work off the event loop (at most two at once)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._files)


#: an op family's handler: the context and the request in, the answer's `response` out
SyncHandler = Callable[[Context, Any], object]
AsyncHandler = Callable[[Context, Any], Awaitable[object]]
