"""The stable error codes of protocol v2 (karma 1.0's 14, plus karma-trio's own: storage,
capacity, HA and cluster codes) and the exception that carries one.

Everything the engine refuses is a :class:`KarmaError`; the connection layer turns it into an
error envelope. Any other exception escaping a handler is a bug, answered as ``internal_error``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    UNKNOWN_COMMAND = "unknown_command"
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    REQUEST_TOO_LARGE = "request_too_large"
    RESPONSE_TOO_LARGE = "response_too_large"
    QUERY_TIMEOUT = "query_timeout"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    REPLICATION_GAP = "replication_gap"
    REPLICATION_ERROR = "replication_error"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    CAPACITY_EXCEEDED = "capacity_exceeded"
    NOT_LEADER = "not_leader"
    REPLICATION_TIMEOUT = "replication_timeout"
    REPLICATION_DIVERGED = "replication_diverged"
    MOVED = "moved"
    INTERNAL_ERROR = "internal_error"


#: What each code means, for docs/reference/errors.md (checked by a test).
ERROR_MEANINGS: Final[dict[ErrorCode, str]] = {
    ErrorCode.INVALID_JSON: "The request line is not valid JSON (or not UTF-8).",
    ErrorCode.UNSUPPORTED_PROTOCOL: (
        "The request is not protocol v2 (field `v` is not the integer 2)."
    ),
    ErrorCode.UNKNOWN_COMMAND: "Field `op` names no command.",
    ErrorCode.VALIDATION_ERROR: "A field is missing, has the wrong type, or an invalid value.",
    ErrorCode.NOT_FOUND: "The series, snapshot file or ingest stream does not exist.",
    ErrorCode.UNAUTHORIZED: "Authentication is on and the token is missing or wrong.",
    ErrorCode.FORBIDDEN: "The token or the node role may not run this command.",
    ErrorCode.REQUEST_TOO_LARGE: (
        "The request line exceeds --max-request-bytes; the connection closes."
    ),
    ErrorCode.RESPONSE_TOO_LARGE: "The answer would exceed --max-response-bytes.",
    ErrorCode.QUERY_TIMEOUT: "A large read ran longer than --query-timeout-ms.",
    ErrorCode.IDEMPOTENCY_CONFLICT: "An idempotency key was reused with a different payload.",
    ErrorCode.REPLICATION_GAP: "The requested WAL range was truncated away.",
    ErrorCode.REPLICATION_ERROR: "Replication bootstrap or polling failed.",
    ErrorCode.STORAGE_UNAVAILABLE: (
        "The data directory refused a write (disk full, read-only, WAL file removed): nothing"
        " was changed or acknowledged; reads keep working. Retriable once the cause is fixed."
    ),
    ErrorCode.CAPACITY_EXCEEDED: (
        "The request is valid but the server is full: --max-open-reservations open holds."
    ),
    ErrorCode.NOT_LEADER: (
        "HA is on (--ha-etcd) and this node is not the writable master, or its leader lease"
        " ran out before the answer: the message names the leader's address when one is known."
        " Retriable there; a keyed write retried with the same idempotency key counts once."
    ),
    ErrorCode.REPLICATION_TIMEOUT: (
        'A write sent with `durability:"replicated:N"` is in the master\'s WAL, but fewer than N'
        " replicas confirmed it within --replicated-timeout-ms: its fate is unknown (it survives"
        " unless the master is lost). Retriable with the same idempotency key."
    ),
    ErrorCode.REPLICATION_DIVERGED: (
        "A replica asked for entries after an LSN and term the master's history does not"
        " share: its WAL tail was never the master's. The replica moves its WAL aside and"
        " bootstraps again."
    ),
    ErrorCode.MOVED: (
        "The node is in a sharded cluster (--cluster) and its group does not own the slot of a"
        " key the request names: nothing was applied. The answer's `moved` field names the"
        " slot, the owning group, that group's leader when known, and the map version. Also"
        " answered, with `group` null, while the node has not read a valid shard map yet."
        " Retriable at the owner, after refreshing the map."
    ),
    ErrorCode.INTERNAL_ERROR: "A bug: the server logged it and kept serving.",
}


class KarmaError(Exception):
    """A refusal with a protocol error code and the exact message karma 1.0 sends."""

    def __init__(
        self, code: ErrorCode, message: str, extra: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: fields the error envelope carries besides the message (`moved`'s details)
        self.extra = extra

    @classmethod
    def validation(cls, message: str) -> KarmaError:
        return cls(ErrorCode.VALIDATION_ERROR, message)

    @classmethod
    def required(cls, field: str) -> KarmaError:
        return cls(ErrorCode.VALIDATION_ERROR, f"Field {field} is required")

    @classmethod
    def series_not_found(cls, name: str) -> KarmaError:
        return cls(ErrorCode.NOT_FOUND, f'Tree "{name}" not found')

    @classmethod
    def storage(cls, failed: str, exc: OSError, kept: str) -> KarmaError:
        """The data directory refused a write (`exc`): say what failed, why, and what is kept.

        The OS's own words name the cause ("No space left on device", "Read-only file
        system"); the path is left to the log, since clients cannot act on it.
        """
        cause = exc.strerror or str(exc)
        return cls(ErrorCode.STORAGE_UNAVAILABLE, f"{failed}: {cause}; {kept}, retry later")

    @classmethod
    def not_leader(cls, leader: str | None) -> KarmaError:
        where = f"the leader is {leader}" if leader else "no leader is known yet"
        return cls(ErrorCode.NOT_LEADER, f"Not the leader: {where}; retry there")

    @classmethod
    def internal(cls) -> KarmaError:
        return cls(ErrorCode.INTERNAL_ERROR, "Internal server error")
