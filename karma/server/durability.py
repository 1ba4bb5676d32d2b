"""A request carrying `term` or `durability` (HA, docs/ha.md): fenced by the client's term,
acknowledged once N replicas hold it, answered with the node's term and LSN.

It wraps any request: `answer` is how the node answers the request itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.server.answers import Books
from karma.server.context import Context


async def with_term(
    ctx: Context,
    books: Books,
    request: r.Request,
    answer: Callable[[r.Request], Awaitable[bytes]],
) -> bytes:
    cls = type(request)
    write = cls in optable.CHANGING
    started = time.perf_counter()
    fence = ctx.fence
    try:
        replicas = request.replicas_required
        if write and replicas and ctx.writer is None:
            raise KarmaError.validation('Field durability "replicated:N" needs --wal=true')
        if write and fence is not None and (r.opt(request.term) or 0) > fence.term:
            raise fence.refusal()  # a client has seen a newer term than ours
    except KarmaError as exc:
        return books.refuse(exc, started, request)
    data = await answer(request)
    if not envelope.succeeded(data):
        return data
    lsn = ctx.status.wal_current_lsn  # this write's own LSN or a later one
    if write and replicas:
        config = ctx.config
        timeout_s = config.replicated_timeout_ms / 1000
        deadline = trio.current_time() + timeout_s
        # HA: acked only once etcd says a failover must reach the replicas that count
        strict = fence is None or await ctx.replicas.until_strict(timeout_s)
        left_s = max(0.0, deadline - trio.current_time())
        if not strict or not await ctx.replicas.wait_for(lsn, replicas, left_s):
            error = KarmaError(
                ErrorCode.REPLICATION_TIMEOUT,
                f"Write logged at LSN {lsn} on this node but fewer than {replicas} replicas"
                f" confirmed it within {config.replicated_timeout_ms} ms; retry with"
                " the same idempotency key",
            )
            books.failed(optable.TAG_BY_CLASS[cls], error.code)
            return envelope.encode_error(error)
        ctx.replicas.acknowledged(lsn)
    return envelope.with_term(data, ctx.ha.current_term(), lsn if write else None)
