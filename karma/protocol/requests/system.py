"""`system.*`: liveness, health, statistics, metrics, the slow log and whole-store compaction."""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.protocol import fields as f
from karma.protocol.requests.base import Request, opt

__all__ = [
    "Health",
    "Metrics",
    "Ping",
    "SlowLog",
    "Stats",
    "SystemCompact",
]


class Ping(Request, tag="system.ping", frozen=True, kw_only=True):
    pass


class Health(Request, tag="system.health", frozen=True, kw_only=True):
    pass


class Stats(Request, tag="system.stats", frozen=True, kw_only=True):
    pass


class Metrics(Request, tag="system.metrics", frozen=True, kw_only=True):
    pass


class SystemCompact(Request, tag="system.compact", frozen=True, kw_only=True):
    pass


class SlowLog(Request, tag="system.slowlog", frozen=True, kw_only=True):
    """The newest requests slower than --slow-request-ms (karma-trio's, like Redis SLOWLOG)."""

    limit: int | UnsetType = UNSET

    def check(self) -> None:
        f.check_limit(opt(self.limit), default=128, maximum=128)


AnySystemRequest = Ping | Health | Stats | Metrics | SystemCompact | SlowLog
