"""Keys and reservation ids being written: claimed as their entry is queued, dropped when it is
done, so a copy meanwhile (this connection or another) is answered from the first one's outcome
instead of applying again — exactly once with no wait (docs/durability.md)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import attrs

from karma.core import mutations as m
from karma.core.engine import Engine
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope
from karma.server.wal_writer import Pending, WalWriter

#: builds an answer from a done, successful Pending (may raise KarmaError: answered instead)
Reply = Callable[[Pending], bytes]


@attrs.frozen
class Later:
    """An answer that rests on `pending`: once it is done, its error, or what `reply` builds."""

    pending: Pending
    reply: Reply
    #: `pending` is the first copy's (this is a copy of a key in flight), not this request's
    duplicate: bool = False


@attrs.frozen
class Busy:
    """The reservation id is being settled by `pending`: decide again once it is done."""

    pending: Pending


#: a write's or a limit decision's outcome: its answer now, or the entry it rests on (a plain
#: write's own, answered from its response), or a Later, or a Busy (karma.server.answers)
Outcome = bytes | Pending | Later | Busy


@attrs.define(eq=False, slots=True)
class Claim:
    """A key or reservation id being written: the request's fingerprint and its entry."""

    fingerprint: str
    pending: Pending


@attrs.define(eq=False)
class Claims:
    engine: Engine
    writer: WalWriter | None
    #: keys ("key:K") and reservation ids ("id:I") being written
    inflight: dict[str, Claim] = attrs.field(factory=dict)

    def get(self, name: str) -> Claim | None:
        return self.inflight.get(name)

    def submit(
        self,
        mutation: m.Mutation,
        claim: str | None = None,
        fingerprint: str = "",
        command: str | None = None,
    ) -> Pending:
        """Queue `mutation` on the WAL writer; with `claim`, that key or id is taken until the
        entry is done (the writer drops it then, whoever waits for the answer, if anyone).
        With `command`, the keyed write's record is made from it and `fingerprint`."""
        assert self.writer is not None
        canon = None if command is None else (command, fingerprint)
        pending = self.writer.submit_nowait(mutation, canon)
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
