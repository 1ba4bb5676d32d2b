"""The runtime role switch the HA task drives (karma.server.ha_task.Roles).

- promote: cancel the follower and wait for what it queued, open the gate, start the limit
  expiry sweeper. The HA task opens the fence only after this.
- step_down: synchronous, so nothing can be acked in between: the fence is already closed, the
  gate refuses writes with `not_leader`, the role says slave, the sweeper is cancelled.
- follow: point a new Follower at the leader's address. When the history says our WAL has
  entries the leader never had, the WAL files are copied aside first (`diverged-<term>-<unix>/`,
  the lost LSN range logged) and the follower re-bootstraps from the leader's snapshots — the
  path `replication_gap` already takes — so a divergent tail is kept for inspection, never merged.

`karma.history` (fsynced JSON, `[[term, start_lsn, node], ...]`) is the term history this
node's WAL follows: written when it is promoted and when it adopts a leader's history. Term
boundaries live here, not in WAL lines, so karma.wal stays byte-compatible with karma 1.0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from karma import tls
from karma.config import Config
from karma.config_values import Role
from karma.core.counters import NodeStatus
from karma.ha import rules
from karma.observability.logs import Logger
from karma.server import limit_ops
from karma.server.follower_task import Follower, move_wal_aside
from karma.server.master_link import MasterLink, ReplicationError
from karma.server.node import Node
from karma.storage import snapshot_files

#: how long a candidate waits for each member's replication.status (spec/ha.md §1)
ASK_TIMEOUT_S = 1.0

#: the term history this node's WAL follows; survives restarts
HISTORY_FILE = "karma.history"


@attrs.define(eq=False)
class ServerRoles:
    config: Config
    directory: Path
    node: Node
    status: NodeStatus
    log: Logger
    nursery: trio.Nursery
    #: this node's name (its master's replica list shows it)
    name: str
    _history: list[rules.TermStart] = attrs.field(factory=list, init=False)
    _follower: trio.CancelScope | None = attrs.field(default=None, init=False)
    _follower_done: trio.Event | None = attrs.field(default=None, init=False)
    _sweeper: trio.CancelScope | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        try:
            data = (self.directory / HISTORY_FILE).read_bytes()
        except OSError:
            return
        self._history = rules.decode_history(data)

    # --- what the HA task reads -------------------------------------------------------------------
    def lsn(self) -> int:
        return self.status.wal_current_lsn

    def source_lsn(self) -> int:
        return self.status.replication.source_lsn

    def local_term(self) -> int:
        """The newest term of the history this node follows (promotion rule 1)."""
        return rules.last_term(self._history)

    def entry_term(self) -> int:
        """The term this node's last entry was written in (sent on every poll)."""
        return rules.term_of_entry(self._history, self.lsn())

    async def ask(self, addr: str) -> tuple[str, int] | None:
        """Another member's own word on its role and LSN, or None when it does not answer."""
        host, _, port = addr.rpartition(":")
        link = MasterLink(
            host,
            int(port),
            self.config.replication_token,
            ASK_TIMEOUT_S,
            tls=tls.link_context(self.config),
        )
        try:
            answer = await link.call("replication.status")
            return str(answer["role"]), int(answer["wal_current_lsn"])
        except (ReplicationError, ValueError, KeyError, TypeError):
            return None
        finally:
            await link.close()

    # --- switches ------------------------------------------------------------------------------
    def become_replica(self) -> None:
        """Read-only at once (synchronous: no write is admitted after this returns)."""
        self.node.gate = attrs.evolve(self.node.gate, slave=True)
        self.status.role = str(Role.SLAVE)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def step_down(self) -> None:
        self.become_replica()

    async def stop_following(self) -> None:
        if self._follower is not None and self._follower_done is not None:
            self._follower.cancel()
            await self._follower_done.wait()
        self._follower = self._follower_done = None
        writer = self.node.context.writer
        if writer is not None:
            await writer.barrier()  # entries it queued are logged and applied

    async def promote(self, term: int, history: list[rules.TermStart]) -> None:
        await self.stop_following()
        await self._adopt(history)
        self.node.gate = attrs.evolve(self.node.gate, slave=False)
        self.status.role = str(Role.MASTER)
        self._sweeper = self._start(limit_ops.expire_holds, self.node.context)[0]
        self.log.info("ha.role", role="master", term=term, lsn=self.lsn())

    async def follow(
        self, leader: rules.Leader, history: list[rules.TermStart], *, diverged_after: int | None
    ) -> None:
        await self.stop_following()
        self.become_replica()
        host, _, port = leader.addr.rpartition(":")
        config = attrs.evolve(
            self.config,
            role=Role.SLAVE,
            replication_source_host=host,
            replication_source_port=int(port),
        )
        follower = Follower(
            config,
            self.directory,
            self.node.context.engine,
            self.status,
            self.node.context.writer,
            self.log,
        )
        follower.name = self.name
        follower.term = self.entry_term
        if diverged_after is not None:
            aside = await trio.to_thread.run_sync(move_wal_aside, self.directory, leader.term)
            self.log.warning(
                "ha.diverged",
                lost_first_lsn=diverged_after + 1,
                lost_last_lsn=self.lsn(),
                leader=leader.node,
                term=leader.term,
                saved=str(aside),
                recovery="re-bootstrapping from the leader; the lost entries are not merged",
            )
            follower.force_bootstrap = True
        # our entries are a prefix of the leader's (checked above, or about to be replaced by
        # its snapshots): its history is ours from now on
        await self._adopt(history)
        self._follower, self._follower_done = self._start(follower.run)
        self.log.info("ha.role", role="slave", leader=leader.addr, term=leader.term)

    # --- helpers -------------------------------------------------------------------------------
    def _start(
        self, fn: Callable[..., Awaitable[object]], *args: object
    ) -> tuple[trio.CancelScope, trio.Event]:
        scope, done = trio.CancelScope(), trio.Event()

        async def scoped() -> None:
            try:
                with scope:
                    await fn(*args)
            finally:
                done.set()

        self.nursery.start_soon(scoped)
        return scope, done

    async def _adopt(self, history: list[rules.TermStart]) -> None:
        if history == self._history:
            return
        data = rules.encode(history) + b"\n"
        path = self.directory / HISTORY_FILE
        await trio.to_thread.run_sync(snapshot_files.atomic_write, path, data)
        self._history = list(history)
