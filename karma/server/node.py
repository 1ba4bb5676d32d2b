"""One node's request handling: decode a line, admit it, answer reads, queue writes.

Most requests are handled synchronously: reads are answered at once, writes are queued on the
WAL writer and answered by the returned `Waiting` once their batch is applied. Keyed
(idempotent) writes and limit decisions too: a key being written is claimed at once (`Claim`),
and a copy of it is answered from the first one's outcome (`Duplicate`), so the connection
keeps reading while they wait to be durable. Requests that must wait for something first —
ingest steps, file operations, `term`/`durability` requests, a reservation id being settled —
go through `handle_async`, which the connection awaits in order.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Final

import attrs
import msgspec
import trio
from msgspec import UNSET
from prometheus_client import CollectorRegistry

from karma import days
from karma.config import Config, Role
from karma.core import mutations as m
from karma.core import report
from karma.core.budget import AnyBudget, Budget, Unlimited
from karma.core.counters import NodeStatus, SlowLog
from karma.core.engine import ENGINE_READS, SCANNING_READS, WRITES, Engine, Immediate
from karma.errors import ErrorCode, KarmaError
from karma.ha import rules
from karma.ha.fence import Fence
from karma.ha.rules import TermStart
from karma.observability import metrics
from karma.observability.logs import Logger
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from karma.protocol.optable import Access
from karma.server import limit_ops
from karma.server.replicas import Replicas
from karma.server.snapshotter import Snapshotter
from karma.server.wal_writer import Pending, WalWriter
from karma.storage import files, snapshot_codec, snapshot_files, wal_files


@attrs.define(eq=False)
class Waiting:
    """A write queued on the WAL writer; `answer()` once `pending.done` is set."""

    #: True when `pending` is an earlier request's (a copy of a key in flight), not the newest
    #: write of the connection: its being done says nothing of the connection's later writes
    behind: ClassVar[bool] = False
    node: Node
    pending: Pending
    started: float
    request: r.Request

    def answer(self) -> bytes:
        pending = self.pending
        failed = pending.error is not None
        code = None if pending.error is None else pending.error.code
        self.node.record(self.started, failed=failed, request=self.request, code=code)
        if pending.error is not None:
            return envelope.encode_error(pending.error)
        data = envelope.encode_ok_checked(pending.response, self.node.config.max_response_bytes)
        return self.node.acknowledge(data)


#: builds an answer from a done, successful Pending (may raise KarmaError: answered instead)
Reply = Callable[[Pending], bytes]


@attrs.define(eq=False)
class Deferred(Waiting):
    """An answer that rests on `pending` (a keyed write's own entry, a limit effect, or the
    newest write a denial counted): once it is done, its error, or what `reply` builds."""

    reply: Reply = attrs.field(kw_only=True)

    def answer(self) -> bytes:
        pending = self.pending
        try:
            if pending.error is not None:
                raise pending.error
            data = self.reply(pending)
        except KarmaError as exc:
            self.node.record(self.started, failed=True, request=self.request, code=exc.code)
            return envelope.encode_error(exc)
        self.node.record(self.started, failed=False, request=self.request)
        return self.node.acknowledge(data)


@attrs.define(eq=False)
class Duplicate(Deferred):
    """A copy of a keyed request whose key is being written: answered from the first one."""

    behind: ClassVar[bool] = True


@attrs.define(eq=False)
class Busy(Waiting):
    """A request naming a reservation id that another request is settling: it must be decided
    after that one is applied (`Node.settle` waits for `pending`, then decides it again)."""

    behind: ClassVar[bool] = True

    def answer(self) -> bytes:
        raise AssertionError("a Busy request is decided again, never answered as it is")


@attrs.define(eq=False, slots=True)
class Claim:
    """A key or reservation id being written: the request's fingerprint and its entry."""

    fingerprint: str
    pending: Pending


@attrs.define(eq=False)
class Acknowledgement:
    """A write's answer, built: on an HA node it is checked against the fence once more when
    the connection sends it (answers of one read leave together, after the slowest of them)."""

    node: Node
    data: bytes

    def answer(self) -> bytes:
        return self.node.acknowledge(self.data)


@attrs.frozen
class LongPoll:
    """A poll's answer and how long it waited for entries as the replica asked (`wait_ms`):
    that wait is not counted against --slow-request-ms."""

    answer: object
    waited_s: float


@attrs.define(eq=False)
class Node:
    config: Config
    engine: Engine
    status: NodeStatus
    log: Logger
    writer: WalWriter | None = None
    snapshots: Snapshotter | None = None
    checkpoints: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    gate: Gate = attrs.field(init=False)
    directory: Path = attrs.field(init=False)
    #: keys ("key:K") and reservation ids ("id:I") being written, claimed when submitted and
    #: dropped when the entry is done (by the writer): a copy is answered from the first one
    inflight: dict[str, Claim] = attrs.field(init=False, factory=dict)
    karma_metrics: CollectorRegistry = attrs.field(init=False)
    _files: trio.CapacityLimiter = attrs.field(init=False, factory=lambda: trio.CapacityLimiter(2))
    _second: int = attrs.field(init=False, default=-1)
    #: --slow-request-ms in ms (inf: off), and the newest slow requests (system.slowlog)
    slow_ms: float = attrs.field(init=False, default=float("inf"))
    slowlog: SlowLog = attrs.field(init=False, factory=SlowLog)
    _today: int = attrs.field(init=False, default=0)
    #: HA (--ha-etcd): writes are acknowledged only while this is open (karma.ha.fence)
    fence: Fence | None = None
    #: HA: the HA task's view for cluster.topology
    topology: Callable[[], dict[str, object]] | None = None
    #: HA: the term this node leads or follows (answers carry it when asked)
    current_term: Callable[[], int] = lambda: 0
    #: HA: the group's term history (a replica's poll is checked against it)
    history: Callable[[], Sequence[TermStart]] = lambda: ()
    #: HA: a poll showed a newer term than the one this node leads (refused and logged)
    newer_term_seen: Callable[[int], None] = lambda term: None
    #: the replicas polling this node and the LSN each holds (durability "replicated:N")
    replicas: Replicas = attrs.field(factory=Replicas)

    def __attrs_post_init__(self) -> None:
        self.karma_metrics = metrics.karma_registry(self.stats_values)
        self.gate = Gate(
            self.config.auth_token,
            self.config.read_auth_token,
            # with HA every node starts read-only; the HA task opens the leader's gate
            slave=self.config.role is Role.SLAVE or self.fence is not None,
            fence=self.fence,
        )
        self.directory = Path(self.config.directory).resolve()
        if self.config.slow_request_ms:
            self.slow_ms = float(self.config.slow_request_ms)

    # --- entry points --------------------------------------------------------------------------
    def decode(self, line: bytes) -> r.Request | bytes:
        """The request on `line`, or the error answer for it."""
        try:
            return decode(line, self.gate)
        except KarmaError as exc:
            self.engine.counters.record(0.0, failed=True)
            self.engine.counters.record_error(str(exc.code), _op_of(line))
            return envelope.encode_error(exc)

    @staticmethod
    def is_write(request: r.Request) -> bool:
        return type(request) in WRITES

    @staticmethod
    def decides(request: r.Request) -> bool:
        """A limit decision: it counts pending limit effects itself, so it does not wait for
        the connection's earlier limit requests (but does for its plain writes: connections)."""
        return type(request) in _DECISIONS

    @staticmethod
    def needs_await(request: r.Request) -> bool:
        return type(request) in _ASYNC_OR_SEQUENTIAL or request.asks_term

    @staticmethod
    def _awaits_by_itself(request: r.Request) -> bool:
        return type(request) in _ASYNC_OR_SEQUENTIAL

    def handle(self, request: r.Request) -> bytes | Waiting:
        """Answer a read, or queue a write (its answer comes from the returned Waiting)."""
        started = time.perf_counter()
        try:
            cls = type(request)
            if cls in WRITES:
                self._check_fence()
                if request.idempotency_key is not UNSET and cls in _KEYED_CLASSES:
                    return self._keyed_write(request, started)
                return self._write(request, started)
            if cls in _DECISIONS:
                return self._decide(request, started)
            answer = self._read(request)
        except KarmaError as exc:
            return self._refuse(exc, started, request)
        except Exception as exc:  # noqa: BLE001 - a bug: logged below, answered, server keeps serving
            return self._bug(exc, request, started)
        self.record(started, failed=False, request=request)
        return envelope.encode_ok_checked(answer, self.config.max_response_bytes)

    async def handle_async(self, request: r.Request) -> bytes:
        if request.asks_term:
            return await self._with_term(request)
        return await self._handle_async(request)

    async def _with_term(self, request: r.Request) -> bytes:
        """A request carrying `term` or `durability` (HA, docs/ha.md): fenced by the client's
        term, acknowledged once N replicas hold it, answered with the node's term and LSN."""
        cls = type(request)
        write = optable.SPEC_BY_CLASS[cls].access is not Access.READ
        started = time.perf_counter()
        try:
            replicas = request.replicas_required
            if write and replicas and self.writer is None:
                raise KarmaError.validation('Field durability "replicated:N" needs --wal=true')
            if write and self.fence is not None and (r.opt(request.term) or 0) > self.fence.term:
                raise self.fence.refusal()  # a client has seen a newer term than ours
        except KarmaError as exc:
            return self._refuse(exc, started, request)
        if self._awaits_by_itself(request):
            data = await self._handle_async(request)
        else:
            data = await self.settle(request)
        if not envelope.succeeded(data):
            return data
        lsn = self.status.wal_current_lsn  # this write's own LSN or a later one
        if write and replicas:
            timeout_s = self.config.replicated_timeout_ms / 1000
            deadline = trio.current_time() + timeout_s
            # HA: acked only once etcd says a failover must reach the replicas that count
            strict = self.fence is None or await self.replicas.until_strict(timeout_s)
            left_s = max(0.0, deadline - trio.current_time())
            if not strict or not await self.replicas.wait_for(lsn, replicas, left_s):
                error = KarmaError(
                    ErrorCode.REPLICATION_TIMEOUT,
                    f"Write logged at LSN {lsn} on this node but fewer than {replicas} replicas"
                    f" confirmed it within {self.config.replicated_timeout_ms} ms; retry with"
                    " the same idempotency key",
                )
                self._failed(optable.TAG_BY_CLASS[cls], error.code)
                return envelope.encode_error(error)
            self.replicas.acknowledged(lsn)
        return envelope.with_term(data, self.current_term(), lsn if write else None)

    async def settle(self, request: r.Request) -> bytes:
        """`handle`, waiting for the answer: for a reservation id being settled by another
        request, after that one is done; for a write, until it is durable."""
        while True:
            answer = self.handle(request)
            if not isinstance(answer, Waiting):
                return answer
            with trio.CancelScope(shield=True):  # decided is decided: the effect stays
                await answer.pending.done.wait()
            if not isinstance(answer, Busy):
                return answer.answer()

    async def _handle_async(self, request: r.Request) -> bytes:
        started = time.perf_counter()
        try:
            cls = type(request)
            if optable.SPEC_BY_CLASS[cls].access is not Access.READ:
                self._check_fence()
            limit_op = limit_ops.HANDLERS.get(cls)
            if limit_op is not None:
                answer = await limit_op(self, request)
                self.record(started, failed=False, request=request)
                return answer
            if cls in _SEQUENTIAL:
                response = await self._write_and_wait(request)
                if cls in _STREAM_STEPS:  # one line per stream step: imports are traceable
                    self._log_stream(request, response)
            else:
                response = await _ASYNC_BY_CLASS[cls](self, request)
                if isinstance(response, LongPoll):  # waiting as asked is not being slow
                    started += response.waited_s
                    response = response.answer
        except KarmaError as exc:
            return self._refuse(exc, started, request)
        except Exception as exc:  # noqa: BLE001 - a bug: logged below, answered, server keeps serving
            return self._bug(exc, request, started)
        self.record(started, failed=False, request=request)
        return envelope.encode_ok_checked(response, self.config.max_response_bytes)

    def handle_line(self, line: bytes) -> bytes | Waiting:
        request = self.decode(line)
        return request if isinstance(request, bytes) else self.handle(request)

    def acknowledges(self, request: r.Request) -> bool:
        """Does a success answer to `request` acknowledge a write (fenced on an HA node)?"""
        return optable.SPEC_BY_CLASS[type(request)].access is not Access.READ

    def acknowledge(self, data: bytes) -> bytes:
        """The fencing rule, in this one place (docs/ha.md): no answer that acknowledges a
        write leaves this node after its fence closed, be it the write's first answer or the
        replay of an idempotency record (a copy refused as late left one behind)."""
        fence = self.fence
        if fence is None or fence.may_ack() or not envelope.succeeded(data):
            return data
        self.log.debug("ha.late_ack_refused", overdue_s=round(-fence.remaining_s(), 3))
        return envelope.encode_error(fence.refusal())

    def _check_fence(self) -> None:
        """HA: refuse a write up front once the lease deadline passed (nothing is written)."""
        fence = self.fence
        if fence is not None and not fence.may_ack():
            raise fence.refusal()

    # --- bookkeeping ---------------------------------------------------------------------------
    def record(
        self,
        started: float,
        *,
        failed: bool,
        request: r.Request | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if request is None:
            self.engine.counters.record(elapsed_ms, failed=failed)
            return
        cls = type(request)
        op = optable.TAG_BY_CLASS[cls]
        self.engine.counters.record(elapsed_ms, failed=failed, op=op)
        if failed:
            self._failed(op, ErrorCode.INTERNAL_ERROR if code is None else code)
        if cls in _INGEST_CLASSES:
            self.engine.counters.record_ingest(elapsed_ms)
        if elapsed_ms >= self.slow_ms:  # one comparison per request; inf when disabled
            self.slowlog.record(op, elapsed_ms, time.time(), failed=failed)
            self.log.warning("request.slow", op=op, duration_ms=round(elapsed_ms, 3))

    def _log_stream(self, request: r.Request, response: object) -> None:
        fields = response if isinstance(response, dict) else {"response": response}
        step = optable.TAG_BY_CLASS[type(request)].removeprefix("ingest.")
        self.log.info(
            f"ingest.{step}",
            **{"stream_id": getattr(request, "stream_id", None), **fields},
        )

    def _failed(self, op: str, code: ErrorCode) -> None:
        self.engine.counters.record_error(str(code), op)
        # client mistakes are the client's business: visible at debug, counted always
        self.log.debug("request.failed", op=op, code=str(code))

    def _refuse(self, exc: KarmaError, started: float, request: r.Request) -> bytes:
        if exc.code is ErrorCode.QUERY_TIMEOUT:
            self.engine.counters.query_timeout_count += 1
        self.record(started, failed=True, request=request, code=exc.code)
        return envelope.encode_error(exc)

    def _bug(self, exc: Exception, request: r.Request, started: float) -> bytes:
        self.log.error("internal_error", error=repr(exc), op=r.op_tag(type(request)))
        self.record(started, failed=True, request=request, code=ErrorCode.INTERNAL_ERROR)
        return envelope.encode_error(KarmaError.internal())

    # --- writes --------------------------------------------------------------------------------
    def _mutation(self, request: r.Request) -> m.Mutation | Immediate:
        today, now = self.clock()
        return self.engine.mutation_for(request, today, now, logged=self.writer is not None)

    def clock(self) -> tuple[int, int]:
        """(today's UTC day bucket, Unix seconds); the day is worked out once per second."""
        now = int(time.time())
        if now != self._second:
            self._second, self._today = now, days.today_from_unix(now)
        return self._today, now

    def _write(self, request: r.Request, started: float) -> bytes | Waiting:
        mutation = self._mutation(request)
        if isinstance(mutation, Immediate):
            self.record(started, failed=False, request=request)
            return envelope.encode_ok_checked(mutation.response, self.config.max_response_bytes)
        if self.writer is None:
            # checked just above, synchronously: nothing can have changed in between
            response = self.engine.apply(mutation, checked=True)
        elif self.writer.can_write_now():
            response = self.writer.write_now(mutation)
        else:
            return Waiting(self, self.writer.submit_nowait(mutation), started, request)
        self.record(started, failed=False, request=request)
        return envelope.encode_ok_checked(response, self.config.max_response_bytes)

    async def _commit(self, mutation: m.Mutation) -> object:
        """Log and apply one mutation, waiting for it; raises its error."""
        if self.writer is None:
            return self.engine.apply(mutation)
        pending = self.writer.submit_nowait(mutation)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.response

    async def _write_and_wait(self, request: r.Request) -> object:
        mutation = self._mutation(request)
        if isinstance(mutation, Immediate):
            return mutation.response
        return await self._commit(mutation)

    def _keyed_write(self, request: r.Request, started: float) -> bytes | Waiting:
        """An eligible write with an idempotency key: applied once, whoever retries it.

        The key is claimed as the write is queued; a copy of it meanwhile (this connection or
        another) is answered from the first one's outcome instead of applying again, and
        neither holds up its connection's later requests.
        """
        key = request.key_text
        assert key is not None
        today, now = self.clock()
        mutation = self.engine.normalize(request, today, now)
        assert isinstance(mutation, m.Idempotent)
        fingerprint = mutation.canon().digest()
        claimed = r.opt(request.fingerprint)
        if claimed is not None and str(claimed) != fingerprint:
            raise KarmaError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "Field fingerprint does not match request fingerprint",
            )
        saved = self.engine.idempotency.lookup(key, fingerprint)
        if saved is not None:
            self.record(started, failed=False, request=request)
            return envelope.encode_idempotent(saved.response, replayed=True)
        name = "key:" + key
        claim = self.inflight.get(name)
        if claim is not None:
            return Duplicate(
                self, claim.pending, started, request, reply=self.replay(claim, key, fingerprint)
            )
        self.engine.check(mutation)
        if self.writer is None:
            response = self.engine.apply(mutation)
            self.record(started, failed=False, request=request)
            self._idempotent_write(started)
            return envelope.encode_idempotent(response, replayed=False)
        pending = self.submit(mutation, name, fingerprint)
        return Deferred(self, pending, started, request, reply=partial(self._first_answer, started))

    def _first_answer(self, started: float, pending: Pending) -> bytes:
        self._idempotent_write(started)
        return envelope.encode_idempotent(pending.response, replayed=False)

    def _idempotent_write(self, started: float) -> None:
        self.engine.counters.record_idempotent_write((time.perf_counter() - started) * 1000)

    def submit(
        self, mutation: m.Mutation, claim: str | None = None, fingerprint: str = ""
    ) -> Pending:
        """Queue `mutation` on the WAL writer; with `claim`, that key or id is taken until the
        entry is done (the writer drops it then, whoever waits for the answer, if anyone)."""
        assert self.writer is not None
        pending = self.writer.submit_nowait(mutation)
        if claim is not None:
            taken = self.inflight[claim] = Claim(fingerprint, pending)
            pending.on_done = partial(self._release, claim, taken)
        return pending

    def _release(self, name: str, claim: Claim) -> None:
        if self.inflight.get(name) is claim:
            del self.inflight[name]

    def replay(self, claim: Claim, key: str, fingerprint: str) -> Reply:
        """The answer of a copy of idempotency key `key` while `claim` writes it: the first
        answer replayed for the same request, `idempotency_conflict` for another one (and the
        first one's error if it failed: nothing was applied, the client retries)."""

        def reply(first: Pending) -> bytes:
            saved = self.engine.idempotency.lookup(key, fingerprint)  # a conflict raises
            if saved is not None:
                return envelope.encode_idempotent(saved.response, replayed=True)
            if claim.fingerprint != fingerprint:  # the record is gone already (pruned)
                raise KarmaError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    "Idempotency key was already used with a different request",
                )
            return envelope.encode_idempotent(first.response, replayed=True)

        return reply

    def _decide(self, request: r.Request, started: float) -> bytes | Waiting:
        """A limit decision, made and submitted in this one synchronous step (limit_ops)."""
        cls = type(request)
        if optable.SPEC_BY_CLASS[cls].access is not Access.READ:
            self._check_fence()
        outcome = _DECISIONS[cls](self, request)
        if isinstance(outcome, bytes):
            self.record(started, failed=False, request=request)
            return outcome
        if isinstance(outcome, limit_ops.Later):
            kind = Duplicate if outcome.duplicate else Deferred
            return kind(self, outcome.pending, started, request, reply=outcome.reply)
        return Busy(self, outcome.pending, started, request)

    # --- reads ---------------------------------------------------------------------------------
    def _read(self, request: r.Request) -> object:
        cls = type(request)
        if cls in ENGINE_READS:
            budget = self._budget() if cls in SCANNING_READS else _UNLIMITED
            return self.engine.read(request, budget)
        handler = _SHELL_BY_CLASS.get(cls)
        if handler is None:
            raise KarmaError(ErrorCode.INTERNAL_ERROR, f"{r.op_tag(cls)} has no handler")
        return handler(self, request)

    def _budget(self) -> AnyBudget:
        if not self.config.query_timeout_ms:
            return Unlimited()
        return Budget(time.monotonic, time.monotonic() + self.config.query_timeout_ms / 1000)

    def ping(self, req: r.Ping) -> object:
        return "pong"

    def cluster_topology(self, req: r.ClusterTopology) -> object:
        if self.topology is not None:
            return self.topology()
        return {"ha": False, "role": self.status.role, "leader": None, "term": 0, "members": []}

    def slowlog_entries(self, req: r.SlowLog) -> object:
        return self.slowlog.entries(r.opt(req.limit))

    def health(self, req: r.Health) -> object:
        return report.health(self.status, time.time())

    def stats(self, req: r.Stats) -> object:
        return self.stats_values()

    def stats_values(self) -> dict[str, object]:
        values = report.stats(self.engine, self.status, time.time(), _memory_bytes())
        values["recovery_checkpoint_count"] = len(self.checkpoints)
        values["recovery_last_checkpoint_unix"] = max(
            (int(c.get("updated_at_unix", 0)) for c in self.checkpoints.values()), default=0
        )
        return values

    def metrics(self, req: r.Metrics) -> object:
        return metrics.exposition(self.karma_metrics).decode()

    def reconciliation_report(self, req: r.ReconciliationReport) -> object:
        c = self.engine.counters
        drift, delta = req.absolute_drift or 0, req.max_abs_delta or 0
        c.reconciliation_run_count += 1
        c.reconciliation_checked_points += req.checked_points
        c.reconciliation_mismatch_count += req.mismatch_count
        c.reconciliation_absolute_drift += drift
        c.reconciliation_last_run_unix = int(time.time())
        c.reconciliation_last_checked_points = req.checked_points
        c.reconciliation_last_mismatch_count = req.mismatch_count
        c.reconciliation_last_absolute_drift = drift
        c.reconciliation_last_max_abs_delta = delta
        return "OK"

    def recovery_status(self, req: r.RecoveryStatus) -> object:
        chosen = [
            c
            for name, c in sorted(self.checkpoints.items())
            if req.source is None or name == req.source
        ]
        return {"checkpoint_count": len(chosen), "checkpoints": chosen}

    def replication_status(self, req: r.ReplicationStatus) -> object:
        fields = dict(self.status.replication.fields(report.replayed_lsn(self.status)))
        answer: dict[str, object] = {
            "role": self.status.role,
            "wal_enabled": self.status.wal_enabled,
            "wal_current_lsn": self.status.wal_current_lsn,
            "wal_bytes": self.status.wal_bytes,
            "replayed_lsn": fields.pop("replication_replayed_lsn"),
        }
        answer.update(fields)
        latest = [
            s.meta().presented() for s in snapshot_files.latest_by_series(self.directory).values()
        ]
        answer.update(
            {
                "last_snapshot_lsn": self.status.last_snapshot_lsn,
                "latest_snapshots": latest,
                "recovery": self.recovery_status(r.RecoveryStatus(v=2)),
                "recovery_checkpoint_count": len(self.checkpoints),
            }
        )
        return answer

    # --- operations that wait for files ----------------------------------------------------------
    async def in_thread(self, fn: Callable[..., Any], *args: object) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._files)

    def _snapshotter(self) -> Snapshotter:
        assert self.snapshots is not None
        return self.snapshots

    async def snapshot_create(self, req: r.SnapshotCreate) -> object:
        await self._snapshotter().create_one(req.name)
        return f'Tree "{req.name}" saved'

    async def snapshot_create_all(self, req: r.SnapshotCreateAll) -> object:
        await self._snapshotter().create_all("request")
        return "OK"

    async def snapshot_list(self, req: r.SnapshotList) -> object:
        found = await self.in_thread(snapshot_files.list_snapshots, self.directory)
        return [str(s.path) for s in found]

    async def snapshot_info(self, req: r.SnapshotInfo) -> object:
        return await self.in_thread(self._snapshot_info)

    def _snapshot_info(self) -> dict[str, object]:
        found = snapshot_files.list_snapshots(self.directory)
        latest = [s.meta() for s in snapshot_files.latest_by_series(self.directory).values()]
        latest.sort(key=lambda meta: -meta.timestamp)
        return {
            "dump_count": len(found),
            "latest_by_tree": [meta.presented() for meta in latest],
            "idempotency_snapshot": snapshot_files.idempotency_meta(self.directory),
            "last_snapshot_lsn": max((meta.last_lsn for meta in latest), default=0),
            "wal_enabled": self.status.wal_enabled,
            "wal_bytes": self.status.wal_bytes,
            "wal_current_lsn": self.status.wal_current_lsn,
            "dump_retention_per_tree": self.config.dump_retention_per_tree,
        }

    async def snapshot_verify(self, req: r.SnapshotVerify) -> object:
        from karma.storage import verify

        return await self.in_thread(verify.verify, self.directory)

    async def snapshot_load(self, req: r.SnapshotLoad) -> object:
        snapshot = snapshot_files.resolve(self.directory, req.file)
        if snapshot is None:
            if snapshot_files.TREE_NAME.fullmatch(req.file) is None:
                raise KarmaError.validation(f'Invalid dump file name "{req.file}"')
            series = req.file.split("_", 1)[1].removesuffix(".tree")
            raise KarmaError(ErrorCode.NOT_FOUND, f'Dump "{series}" not found')
        try:
            data = await self.in_thread(snapshot_files.read, snapshot)
            loaded = snapshot_codec.decode_series(data)
        except files.NotRegularFileError as exc:  # removed, or swapped for a link, meanwhile
            raise KarmaError(ErrorCode.NOT_FOUND, f'Dump "{snapshot.series}" not found') from exc
        except (OSError, snapshot_codec.SnapshotError) as exc:
            raise KarmaError.validation(f"Cannot load {req.file}: {exc}") from exc
        # karma 1.0 semantics: memory only, not logged; the next snapshot makes it durable
        self.engine.store.series[snapshot.series] = loaded
        self.log.info("snapshot.load", file=req.file, series=snapshot.series)
        return f'Tree "{snapshot.series}" loaded'

    async def snapshot_fetch(self, req: r.SnapshotFetch) -> object:
        snapshot, data = await self._existing(req.file)
        return {
            "metadata": snapshot.meta().presented(),
            "data_base64": base64.b64encode(data).decode(),
        }

    async def snapshot_fetch_chunk(self, req: r.SnapshotFetchChunk) -> object:
        snapshot, data = await self._existing(req.file)
        return _chunk(snapshot.meta().presented(), data, req.offset, req.limit, "snapshot")

    async def idempotency_snapshot_fetch_chunk(
        self, req: r.IdempotencySnapshotFetchChunk
    ) -> object:
        meta = snapshot_files.idempotency_meta(self.directory)
        path = self.directory / snapshot_files.IDEMPOTENCY
        if meta is not None:
            with contextlib.suppress(files.NotRegularFileError):  # a link is no snapshot
                data = await self.in_thread(files.read_regular, path)
                return _chunk(meta, data, req.offset, req.limit, "idempotency snapshot")
        raise KarmaError(ErrorCode.NOT_FOUND, "Idempotency snapshot not found")

    async def _existing(self, file: str) -> tuple[snapshot_files.SnapshotFile, bytes]:
        """The snapshot named `file` and its bytes: a regular file in the directory only."""
        snapshot = snapshot_files.resolve(self.directory, file)
        if snapshot is not None:
            with contextlib.suppress(files.NotRegularFileError):  # removed or swapped meanwhile
                return snapshot, await self.in_thread(snapshot_files.read, snapshot)
        raise KarmaError(ErrorCode.NOT_FOUND, f'Snapshot "{file}" not found')

    async def recovery_checkpoint(self, req: r.RecoveryCheckpoint) -> object:
        offset = req.source_offset if req.source_offset is not None else req.offset
        # karma 1.0 answers (and stores) a field that was not given as null, not absent
        checkpoint: dict[str, Any] = {
            "source": req.source,
            "offset": None if offset is None else str(offset),
            "event_id": None if req.event_id is None else str(req.event_id),
        }
        checkpoint["updated_at_unix"] = int(time.time())
        updated = dict(self.checkpoints)
        updated[req.source] = checkpoint
        document = {"checkpoints": [c for _, c in sorted(updated.items())]}
        try:
            await self.in_thread(
                snapshot_files.atomic_write,
                self.directory / snapshot_files.RECOVERY,
                msgspec.json.encode(document) + b"\n",
            )
        except OSError as exc:  # atomic: recovery.json still holds the previous checkpoints
            self.log.error("recovery.checkpoint_failed", source=req.source, error=str(exc))
            error = KarmaError.storage(
                "Recovery checkpoint failed", exc, "the previous checkpoints are kept"
            )
            self.status.storage_refused("files", error.message)
            raise error from exc
        self.status.storage_recovered("files")
        self.checkpoints = updated
        self.log.info("recovery.checkpoint", source=req.source, checkpoints=len(updated))
        return checkpoint

    def _active_index(self) -> list[tuple[int, int]] | None:
        """A copy of the writer's (lsn, offset) index of karma.wal, taken on the event loop."""
        return None if self.writer is None else list(self.writer.wal.offsets)

    async def replication_entries(self, req: r.ReplicationEntries) -> object:
        limit = r.opt(req.limit) or r.REPLICATION_DEFAULT_LIMIT
        byte_limit = _entries_byte_limit(self.config.max_response_bytes)
        after_term = r.opt(req.after_term)
        if after_term is not None:
            self._check_poll_term(req.after_lsn, after_term)
        replica = r.opt(req.node)
        if replica is not None:
            self.replicas.report(replica, req.after_lsn)
        wait_ms = r.opt(req.wait_ms)
        waited_s = 0.0
        if wait_ms and self.status.wal_current_lsn <= req.after_lsn:
            began = time.perf_counter()
            await self.replicas.wait_for_entries(min(wait_ms, r.REPLICATION_MAX_WAIT_MS) / 1000)
            waited_s = time.perf_counter() - began
        current = self.status.wal_current_lsn
        entries: list[tuple[int, bytes]] = []
        truncated = False
        if self.config.wal:
            entries, truncated, first = await self.in_thread(
                wal_files.read_after,
                self.directory,
                req.after_lsn,
                limit,
                byte_limit,
                current,
                self._active_index(),
            )
            available_from = first if first is not None else current + 1
            if req.after_lsn + 1 < available_from and req.after_lsn < current:
                raise KarmaError(
                    ErrorCode.REPLICATION_GAP,
                    f"Requested WAL after_lsn {req.after_lsn} is older than snapshot LSN "
                    f"{available_from - 1}; bootstrap from snapshot",
                )
        answer = {
            "after_lsn": req.after_lsn,
            "limit": limit,
            "byte_limit": byte_limit,
            "entries_bytes": sum(
                len(b'{"lsn":,"entry":}') + len(str(lsn)) + len(entry) for lsn, entry in entries
            ),
            "truncated_by_bytes": truncated,
            "count": len(entries),
            "source_lsn": current,
            "entries": [{"lsn": lsn, "entry": msgspec.Raw(entry)} for lsn, entry in entries],
            "next_lsn": entries[-1][0] if entries else req.after_lsn,
            **({} if wait_ms is None else {"wait_ms": wait_ms}),
            **({} if after_term is None else {"term": self.current_term()}),
        }
        return LongPoll(answer, waited_s)

    def _check_poll_term(self, after_lsn: int, after_term: int) -> None:
        """Fencing on polls (Raft's rules): a poll from a newer term is refused (no sync ack
        is gathered from it); a tail we never wrote is refused, so the replica moves it aside
        instead of building on it."""
        fence = self.fence
        if fence is None:
            return
        if fence.term and after_term > fence.term:
            self.newer_term_seen(after_term)
            raise fence.refusal()
        cut = rules.diverged_after(after_term, after_lsn, self.history())
        if cut is not None:
            raise KarmaError(
                ErrorCode.REPLICATION_DIVERGED,
                f"Entries after LSN {cut} (term {after_term}) are not in this master's history;"
                " move the WAL aside and bootstrap",
            )


def _chunk(
    meta: dict[str, object], data: bytes, offset_field: object, limit_field: object, what: str
) -> dict[str, object]:
    offset = r.opt(offset_field) or 0
    limit = r.opt(limit_field) or r.CHUNK_DEFAULT
    assert isinstance(offset, int)
    assert isinstance(limit, int)
    if offset > len(data):
        raise KarmaError.validation(f"Field offset exceeds {what} size")
    piece = data[offset : offset + limit]
    next_offset = offset + len(piece)
    return {
        "metadata": meta,
        "offset": offset,
        "limit": limit,
        "bytes": len(piece),
        "total_bytes": len(data),
        "next_offset": next_offset,
        "done": next_offset >= len(data),
        "data_base64": base64.b64encode(piece).decode(),
    }


def _entries_byte_limit(max_response_bytes: int) -> int:
    """karma 1.0 leaves 2 KiB of the response limit for the envelope around the entries."""
    return (max_response_bytes or 1048576) - 2048


_OP_FIELD: Final = re.compile(rb'"op"\s*:\s*"([a-z_]{1,40}\.[a-z_]{1,40})"')


def _op_of(line: bytes) -> str:
    """The op a refused line named, if it is a known one: the label set stays the op table."""
    found = _OP_FIELD.search(line)
    if found is None:
        return "-"
    op = found.group(1).decode()
    return op if op in optable.CLASS_BY_TAG else "-"


def _memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_UNLIMITED: Final = Unlimited()

_SHELL: Final[dict[type, Callable[[Node, Any], object]]] = {
    r.Ping: Node.ping,
    r.ClusterTopology: Node.cluster_topology,
    r.SlowLog: Node.slowlog_entries,
    r.Health: Node.health,
    r.Stats: Node.stats,
    r.Metrics: Node.metrics,
    r.ReconciliationReport: Node.reconciliation_report,
    r.RecoveryStatus: Node.recovery_status,
    r.ReplicationStatus: Node.replication_status,
}

_ASYNC: Final[dict[type, Callable[[Node, Any], Awaitable[object]]]] = {
    r.SnapshotCreate: Node.snapshot_create,
    r.SnapshotCreateAll: Node.snapshot_create_all,
    r.SnapshotList: Node.snapshot_list,
    r.SnapshotInfo: Node.snapshot_info,
    r.SnapshotVerify: Node.snapshot_verify,
    r.SnapshotLoad: Node.snapshot_load,
    r.SnapshotFetch: Node.snapshot_fetch,
    r.SnapshotFetchChunk: Node.snapshot_fetch_chunk,
    r.IdempotencySnapshotFetchChunk: Node.idempotency_snapshot_fetch_chunk,
    r.RecoveryCheckpoint: Node.recovery_checkpoint,
    r.ReplicationEntries: Node.replication_entries,
}

#: Writes that must see every earlier write applied before they are checked (chunk numbering).
_SEQUENTIAL: Final = frozenset(
    {r.IngestBegin, r.IngestChunk, r.IngestCommit, r.IngestAbort, r.IdempotencyPrune}
)
_STREAM_STEPS: Final = frozenset({r.IngestBegin, r.IngestCommit, r.IngestAbort})
_SHELL_BY_CLASS: Final = optable.by_class(_SHELL)
_ASYNC_BY_CLASS: Final = optable.by_class(_ASYNC)
_ASYNC_OR_SEQUENTIAL: Final = (
    frozenset(_ASYNC_BY_CLASS) | _SEQUENTIAL | frozenset(optable.by_class(limit_ops.HANDLERS))
)
#: limit decisions: decided and submitted synchronously, answered once durable (limit_ops)
_DECISIONS: Final = optable.by_class(limit_ops.DECISIONS)
_INGEST_CLASSES: Final = frozenset(
    cls for cls, tag in optable.TAG_BY_CLASS.items() if tag.startswith("ingest.")
)
#: request classes (aliases included) whose idempotency key makes them keyed writes
_KEYED_CLASSES: Final = frozenset(
    cls for cls, spec in optable.SPEC_BY_CLASS.items() if spec.idempotent
)
