"""One node's request handling: decode a line, admit it, hand it to its family, record its answer.

A request's path, top to bottom: `decode` (protocol/decode, with the gate's admission, and in a
sharded cluster the owner check: karma.cluster.owner), then
one dispatch by request class to the family's handler (`write_ops`, `limit_ops`, the engine's
reads, `system_ops`, `recovery_ops`, `replication_ops`, `snapshot_ops`), which does its work
through the `Context` and returns its answer: bytes, or the WAL entry it rests on. The node
records a finished answer once (`answers.Books`) and wraps an unfinished one in a `Waiting`,
which records itself once its entry is done, so the connection keeps reading meanwhile.
Requests that must wait for something first — ingest steps, file operations, `term` or
`durability` (`durability.py`), a reservation id being settled — go through `handle_async`,
which the connection awaits in order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from karma.cluster.owner import Ownership
from karma.config_values import Role
from karma.core.budget import AnyBudget, Budget, Unlimited
from karma.core.engine import ENGINE_READS, SCANNING_READS, WRITES
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate, RefusalError
from karma.server import (
    durability,
    limit_ops,
    recovery_ops,
    replication_ops,
    snapshot_ops,
    system_ops,
    write_ops,
)
from karma.server.answers import Books, Busy, Waiting
from karma.server.audit import Audit
from karma.server.claims import Outcome
from karma.server.context import AsyncHandler, Context, SyncHandler
from karma.server.replication_ops import LongPoll


@attrs.define(eq=False)
class Node:
    #: what the node and the op families' handlers work with (the handlers never see the node)
    context: Context
    gate: Gate = attrs.field(init=False)
    #: where answers are recorded (counters, slow log, errors) and checked against the fence
    books: Books = attrs.field(init=False)
    #: the owner check of a sharded node (--cluster); None: every key is served here
    owner: Ownership | None = attrs.field(init=False)
    #: token refusals, by token name (issue 29)
    audit: Audit = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        ctx = self.context
        config = ctx.config
        self.gate = Gate(
            config.auth_token,
            config.read_auth_token,
            # with HA every node starts read-only; the HA task opens the leader's gate
            slave=config.role is Role.SLAVE or ctx.fence is not None,
            fence=ctx.fence,
            tokens=ctx.tokens,
        )
        self.owner = ctx.cluster
        self.audit = Audit(ctx.log)
        self.books = Books(
            ctx.engine.counters,
            ctx.log,
            ctx.slowlog,
            config.max_response_bytes,
            ctx.fence,
            float(config.slow_request_ms or "inf"),
        )

    # --- decode and admit ----------------------------------------------------------------------
    def decode(self, line: bytes) -> r.Request | bytes:
        """The request on `line`, or the error answer for it."""
        try:
            request = decode(line, self.gate)
            if self.owner is not None:  # sharded: every key must be this group's (else moved)
                self.owner.admit(request)
            return request
        except KarmaError as exc:
            op = _op_of(line)
            self.context.engine.counters.record(0.0, failed=True)
            self.context.engine.counters.record_error(str(exc.code), op)
            if isinstance(exc, RefusalError):
                self.audit.refused(exc.token_name, op, str(exc.code), time.monotonic())
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
        return type(request) in _AWAITED or request.asks_term

    def _check_fence(self) -> None:
        """HA: refuse a write up front once the lease deadline passed (nothing is written)."""
        fence = self.context.fence
        if fence is not None and not fence.may_ack():
            raise fence.refusal()

    # --- dispatch ------------------------------------------------------------------------------
    def handle(self, request: r.Request) -> bytes | Waiting:
        """Answer a read, or decide a write (its answer may come from the returned Waiting)."""
        started = time.perf_counter()
        try:
            cls = type(request)
            decide = _DECIDED.get(cls)
            if decide is not None:  # a write or a limit decision
                if cls in _FENCED:
                    self._check_fence()
                outcome: Outcome = decide(self.context, request)
                if outcome.__class__ is not bytes:
                    return self.books.later(outcome, started, request)
                self.books.record(started, failed=False, request=request)
                return outcome
            answer = self._read(request)
        except KarmaError as exc:
            return self.books.refuse(exc, started, request)
        except Exception as exc:  # noqa: BLE001 - a bug: logged below, answered, server keeps serving
            return self.books.bug(exc, request, started)
        self.books.record(started, failed=False, request=request)
        return envelope.encode_ok_checked(answer, self.context.config.max_response_bytes)

    def _read(self, request: r.Request) -> object:
        cls = type(request)
        if cls in ENGINE_READS:
            budget = self._budget() if cls in SCANNING_READS else _UNLIMITED
            answer = self.context.engine.read(request, budget)
            if cls is r.TreeList and self.gate.tokens is not None:
                return self._in_scope(request, answer)
            return answer
        handler = _SHELL_BY_CLASS.get(cls)
        if handler is None:
            raise KarmaError(ErrorCode.INTERNAL_ERROR, f"{r.op_tag(cls)} has no handler")
        return handler(self.context, request)

    def _in_scope(self, request: r.Request, names: object) -> object:
        """`tree.list` for a scoped token: only the series its prefixes cover."""
        assert self.gate.tokens is not None
        assert isinstance(names, list)
        scope = self.gate.tokens.lookup(request.token)
        if scope is None or scope.everything:
            return names
        return [name for name in names if scope.covers(name)]

    def _budget(self) -> AnyBudget:
        if not self.context.config.query_timeout_ms:
            return Unlimited()
        return Budget(
            time.monotonic, time.monotonic() + self.context.config.query_timeout_ms / 1000
        )

    # --- awaited ------------------------------------------------------------------------------
    async def handle_async(self, request: r.Request) -> bytes:
        if not request.asks_term:
            return await self._handle_async(request)
        # a request carrying term or durability: answered as itself, then acknowledged
        answer = self._handle_async if type(request) in _AWAITED else self.settle
        return await durability.with_term(self.context, self.books, request, answer)

    async def _handle_async(self, request: r.Request) -> bytes:
        started = time.perf_counter()
        try:
            cls = type(request)
            if cls in optable.CHANGING:
                self._check_fence()
            limit_op = limit_ops.HANDLERS.get(cls)
            if limit_op is not None:
                answer = await limit_op(self.context, request)
                self.books.record(started, failed=False, request=request)
                return answer
            response = await _ASYNC_BY_CLASS[cls](self.context, request)
            if isinstance(response, LongPoll):  # waiting as asked is not being slow
                started += response.waited_s
                response = response.answer
        except KarmaError as exc:
            return self.books.refuse(exc, started, request)
        except Exception as exc:  # noqa: BLE001 - a bug: logged below, answered, server keeps serving
            return self.books.bug(exc, request, started)
        self.books.record(started, failed=False, request=request)
        return envelope.encode_ok_checked(response, self.context.config.max_response_bytes)

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

    # --- answers -------------------------------------------------------------------------------
    def acknowledges(self, request: r.Request) -> bool:
        """Does a success answer to `request` acknowledge a write (fenced on an HA node)?"""
        return type(request) in optable.CHANGING

    def handle_line(self, line: bytes) -> bytes | Waiting:
        request = self.decode(line)
        return request if isinstance(request, bytes) else self.handle(request)


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
    **write_ops.ASYNC,
}
#: decided in one synchronous step, answered now or once their entry is done (an Outcome)
_DECIDED: Final[dict[type, Callable[[Context, Any], Outcome]]] = {
    **write_ops.SYNC,
    **optable.by_class(limit_ops.DECISIONS),
}
_FENCED: Final = optable.CHANGING.intersection(_DECIDED)
_SHELL_BY_CLASS: Final = optable.by_class(_SHELL)
_ASYNC_BY_CLASS: Final = optable.by_class(_ASYNC)
#: awaited by the connection whether or not they carry a term
_AWAITED: Final = frozenset(_ASYNC_BY_CLASS) | frozenset(optable.by_class(limit_ops.HANDLERS))
#: limit decisions: decided and submitted synchronously, answered once durable (limit_ops)
_DECISIONS: Final = optable.by_class(limit_ops.DECISIONS)
