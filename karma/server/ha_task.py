"""The HA task: one more sibling in the server nursery (spec/ha.md §1, Patroni's HA loop).

Every `--ha-loop-wait` seconds:
- renew this node's lease (one lease holds its member key and, while it leads, the leader key);
  only a keepalive answered with a TTL counts, and it moves the fence's deadline;
- read every key of the group in one range;
- leader: check the leader key is still ours (same create_revision = term), publish `status`
  (guarded by the term) and its member key; if anything says otherwise, close the fence at once;
  on etcd errors keep trying until the deadline, which closes the fence by itself;
- replica: publish its member key; follow the leader named by the leader key (re-pointing when
  it changes, after the history check); with no leader key, race for it when the rules allow.
  Between rounds it watches the leader key from the range's revision + 1, and a change (the
  key deleted, or created by a rival) starts the next round at once.

The server side of a role switch (cancel the follower, open the gate, start the sweeper, and
back) is behind the `Roles` protocol, implemented by karma.server.roles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from karma.ha import rules
from karma.ha.etcd_client import EtcdClient
from karma.ha.etcd_wire import EtcdError, Lease, RangeResult
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.server.replicas import Replicas

#: a leader whose round failed tries again this soon, while its deadline has not passed
LEADER_RETRY_S: Final = 0.25
#: a leader woken for a strict sync set runs its next round after this pause
STRICT_WAKE_PAUSE_S: Final = 0.05


class Roles(Protocol):
    def lsn(self) -> int: ...

    def source_lsn(self) -> int: ...

    def local_term(self) -> int: ...

    def entry_term(self) -> int: ...

    async def ask(self, addr: str) -> tuple[str, int] | None: ...

    async def promote(self, term: int, history: list[rules.TermStart]) -> None: ...

    async def stop_following(self) -> None: ...

    async def follow(
        self, leader: rules.Leader, history: list[rules.TermStart], *, diverged_after: int | None
    ) -> None: ...

    def step_down(self) -> None: ...


@attrs.frozen
class Settings:
    node: str
    addr: str
    ttl_s: int
    loop_wait_s: float
    max_lag: int
    priority: int
    nofailover: bool
    keys: rules.Keys


@attrs.define(eq=False)
class HaTask:
    settings: Settings
    etcd: EtcdClient
    fence: Fence
    roles: Roles
    log: Logger
    clock: Callable[[], float] = time.monotonic
    lease: Lease | None = None
    #: the term this node leads, 0 while it does not
    term: int = 0
    leader: rules.Leader | None = None
    following: rules.Leader | None = None
    members: list[rules.Member] = attrs.field(factory=list)
    history: list[rules.TermStart] = attrs.field(factory=list)
    #: the highest master LSN seen (status key, leader's member key, our own polls)
    latest_lsn: int = 0
    #: the replicas polling this node: the leader publishes which of them count for
    #: replicated writes (the sync set)
    replicas: Replicas = attrs.field(factory=Replicas)
    #: the sync set in etcd, as last read
    sync: rules.SyncSet | None = None
    rounds: int = 0
    #: stopping: never race for the leader key again
    leaving: bool = False
    #: when the last keepalive (or grant) that etcd confirmed was sent
    _lease_sent: float = attrs.field(default=-math.inf, init=False)
    #: the lease given up on stepping down, to revoke once etcd answers
    _abandoned: int | None = attrs.field(default=None, init=False)
    #: watch the leader key from this revision (the last range's + 1); 0: the round failed
    _watch_from: int = attrs.field(default=0, init=False)
    #: the lease the leader key was last read with
    _leader_lease: int = attrs.field(default=0, init=False)

    @property
    def leading(self) -> bool:
        return self.term != 0

    def current_term(self) -> int:
        """The term this node leads, else the newest term it follows."""
        return self.term or self.roles.local_term()

    def known_history(self) -> list[rules.TermStart]:
        return self.history

    def newer_term_seen(self, term: int) -> None:
        """A replica polled with a newer term than ours; its poll is refused.

        Not a step-down on its word alone: replication.entries needs only a read token, so a
        stray reader could depose the master at will. The lease decides (the next round, or
        the deadline), and the refusal already keeps a zombie from gathering sync acks.
        """
        if self.leading and term > self.term:
            self.log.warning("ha.newer_term_seen", term=self.term, polled_term=term)

    def topology(self) -> dict[str, object]:
        leader = self.leader
        return {
            "ha": True,
            "node": self.settings.node,
            "role": "master" if self.leading and self.fence.may_ack() else "replica",
            "leader": None if leader is None else {"node": leader.node, "addr": leader.addr},
            "term": 0 if leader is None else leader.term,
            "members": [
                {
                    "node": m.node,
                    "addr": m.addr,
                    "role": m.role,
                    "lsn": m.lsn,
                    "nofailover": m.nofailover,
                    "priority": m.priority,
                }
                for m in self.members
            ],
        }

    async def serve(self) -> None:
        """Run the loop until cancelled; on the way out, resign cleanly if leading."""
        try:
            while True:
                started = self.clock()
                next_round = started + self.settings.loop_wait_s
                try:
                    await self.round()
                except EtcdError as exc:
                    self.log.warning(
                        "ha.etcd_failed",
                        error=str(exc),
                        leading=self.leading,
                        fenced_in_s=round(self.fence.remaining_s(), 3) if self.leading else None,
                    )
                    if self.leading and not self.fence.may_ack():
                        self._step_down("lease deadline passed without etcd")
                    elif self.leading:
                        # retry until the deadline (an etcd election takes 0.5-2 s), not a
                        # whole loop_wait later
                        next_round = min(next_round, self.clock() + LEADER_RETRY_S)
                self.rounds += 1
                # a leader past its deadline must not wait a whole round to notice
                await self._sleep(next_round)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._resign()
            await self.etcd.aclose()

    async def hand_over(self, timeout_s: float) -> None:
        """A planned stop (SIGTERM): stop acking, let the replicas fetch every entry, then
        delete the leader key, so the replica that takes over has everything acknowledged.

        Replicas are still polling (the listener is open until this returns); the best of
        them wins the race (it asks every member, us included: we answer as a replica).
        """
        self.leaving = True
        term = self.term
        if not term:
            return
        lsn = self.roles.lsn()
        waiting = max(1, len(self.replicas.polling(self.settings.ttl_s)))
        # not _step_down: the lease must keep our leader key until the replicas caught up
        self.log.info("ha.step_down", reason="stopping: handing over", term=term)
        self.fence.close()
        self.term = 0
        self.following = None
        self.replicas.unpublished()
        self.roles.step_down()
        self.replicas.counted = None  # every replica's report counts now
        caught_up = await self.replicas.wait_for(lsn, waiting, timeout_s)
        self.log.info("ha.hand_over", term=term, lsn=lsn, replicas_caught_up=caught_up)
        with trio.move_on_after(timeout_s):
            try:
                await self.etcd.delete_if(self.settings.keys.leader, create_revision=term)
            except EtcdError as exc:
                self.log.warning("ha.resign_failed", error=str(exc))

    async def _sleep(self, until: float) -> None:
        """Until `until` (this task's clock); a replica wakes up early when the leader key
        changes: deleted (race now, not up to a loop_wait later) or created (follow now).

        The watch starts at the last range's revision + 1, so a change between the range and
        the watch is not missed. A watch that fails is not retried before the next round.
        """
        with trio.move_on_after(max(0.0, until - self.clock())):
            if self.leading:  # a replicated write waits for a strict sync set: publish now
                await self.replicas.strict_requested.wait()
                await trio.sleep(STRICT_WAKE_PAUSE_S)  # still set if etcd failed: no spin
                return
            if self._watch_from:
                try:
                    events = await self.etcd.watch(
                        self.settings.keys.leader, start_revision=self._watch_from
                    )
                except EtcdError as exc:
                    self.log.debug("ha.watch_failed", error=str(exc))
                else:
                    self.log.info("ha.leader_changed", events=[e.type for e in events])
                    return
            await trio.sleep_forever()

    async def _resign(self) -> None:
        """Shutdown: stop acking, delete our leader key (if still ours), revoke the lease."""
        term = self.term
        self.fence.close()
        self.term = 0
        try:
            if term:
                await self.etcd.delete_if(self.settings.keys.leader, create_revision=term)
            if self.lease is not None:
                await self.etcd.revoke(self.lease.id)
        except EtcdError as exc:
            self.log.warning("ha.resign_failed", error=str(exc))

    # --- one round ------------------------------------------------------------------------------
    async def round(self) -> None:
        self._watch_from = 0
        await self._renew()
        cluster = await self.etcd.range(self.settings.keys.prefix, prefix=True)
        self._watch_from = cluster.revision + 1
        self._read(cluster)
        if self.leading:
            await self._as_leader()
        else:
            await self._as_replica()

    async def _renew(self) -> None:
        if self._abandoned is not None:
            # deletes the leader key it may hold now, rather than ttl after the last keepalive
            await self.etcd.revoke(self._abandoned)
            self._abandoned = None
        sent = self.clock()
        if self.lease is not None:
            ttl = await self.etcd.keepalive(self.lease.id)
            if ttl is None:
                self.log.warning("ha.lease_lost", lease=self.lease.id, leading=self.leading)
                self.lease = None
                if self.leading:
                    self._step_down("lease expired")
            elif self.leading:
                self.fence.renewed(sent, self.settings.ttl_s, rules.margin_s(self.settings.ttl_s))
                self._log_deadline()
        if self.lease is None:
            sent = self.clock()
            self.lease = await self.etcd.grant(self.settings.ttl_s)
            self._lease_sent = sent
        else:
            self._lease_sent = sent

    def _log_deadline(self) -> None:
        # wall-clock deadline, so a checker can compare acks with it (tests/jepsen)
        deadline = time.time() + self.fence.remaining_s()
        self.log.debug("ha.renewed", term=self.term, deadline_unix=round(deadline, 4))

    def _read(self, cluster: RangeResult) -> None:
        keys = self.settings.keys
        self.leader = None
        self.sync = None
        members: list[rules.Member] = []
        for kv in cluster.kvs:
            if kv.key == keys.leader:
                self.leader = rules.decode_leader(kv.value, kv.create_revision)
                self._leader_lease = kv.lease
            elif kv.key == keys.status:
                status = rules.decode_status(kv.value)
                if status is not None:
                    self.latest_lsn = max(self.latest_lsn, status.lsn)
            elif kv.key == keys.history:
                self.history = rules.decode_history(kv.value)
            elif kv.key == keys.sync:
                self.sync = rules.decode_sync(kv.value)
            elif kv.key.startswith(keys.prefix + "members/"):
                member = rules.decode_member(kv.value)
                if member is not None:
                    members.append(member)
                    if member.role == "master":
                        self.latest_lsn = max(self.latest_lsn, member.lsn)
        self.members = sorted(members, key=lambda m: m.node)
        self.latest_lsn = max(self.latest_lsn, self.roles.source_lsn())
        leader = self.leader
        self.fence.leader_addr = (
            None if leader is None or leader.node == self.settings.node else leader.addr
        )

    def _me(self, role: str) -> rules.Member:
        s = self.settings
        return rules.Member(
            node=s.node,
            addr=s.addr,
            role=role,
            lsn=self.roles.lsn(),
            term=self.term or self.roles.local_term(),
            nofailover=s.nofailover,
            priority=s.priority,
        )

    async def _publish(self, role: str) -> None:
        assert self.lease is not None
        member = self._me(role)
        await self.etcd.put(
            self.settings.keys.member(self.settings.node), rules.encode(member), lease=self.lease.id
        )

    async def _as_leader(self) -> None:
        leader = self.leader
        if leader is None or leader.node != self.settings.node or leader.term != self.term:
            self._step_down("the leader key is gone or not ours")
            return
        keys = self.settings.keys
        status = rules.Status(term=self.term, lsn=self.roles.lsn())
        if not await self.etcd.guarded_put(
            keys.status, rules.encode(status), guard=keys.leader, create_revision=self.term
        ):
            self._step_down("guarded status write failed")
            return
        await self._publish_sync()
        if self.leading:
            await self._publish("master")

    async def _publish_sync(self) -> None:
        """Publish which replicas count for replicated writes, when that changed."""
        s, replicas = self.settings, self.replicas
        published = replicas.counted or frozenset()
        nodes = rules.next_sync_nodes(
            sorted(published), replicas.polling(s.ttl_s), replicas.lsns, replicas.acked_lsn
        )
        strict = replicas.strict or replicas.strict_wanted
        if (
            replicas.counted is not None
            and frozenset(nodes) == published
            and strict == replicas.strict
        ):
            return
        value = rules.SyncSet(term=self.term, nodes=nodes, strict=strict)
        if not await self.etcd.guarded_put(
            s.keys.sync, rules.encode(value), guard=s.keys.leader, create_revision=self.term
        ):
            self._step_down("guarded sync write failed")
            return
        replicas.published(frozenset(nodes), strict=strict)
        self.log.info("ha.sync_set", term=self.term, nodes=nodes, strict=strict)

    async def _as_replica(self) -> None:
        await self._publish("replica")
        leader = self.leader
        if leader is not None:
            if leader.node == self.settings.node:
                if (
                    self.lease is not None
                    and self._leader_lease == self.lease.id
                    and not self.leaving  # handing over: the key goes once replicas caught up
                ):
                    # a create of ours whose answer was lost (timed out): the key would live
                    # as long as we renew the lease, never led; give the lease up
                    self._step_down("our leader key, from a create whose answer was lost")
                # else our own key from before a restart: its lease is not ours; wait it out
                return
            if self.following is None or self.following.term != leader.term:
                # the new leader writes `history` right after its key: read in between, the
                # key's own start_lsn stands in for the row, so we never adopt a history
                # without the term we follow
                history = rules.with_leader(self.history, leader)
                cut = rules.diverged_after(self.roles.entry_term(), self.roles.lsn(), history)
                self.log.info(
                    "ha.follow",
                    leader=leader.node,
                    addr=leader.addr,
                    term=leader.term,
                    diverged_after=cut,
                )
                await self.roles.follow(leader, history, diverged_after=cut)
                self.following = leader
            return
        await self._race()

    async def _race(self) -> None:
        if self.leaving:
            return
        s = self.settings
        me = self._me("replica")
        sync = rules.deciding_sync(self.sync, rules.last_term(self.history))
        rivals = rules.rivals(self.members, sync)
        reason = rules.refusal_to_promote(me, rivals, self.latest_lsn, s.max_lag)
        if reason is None and rules.last_term(self.history) > self.roles.local_term():
            # rule 1: a node that missed a term (a stale former master) never wins
            reason = (
                f"our history ends at term {self.roles.local_term()}, the group's at"
                f" {rules.last_term(self.history)}"
            )
        if reason is None:
            reason = await self._ask_members(me, sync)
        if reason is not None:
            self.log.info("ha.not_promoting", reason=reason, lsn=me.lsn, latest=self.latest_lsn)
            return
        # stop applying the old master's entries first: the LSN we publish must be final
        await self.roles.stop_following()
        self.following = None
        lsn = self.roles.lsn()
        if self.latest_lsn - lsn > s.max_lag:
            return
        assert self.lease is not None
        lease_sent = self._lease_sent
        value = rules.LeaderValue(node=s.node, addr=s.addr, start_lsn=lsn)
        created = await self.etcd.create(s.keys.leader, rules.encode(value), lease=self.lease.id)
        if not created.succeeded:
            self.log.info("ha.race_lost")
            return
        term = created.revision
        self.term = term
        self.fence.term = term
        self.fence.leader_addr = None
        self.leader = rules.Leader(s.node, s.addr, lsn, term)
        history = [*self.history, rules.TermStart(term, lsn, s.node)]
        if not await self.etcd.guarded_put(
            s.keys.history, rules.encode(history), guard=s.keys.leader, create_revision=term
        ):
            self._step_down("guarded history write failed")
            return
        self.history = history
        await self.etcd.guarded_put(
            s.keys.term,
            rules.encode(rules.Status(term=term, lsn=lsn)),
            guard=s.keys.leader,
            create_revision=term,
        )
        self.replicas.unpublished()
        await self.roles.promote(term, history)
        # writes open only now, and only until the lease's deadline as of its last renewal
        self.fence.renewed(lease_sent, s.ttl_s, rules.margin_s(s.ttl_s))
        self._log_deadline()
        remaining = round(self.fence.remaining_s(), 3)
        self.log.info("ha.promoted", term=term, lsn=lsn, fenced_in_s=remaining)
        await self._publish_sync()
        if self.leading:
            await self._publish("master")

    async def _ask_members(self, me: rules.Member, sync: rules.SyncSet | None) -> str | None:
        """Rule 3: every member's own word (1 s each, at once), judged by the rules."""
        answers: dict[str, tuple[str, int] | None] = {}
        others = [m for m in self.members if m.node != me.node]
        latest_term = rules.last_term(self.history)

        async def ask(member: rules.Member) -> None:
            answers[member.node] = await self.roles.ask(member.addr)

        async with trio.open_nursery() as nursery:
            for member in others:
                nursery.start_soon(ask, member)
        return rules.refusal_after_asking(me, others, answers, sync, latest_term)

    def _step_down(self, reason: str) -> None:
        self.log.warning("ha.step_down", reason=reason, term=self.term)
        self.fence.close()
        self.term = 0
        self.following = None
        self.replicas.unpublished()
        if self.lease is not None:
            # give the lease up: it may still hold our leader key (the deadline passed while
            # etcd was unreachable, and etcd kept the lease), and a replica renewing it would
            # keep that key, and the group read-only, for ever
            self._abandoned = self.lease.id
            self.lease = None
        self.roles.step_down()
