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

import re
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Final

import attrs
import trio
from msgspec import UNSET

from karma.config import Config
from karma.config_values import Role
from karma.core import mutations as m
from karma.core.budget import AnyBudget, Budget, Unlimited
from karma.core.counters import NodeStatus
from karma.core.engine import ENGINE_READS, SCANNING_READS, WRITES, Engine, Immediate
from karma.errors import ErrorCode, KarmaError
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from karma.protocol.optable import Access
from karma.server import limit_ops, recovery_ops, replication_ops, snapshot_ops, system_ops
from karma.server.claims import Reply
from karma.server.context import AsyncHandler, Context, SyncHandler
from karma.server.replication_ops import LongPoll
from karma.server.snapshotter import Snapshotter
from karma.server.wal_writer import Pending, WalWriter


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


@attrs.define(eq=False)
class Acknowledgement:
    """A write's answer, built: on an HA node it is checked against the fence once more when
    the connection sends it (answers of one read leave together, after the slowest of them)."""

    node: Node
    data: bytes

    def answer(self) -> bytes:
        return self.node.acknowledge(self.data)


@attrs.define(eq=False)
class Node:
    config: Config
    engine: Engine
    status: NodeStatus
    log: Logger
    writer: WalWriter | None = None
    snapshots: Snapshotter | None = None
    checkpoints: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: HA (--ha-etcd): writes are acknowledged only while this is open (karma.ha.fence)
    fence: Fence | None = None
    #: what the op families' handlers may use (they never see the node)
    context: Context = attrs.field(init=False)
    gate: Gate = attrs.field(init=False)
    #: --slow-request-ms in ms (inf: off)
    slow_ms: float = attrs.field(init=False, default=float("inf"))

    def __attrs_post_init__(self) -> None:
        directory = Path(self.config.directory).resolve()
        self.context = Context(
            self.config,
            self.engine,
            self.status,
            self.log,
            directory,
            self.writer,
            self.snapshots,
            self.checkpoints,
            self.fence,
        )
        self.gate = Gate(
            self.config.auth_token,
            self.config.read_auth_token,
            # with HA every node starts read-only; the HA task opens the leader's gate
            slave=self.config.role is Role.SLAVE or self.fence is not None,
            fence=self.fence,
        )
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
            strict = self.fence is None or await self.context.replicas.until_strict(timeout_s)
            left_s = max(0.0, deadline - trio.current_time())
            if not strict or not await self.context.replicas.wait_for(lsn, replicas, left_s):
                error = KarmaError(
                    ErrorCode.REPLICATION_TIMEOUT,
                    f"Write logged at LSN {lsn} on this node but fewer than {replicas} replicas"
                    f" confirmed it within {self.config.replicated_timeout_ms} ms; retry with"
                    " the same idempotency key",
                )
                self._failed(optable.TAG_BY_CLASS[cls], error.code)
                return envelope.encode_error(error)
            self.context.replicas.acknowledged(lsn)
        return envelope.with_term(data, self.context.ha.current_term(), lsn if write else None)

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
                answer = await limit_op(self.context, request)
                self.record(started, failed=False, request=request)
                return answer
            if cls in _SEQUENTIAL:
                response = await self._write_and_wait(request)
                if cls in _STREAM_STEPS:  # one line per stream step: imports are traceable
                    self._log_stream(request, response)
            else:
                response = await _ASYNC_BY_CLASS[cls](self.context, request)
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
            self.context.slowlog.record(op, elapsed_ms, time.time(), failed=failed)
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
        today, now = self.context.clock()
        return self.engine.mutation_for(request, today, now, logged=self.writer is not None)

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
        today, now = self.context.clock()
        mutation = self.engine.normalize(request, today, now)
        assert isinstance(mutation, m.Idempotent)
        canon = mutation.canon()
        fingerprint = canon.digest()
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
        claim = self.context.claims.get(name)
        if claim is not None:
            return Duplicate(
                self,
                claim.pending,
                started,
                request,
                reply=self.context.claims.replay(claim, key, fingerprint),
            )
        self.engine.check(mutation)
        if self.writer is None:
            response = self.engine.apply(mutation)
            self.record(started, failed=False, request=request)
            self._idempotent_write(started)
            return envelope.encode_idempotent(response, replayed=False)
        pending = self.context.claims.submit(mutation, name, fingerprint, canon.command)
        return Deferred(self, pending, started, request, reply=partial(self._first_answer, started))

    def _first_answer(self, started: float, pending: Pending) -> bytes:
        self._idempotent_write(started)
        return envelope.encode_idempotent(pending.response, replayed=False)

    def _idempotent_write(self, started: float) -> None:
        self.engine.counters.record_idempotent_write((time.perf_counter() - started) * 1000)

    def _decide(self, request: r.Request, started: float) -> bytes | Waiting:
        """A limit decision, made and submitted in this one synchronous step (limit_ops)."""
        cls = type(request)
        if optable.SPEC_BY_CLASS[cls].access is not Access.READ:
            self._check_fence()
        outcome = _DECISIONS[cls](self.context, request)
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
        return handler(self.context, request)

    def _budget(self) -> AnyBudget:
        if not self.config.query_timeout_ms:
            return Unlimited()
        return Budget(time.monotonic, time.monotonic() + self.config.query_timeout_ms / 1000)


_OP_FIELD: Final = re.compile(rb'"op"\s*:\s*"([a-z_]{1,40}\.[a-z_]{1,40})"')


def _op_of(line: bytes) -> str:
    """The op a refused line named, if it is a known one: the label set stays the op table."""
    found = _OP_FIELD.search(line)
    if found is None:
        return "-"
    op = found.group(1).decode()
    return op if op in optable.CLASS_BY_TAG else "-"


_UNLIMITED: Final = Unlimited()

#: the op families' handlers, by request class: each receives the context and the request
_SHELL: Final[dict[type, SyncHandler]] = {
    **system_ops.SYNC,
    **recovery_ops.SYNC,
    **replication_ops.SYNC,
}
_ASYNC: Final[dict[type, AsyncHandler]] = {
    **snapshot_ops.ASYNC,
    **recovery_ops.ASYNC,
    **replication_ops.ASYNC,
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
