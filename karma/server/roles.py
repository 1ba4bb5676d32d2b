"""The runtime role switch the HA task drives (karma.ha.loop.Roles).

- promote: cancel the follower and wait for what it queued, open the gate, start the limit
  expiry sweeper. The HA task opens the fence only after this.
- step_down: synchronous, so nothing can be acked in between: the fence is already closed, the
  gate refuses writes with `not_leader`, the role says slave, the sweeper is cancelled.
- follow: point a new Follower at the leader's address. When the history says our WAL has
  entries the leader never had, the WAL files are copied aside first (`diverged-<term>-<unix>/`,
  the lost LSN range logged) and the follower re-bootstraps from the leader's snapshots — the
  path `replication_gap` already takes — so a divergent tail is kept for inspection, never merged.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from karma.config import Config, Role
from karma.core.counters import NodeStatus
from karma.ha import rules
from karma.observability.logs import Logger
from karma.server import limit_ops
from karma.server.follower_task import Follower
from karma.server.node import Node
from karma.storage import snapshot_files, wal_files

#: this node's last term (the term of the leader whose entries it holds); survives restarts
HA_STATE = "karma.ha.json"


@attrs.define(eq=False)
class ServerRoles:
    config: Config
    directory: Path
    node: Node
    status: NodeStatus
    log: Logger
    nursery: trio.Nursery
    _term: int = attrs.field(default=0, init=False)
    _follower: trio.CancelScope | None = attrs.field(default=None, init=False)
    _follower_done: trio.Event | None = attrs.field(default=None, init=False)
    _sweeper: trio.CancelScope | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        try:
            self._term = int(json.loads((self.directory / HA_STATE).read_text())["term"])
        except (OSError, ValueError, KeyError, TypeError):
            self._term = 0

    # --- what the HA task reads -------------------------------------------------------------------
    def lsn(self) -> int:
        return self.status.wal_current_lsn

    def source_lsn(self) -> int:
        return self.status.replication.source_lsn

    def local_term(self) -> int:
        return self._term

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
        if self.node.writer is not None:
            await self.node.writer.barrier()  # entries it queued are logged and applied

    async def promote(self, term: int) -> None:
        await self.stop_following()
        await self._save_term(term)
        self.node.gate = attrs.evolve(self.node.gate, slave=False)
        self.status.role = str(Role.MASTER)
        self._sweeper = self._start(limit_ops.expire_holds, self.node)[0]
        self.log.info("ha.role", role="master", term=term, lsn=self.lsn())

    async def follow(self, leader: rules.Leader, *, diverged_after: int | None) -> None:
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
            config, self.directory, self.node.engine, self.status, self.node.writer, self.log
        )
        if diverged_after is not None:
            aside = await trio.to_thread.run_sync(self._move_aside, leader.term)
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
        await self._save_term(leader.term)
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

    async def _save_term(self, term: int) -> None:
        if term == self._term:
            return
        data = json.dumps({"term": term}).encode() + b"\n"
        await trio.to_thread.run_sync(snapshot_files.atomic_write, self.directory / HA_STATE, data)
        self._term = term

    def _move_aside(self, term: int) -> Path:
        """Copy every WAL file into diverged-<term>-<unix>/ (blocking; in a thread)."""
        aside = self.directory / f"diverged-{term}-{int(time.time())}"
        aside.mkdir(exist_ok=True)
        for path in wal_files.wal_paths(self.directory):
            shutil.copy2(path, aside / path.name)
        return aside
