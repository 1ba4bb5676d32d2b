"""Who may run what: tokens (compared in constant time) and the node role.

The rule, once: when no token is configured, anyone may run anything. As soon as either token is
configured (karma 1.0's rule), every request must present one:

| presented            | READ ops  | WRITE and ADMIN ops |
|----------------------|-----------|---------------------|
| the write token      | yes       | yes                 |
| the read token       | yes       | forbidden           |
| none, wrong, not str | unauthorized | unauthorized     |

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
from karma.protocol.optable import Access, OpSpec


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

    @property
    def open(self) -> bool:
        """True when nothing is checked: the hot path can skip `admit`."""
        return self.auth_token is None and self.read_token is None and not self.slave

    def admit(self, spec: OpSpec, token: object) -> None:
        if self.auth_token is not None or self.read_token is not None:
            credential = self.credential(token)
            if credential not in ALLOWED[spec.access]:
                if credential is Credential.NONE:
                    raise KarmaError(ErrorCode.UNAUTHORIZED, "Unauthorized")
                raise KarmaError(
                    ErrorCode.FORBIDDEN,
                    f"Read-only token cannot execute command {spec.internal_name}",
                )
        if self.slave and spec.access is not Access.READ:
            if self.fence is not None:
                raise self.fence.refusal()
            raise KarmaError(
                ErrorCode.FORBIDDEN, f"Slave role cannot execute command {spec.internal_name}"
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
