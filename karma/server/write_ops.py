"""The store's writes: plain, keyed (idempotent) and sequential (ingest steps, pruning).

Each handler receives the context and the request and returns its outcome: the answer, built,
or the WAL entry it rests on (`claims.Outcome`: the node wraps it in the answer to come). A
sequential write waits for its entry, and returns its response.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Final

from msgspec import UNSET

from karma.core import mutations as m
from karma.core.engine import WRITES, Immediate
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.server.claims import Later, Outcome
from karma.server.context import AsyncHandler, Context
from karma.server.wal_writer import Pending


def _mutation(ctx: Context, request: r.Request) -> m.Mutation | Immediate:
    today, now = ctx.clock()
    return ctx.engine.mutation_for(request, today, now, logged=ctx.writer is not None)


def write(ctx: Context, request: r.Request) -> Outcome:
    """A write: keyed when its op takes an idempotency key and it carries one; else a plain
    write, applied at once when it can be (no WAL, or nothing queued and no fsync), else
    queued on the WAL writer (its answer rests on the returned entry)."""
    if request.idempotency_key is not UNSET and type(request) in _KEYED:
        return keyed(ctx, request)
    mutation = _mutation(ctx, request)
    if isinstance(mutation, Immediate):
        response = mutation.response
    elif ctx.writer is None:
        # checked just above, synchronously: nothing can have changed in between
        response = ctx.engine.apply(mutation, checked=True)
    elif ctx.writer.can_write_now():
        response = ctx.writer.write_now(mutation)
    else:
        return ctx.writer.submit_nowait(mutation)
    return envelope.encode_ok_checked(response, ctx.config.max_response_bytes)


def keyed(ctx: Context, request: r.Request) -> Outcome:
    """An eligible write with an idempotency key: applied once, whoever retries it.

    The key is claimed as the write is queued; a copy of it meanwhile (this connection or
    another) is answered from the first one's outcome instead of applying again, and
    neither holds up its connection's later requests.
    """
    started = time.perf_counter()
    engine = ctx.engine
    key = request.key_text
    assert key is not None
    today, now = ctx.clock()
    mutation = engine.normalize(request, today, now)
    assert isinstance(mutation, m.Idempotent)
    canon = mutation.canon()
    fingerprint = canon.digest()
    claimed = r.opt(request.fingerprint)
    if claimed is not None and str(claimed) != fingerprint:
        raise KarmaError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            "Field fingerprint does not match request fingerprint",
        )
    saved = engine.idempotency.lookup(key, fingerprint)
    if saved is not None:
        return envelope.encode_idempotent(saved.response, replayed=True)
    name = "key:" + key
    claim = ctx.claims.get(name)
    if claim is not None:
        reply = ctx.claims.replay(claim, key, fingerprint)
        return Later(claim.pending, reply, duplicate=True)
    engine.check(mutation)
    if ctx.writer is None:
        response = engine.apply(mutation, canon=(canon.command, fingerprint))
        _idempotent_write(ctx, started)
        return envelope.encode_idempotent(response, replayed=False)
    pending = ctx.claims.submit(mutation, name, fingerprint, canon.command)
    return Later(pending, partial(_first_answer, ctx, started))


def _first_answer(ctx: Context, started: float, pending: Pending) -> bytes:
    _idempotent_write(ctx, started)
    return envelope.encode_idempotent(pending.response, replayed=False)


def _idempotent_write(ctx: Context, started: float) -> None:
    ctx.engine.counters.record_idempotent_write((time.perf_counter() - started) * 1000)


async def sequential(ctx: Context, request: r.Request) -> object:
    """A write that must see every earlier write applied before it is checked (chunk
    numbering): logged and applied, waited for; one log line per stream step."""
    mutation = _mutation(ctx, request)
    if isinstance(mutation, Immediate):
        response = mutation.response
    else:
        response = await _commit(ctx, mutation)
    if type(request) in _STREAM_STEPS:  # one line per stream step: imports are traceable
        _log_stream(ctx, request, response)
    return response


async def _commit(ctx: Context, mutation: m.Mutation) -> object:
    """Log and apply one mutation, waiting for it; raises its error."""
    if ctx.writer is None:
        return ctx.engine.apply(mutation)
    pending = ctx.writer.submit_nowait(mutation)
    await pending.done.wait()
    if pending.error is not None:
        raise pending.error
    return pending.response


def _log_stream(ctx: Context, request: r.Request, response: object) -> None:
    fields = response if isinstance(response, dict) else {"response": response}
    step = optable.TAG_BY_CLASS[type(request)].removeprefix("ingest.")
    ctx.log.info(
        f"ingest.{step}",
        **{"stream_id": getattr(request, "stream_id", None), **fields},
    )


_STREAM_STEPS: Final = frozenset({r.IngestBegin, r.IngestCommit, r.IngestAbort})
#: request classes (aliases included) whose idempotency key makes them keyed writes
_KEYED: Final = frozenset(cls for cls, spec in optable.SPEC_BY_CLASS.items() if spec.idempotent)

#: writes that must see every earlier write applied before they are checked (awaited)
ASYNC: Final[dict[type, AsyncHandler]] = {
    r.IngestBegin: sequential,
    r.IngestChunk: sequential,
    r.IngestCommit: sequential,
    r.IngestAbort: sequential,
    r.IdempotencyPrune: sequential,
}
#: every write, decided and queued in one synchronous step (aliases included): the
#: sequential ones come here only when the caller does not await them (`Node.handle_line`)
SYNC: Final = dict.fromkeys(WRITES, write)
