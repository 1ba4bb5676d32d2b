"""How a request's answer is finished: the books it is recorded in, and the answers that are
finished later, once the WAL entry they rest on is done.

A handler returns its answer (bytes) or the entry it rests on (`claims.Outcome`); the node
records a finished answer once (`Books.record`) and wraps an unfinished one in a `Waiting`,
which records itself when the connection asks for it. Every answer that acknowledges a write
passes `Books.acknowledge` right before it is sent (the fencing rule, docs/ha.md).
"""

from __future__ import annotations

import time
from typing import ClassVar, Final

import attrs

from karma.core.counters import Counters, SlowLog
from karma.errors import ErrorCode, KarmaError
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.server.claims import Busy as Settling
from karma.server.claims import Later, Outcome, Reply
from karma.server.wal_writer import Pending


@attrs.define(eq=False)
class Books:
    """What an answer leaves behind: counters, the slow log, the error count, and the fence."""

    counters: Counters
    log: Logger
    slowlog: SlowLog
    max_response_bytes: int
    #: HA (--ha-etcd): writes are acknowledged only while this is open (karma.ha.fence)
    fence: Fence | None = None
    #: --slow-request-ms in ms (inf: off)
    slow_ms: float = float("inf")

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
            self.counters.record(elapsed_ms, failed=failed)
            return
        cls = type(request)
        op = optable.TAG_BY_CLASS[cls]
        self.counters.record(elapsed_ms, failed=failed, op=op)
        if failed:
            self.failed(op, ErrorCode.INTERNAL_ERROR if code is None else code)
        if cls in _INGEST_CLASSES:
            self.counters.record_ingest(elapsed_ms)
        if elapsed_ms >= self.slow_ms:  # one comparison per request; inf when disabled
            self.slowlog.record(op, elapsed_ms, time.time(), failed=failed)
            self.log.warning("request.slow", op=op, duration_ms=round(elapsed_ms, 3))

    def failed(self, op: str, code: ErrorCode) -> None:
        self.counters.record_error(str(code), op)
        # client mistakes are the client's business: visible at debug, counted always
        self.log.debug("request.failed", op=op, code=str(code))

    def refuse(self, exc: KarmaError, started: float, request: r.Request) -> bytes:
        if exc.code is ErrorCode.QUERY_TIMEOUT:
            self.counters.query_timeout_count += 1
        self.record(started, failed=True, request=request, code=exc.code)
        return envelope.encode_error(exc)

    def bug(self, exc: Exception, request: r.Request, started: float) -> bytes:
        self.log.error("internal_error", error=repr(exc), op=r.op_tag(type(request)))
        self.record(started, failed=True, request=request, code=ErrorCode.INTERNAL_ERROR)
        return envelope.encode_error(KarmaError.internal())

    def acknowledge(self, data: bytes) -> bytes:
        """The fencing rule, in this one place (docs/ha.md): no answer that acknowledges a
        write leaves this node after its fence closed, be it the write's first answer or the
        replay of an idempotency record (a copy refused as late left one behind)."""
        fence = self.fence
        if fence is None or fence.may_ack() or not envelope.succeeded(data):
            return data
        self.log.debug("ha.late_ack_refused", overdue_s=round(-fence.remaining_s(), 3))
        return envelope.encode_error(fence.refusal())

    def later(self, outcome: Outcome, started: float, request: r.Request) -> Waiting:
        """The answer to come of a handler's unfinished outcome (not bytes)."""
        if isinstance(outcome, Pending):  # a plain write queued: answered from its response
            return Waiting(self, outcome, started, request)
        if isinstance(outcome, Later):
            kind = Duplicate if outcome.duplicate else Deferred
            return kind(self, outcome.pending, started, request, reply=outcome.reply)
        assert isinstance(outcome, Settling)
        return Busy(self, outcome.pending, started, request)


@attrs.define(eq=False)
class Waiting:
    """A write queued on the WAL writer; `answer()` once `pending.done` is set."""

    #: True when `pending` is an earlier request's (a copy of a key in flight), not the newest
    #: write of the connection: its being done says nothing of the connection's later writes
    behind: ClassVar[bool] = False
    books: Books
    pending: Pending
    started: float
    request: r.Request

    def answer(self) -> bytes:
        pending = self.pending
        failed = pending.error is not None
        code = None if pending.error is None else pending.error.code
        self.books.record(self.started, failed=failed, request=self.request, code=code)
        if pending.error is not None:
            return envelope.encode_error(pending.error)
        data = envelope.encode_ok_checked(pending.response, self.books.max_response_bytes)
        return self.books.acknowledge(data)


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
            self.books.record(self.started, failed=True, request=self.request, code=exc.code)
            return envelope.encode_error(exc)
        self.books.record(self.started, failed=False, request=self.request)
        return self.books.acknowledge(data)


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

    books: Books
    data: bytes

    def answer(self) -> bytes:
        return self.books.acknowledge(self.data)


_INGEST_CLASSES: Final = frozenset(
    cls for cls, tag in optable.TAG_BY_CLASS.items() if tag.startswith("ingest.")
)
