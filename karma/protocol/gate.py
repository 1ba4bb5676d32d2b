"""Who may run what: tokens (compared in constant time) and the node role.

The rule, once: when no token is configured, anyone may run anything. As soon as either token is
configured (karma 1.0's rule), every request must present one:

| presented            | READ ops  | WRITE and ADMIN ops |
|----------------------|-----------|---------------------|
| the write token      | yes       | yes                 |
| the read token       | yes       | forbidden           |
| none, wrong, not str | unauthorized | unauthorized     |

With a tokens file (`karma.protocol.scopes`) the table decides instead: the token must be in it
(else `unauthorized`), hold the op's right and cover every series the request touches (else
`forbidden`, in words that name neither the series nor anyone else's). The two tokens above
are entries of that table then. Every token refusal is a `RefusalError`, which names the token's
entry (never the token) for the audit.

A slave runs READ ops only, whatever the token (`forbidden`; with HA on, `not_leader` naming the
leader, since the role changes at runtime and the client should go there).
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Final

import attrs

from karma.errors import ErrorCode, KarmaError
from karma.ha.fence import Fence
from karma.protocol import requests as r
from karma.protocol.optable import Access, OpSpec
from karma.protocol.scopes import (
    READ_AUTH_TOKEN_NAME,
    UNKNOWN,
    Scope,
    TokenTable,
    scopable,
    touched,
)


class RefusalError(KarmaError):
    """A token refusal (`unauthorized` or `forbidden`), with the name of the entry it matched
    (`scopes.UNKNOWN` for none): what the audit counts and logs, since the token never is."""

    def __init__(self, code: ErrorCode, message: str, token_name: str) -> None:
        super().__init__(code, message)
        self.token_name = token_name


class Credential(Enum):
    NONE = "none"  # no token, a wrong one, or not a string
    READ = "read"
    WRITE = "write"


#: Which credential may run which access class, when any token is configured.
ALLOWED: Final[dict[Access, frozenset[Credential]]] = {
    Access.READ: frozenset({Credential.READ, Credential.WRITE}),
    Access.WRITE: frozenset({Credential.WRITE}),
    Access.ADMIN: frozenset({Credential.WRITE}),
}


@attrs.frozen
class Gate:
    auth_token: str | None = None
    read_token: str | None = None
    slave: bool = False
    #: WAL replay and replication read effect entries (limit.apply, …); clients may not send them
    internal_ops: bool = False
    #: HA is on: a read-only node refuses writes with `not_leader` and the leader's address
    fence: Fence | None = None
    #: `--tokens-file` (with the two tokens above in it): the table decides
    tokens: TokenTable | None = None

    @property
    def open(self) -> bool:
        """True when nothing is checked: the hot path can skip `admit`."""
        return (
            self.auth_token is None
            and self.read_token is None
            and self.tokens is None
            and not self.slave
        )

    def admit(self, spec: OpSpec, token: object) -> Scope | None:
        """Refuse what `token` may not run at all; with a tokens table, the entry that must
        still cover the request's series (`check_series`) once it is decoded."""
        scope = None
        if self.tokens is not None:
            scope = self._scoped(spec, token)
        elif self.auth_token is not None or self.read_token is not None:
            credential = self.credential(token)
            if credential not in ALLOWED[spec.access]:
                if credential is Credential.NONE:
                    raise RefusalError(ErrorCode.UNAUTHORIZED, "Unauthorized", UNKNOWN)
                raise RefusalError(
                    ErrorCode.FORBIDDEN,
                    f"Read-only token cannot execute command {spec.internal_name}",
                    READ_AUTH_TOKEN_NAME,
                )
        if self.slave and spec.access is not Access.READ:
            if self.fence is not None:
                raise self.fence.refusal()
            raise KarmaError(
                ErrorCode.FORBIDDEN, f"Slave role cannot execute command {spec.internal_name}"
            )
        return scope

    def _scoped(self, spec: OpSpec, token: object) -> Scope:
        assert self.tokens is not None
        scope = self.tokens.lookup(token)
        if scope is None:
            raise RefusalError(ErrorCode.UNAUTHORIZED, "Unauthorized", UNKNOWN)
        if spec.access not in scope.rights:
            raise RefusalError(
                ErrorCode.FORBIDDEN,
                f"Token lacks the {spec.access.value} right for command {spec.internal_name}",
                scope.name,
            )
        if not scope.everything and not scopable(spec.request):
            raise RefusalError(
                ErrorCode.FORBIDDEN,
                f"Token cannot execute command {spec.internal_name}: it needs every series",
                scope.name,
            )
        return scope

    @staticmethod
    def check_series(scope: Scope, spec: OpSpec, request: r.Request) -> None:
        """Refuse a request touching a series outside `scope`.

        Checked before the store is looked at, in the same words whether the series exists
        or not."""
        if scope.everything:
            return
        for name in touched(request):
            if not scope.covers(name):
                raise RefusalError(
                    ErrorCode.FORBIDDEN,
                    f"Token cannot execute command {spec.internal_name} on this series",
                    scope.name,
                )

    def credential(self, token: object) -> Credential:
        """What `token` proves. Both comparisons always run, so timing tells nothing."""
        # msgspec refuses lone surrogates as invalid JSON; surrogatepass keeps this total anyway
        presented = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else b""
        write = _same(presented, self.auth_token)
        read = _same(presented, self.read_token)
        if write:
            return Credential.WRITE
        return Credential.READ if read else Credential.NONE


def _same(presented: bytes, expected: str | None) -> bool:
    if expected is None:
        hmac.compare_digest(presented, presented)  # the same work as a real comparison
        return False
    return hmac.compare_digest(presented, expected.encode()) and bool(presented)
