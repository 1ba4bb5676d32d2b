"""One exception per stable error code, all under KarmaError, each with `code` and `retriable`."""

from __future__ import annotations

from typing import ClassVar, Final


class KarmaError(Exception):
    """An error answer from karma-trio (or karma 1.0), or a failure to get one."""

    code: ClassVar[str] = ""
    #: True when the same call may succeed if simply tried again (a lost connection, a timeout).
    retriable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidJson(KarmaError):
    code = "invalid_json"


class UnsupportedProtocol(KarmaError):
    code = "unsupported_protocol"


class UnknownCommand(KarmaError):
    code = "unknown_command"


class ValidationError(KarmaError):
    code = "validation_error"


class NotFound(KarmaError):
    code = "not_found"


class Unauthorized(KarmaError):
    code = "unauthorized"


class Forbidden(KarmaError):
    code = "forbidden"


class RequestTooLarge(KarmaError):
    code = "request_too_large"


class ResponseTooLarge(KarmaError):
    code = "response_too_large"


class QueryTimeout(KarmaError):
    code = "query_timeout"


class IdempotencyConflict(KarmaError):
    code = "idempotency_conflict"


class ReplicationGap(KarmaError):
    code = "replication_gap"


class ReplicationError(KarmaError):
    code = "replication_error"
    retriable = True


class StorageUnavailable(KarmaError):
    """The server's disk refused the write (full, read-only, WAL removed); nothing changed."""

    code = "storage_unavailable"
    retriable = True


class CapacityExceeded(KarmaError):
    """The server holds --max-open-reservations open reservations; settle some, or retry."""

    code = "capacity_exceeded"
    retriable = True


class NotLeader(KarmaError):
    """HA is on and this node is not the writable master (or its lease ran out): the message
    names the leader. A keyed write may have been applied; retry it with the same key."""

    code = "not_leader"
    retriable = True


class Moved(KarmaError):
    """Cluster mode: the group asked does not own the key's slot (the map changed). The client
    reads the map again and retries once by itself; this is raised when the second try is
    refused too. Nothing was applied."""

    code = "moved"
    retriable = True


class InternalError(KarmaError):
    code = "internal_error"


class ConnectionFailed(KarmaError):
    """No answer: the connection could not be made, broke, or the answer timed out.

    A write may or may not have been applied; retry it with the same idempotency key.
    """

    code = "connection_failed"
    retriable = True


BY_CODE: Final[dict[str, type[KarmaError]]] = {
    cls.code: cls
    for cls in (
        InvalidJson,
        UnsupportedProtocol,
        UnknownCommand,
        ValidationError,
        NotFound,
        Unauthorized,
        Forbidden,
        RequestTooLarge,
        ResponseTooLarge,
        QueryTimeout,
        IdempotencyConflict,
        ReplicationGap,
        ReplicationError,
        StorageUnavailable,
        CapacityExceeded,
        NotLeader,
        Moved,
        InternalError,
    )
}


def from_answer(code: str | None, message: str) -> KarmaError:
    return BY_CODE.get(code or "", KarmaError)(message)
