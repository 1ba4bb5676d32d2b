"""Who may run what: tokens (compared in constant time) and the node role."""

from __future__ import annotations

import hmac

import attrs

from karma.errors import ErrorCode, KarmaError
from karma.protocol.optable import Access, OpSpec


@attrs.frozen
class Gate:
    auth_token: str | None = None
    read_token: str | None = None
    slave: bool = False

    @property
    def open(self) -> bool:
        """True when nothing is checked: the hot path can skip `admit`."""
        return self.auth_token is None and self.read_token is None and not self.slave

    def admit(self, spec: OpSpec, token: object) -> None:
        if self.auth_token is not None or self.read_token is not None:
            self._authenticate(spec, token)
        if self.slave and spec.access is not Access.READ:
            raise KarmaError(
                ErrorCode.FORBIDDEN, f"Slave role cannot execute command {spec.internal_name}"
            )

    def _authenticate(self, spec: OpSpec, token: object) -> None:
        presented = token.encode() if isinstance(token, str) else None
        if self.auth_token is not None and _same(presented, self.auth_token):
            return
        if self.read_token is not None and _same(presented, self.read_token):
            if spec.access is not Access.READ:
                raise KarmaError(
                    ErrorCode.FORBIDDEN,
                    f"Read-only token cannot execute command {spec.internal_name}",
                )
            return
        if self.auth_token is None and presented is None:
            return  # only a read token is configured: requests without a token keep full access
        raise KarmaError(ErrorCode.UNAUTHORIZED, "Unauthorized")


def _same(presented: bytes | None, expected: str) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(presented, expected.encode())
