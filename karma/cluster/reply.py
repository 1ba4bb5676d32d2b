"""A group's answer as the fan-out rules read it, and the envelope a merged answer leaves in.

The router forwards JSON lines and the Python client reads them too, so both turn each group's
line into a `Reply`, hand the replies to a plan (karma.cluster.fanout) and send back the
plan's `Reply` encoded as one node would encode it.
"""

from __future__ import annotations

from typing import Final

import attrs
import msgspec

from karma.errors import ErrorCode

#: a JSON value as msgspec decodes it
Json = object


class _Envelope(msgspec.Struct, gc=False):
    success: bool = False
    response: Json = None
    error_code: str | None = None
    idempotent: bool | None = None


_decode: Final = msgspec.json.Decoder(_Envelope).decode
_encode: Final = msgspec.json.Encoder().encode


@attrs.frozen
class Reply:
    """One answer: a success with its response, or an error code with its message."""

    success: bool
    response: Json
    error_code: str | None = None
    #: a keyed write's answer says whether it replayed an earlier one (None: not a keyed write)
    idempotent: bool | None = None

    @classmethod
    def ok(cls, response: Json, idempotent: bool | None = None) -> Reply:
        return cls(True, response, None, idempotent)

    @classmethod
    def error(cls, code: ErrorCode | str, message: str) -> Reply:
        return cls(False, message, str(code))

    @classmethod
    def decode(cls, line: bytes) -> Reply:
        """A node's answer line; a line that is not an envelope is an internal error."""
        try:
            env = _decode(line)
        except msgspec.DecodeError:
            return cls.error(ErrorCode.INTERNAL_ERROR, "A group answered with an unreadable line")
        return cls(env.success, env.response, env.error_code, env.idempotent)

    @property
    def message(self) -> str:
        return self.response if isinstance(self.response, str) else ""

    def encode(self) -> bytes:
        """The envelope in karma 1.0's key order (`idempotent` only on keyed writes)."""
        head = b'{"protocol_version":2,"success":' + (b"true" if self.success else b"false")
        body = head + b',"response":' + _encode(self.response)
        if self.idempotent is not None:
            body += b',"idempotent":' + (b"true" if self.idempotent else b"false")
        return body + b',"error_code":' + _encode(self.error_code) + b"}\r\n"


def unreachable(group: str, why: str) -> Reply:
    """What a part gets when its group cannot be asked (no leader known, connection lost):
    retriable, and naming the group, so no answer is ever mistaken for the whole one."""
    return Reply.error(ErrorCode.NOT_LEADER, f"Group {group} is unavailable: {why}; retry later")
