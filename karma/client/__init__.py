"""karma-trio's Python client: `Client` (threads) and `AsyncClient` (trio or asyncio).

    from karma.client import Client
    with Client.from_env() as karma:          # KARMA_URL=karma://token@host:port
        karma.record_usage("api_requests", 42)
        karma.usage("api_requests", 42, since=date(2026, 5, 1))

Importing this package never imports or starts the server.
"""

from karma.client.aio import AsyncClient, AsyncPipeline
from karma.client.call import Call
from karma.client.calls import Health, KeysPage, KeyTotal, TopItem, TreeInfo
from karma.client.errors import (
    CapacityExceeded,
    ConnectionFailed,
    Forbidden,
    IdempotencyConflict,
    InternalError,
    InvalidJson,
    KarmaError,
    Moved,
    NotFound,
    NotLeader,
    QueryTimeout,
    ReplicationError,
    ReplicationGap,
    RequestTooLarge,
    ResponseTooLarge,
    StorageUnavailable,
    Unauthorized,
    UnknownCommand,
    UnsupportedProtocol,
    ValidationError,
)
from karma.client.limit_calls import LimitAnswer, LimitItem, Settlement
from karma.client.reservations import AsyncReservation, Reservation
from karma.client.sync import Client, Pipeline

__all__ = [
    "AsyncClient",
    "AsyncPipeline",
    "AsyncReservation",
    "Call",
    "CapacityExceeded",
    "Client",
    "ConnectionFailed",
    "Forbidden",
    "Health",
    "IdempotencyConflict",
    "InternalError",
    "InvalidJson",
    "KarmaError",
    "KeyTotal",
    "KeysPage",
    "LimitAnswer",
    "LimitItem",
    "Moved",
    "NotFound",
    "NotLeader",
    "Pipeline",
    "QueryTimeout",
    "ReplicationError",
    "ReplicationGap",
    "RequestTooLarge",
    "Reservation",
    "ResponseTooLarge",
    "Settlement",
    "StorageUnavailable",
    "TopItem",
    "TreeInfo",
    "Unauthorized",
    "UnknownCommand",
    "UnsupportedProtocol",
    "ValidationError",
]
