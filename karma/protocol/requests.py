"""One msgspec Struct per protocol v2 op, tagged on `op`; aliases are subclasses with their own tag.

Field annotations carry the parse-phase rules (types, unsigned); each class's `check()` carries
karma 1.0's validate-phase rules and messages. Field order is karma 1.0's parse order, which
is the order the slow decoder reports problems in.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from karma import days
from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64, DayRange, Item

T = TypeVar("T")


def opt(value: T | UnsetType) -> T | None:
    """A field that may be absent (UNSET) but, as in karma 1.0, never `null`."""
    return None if isinstance(value, UnsetType) else value


def op_tag(cls: type[msgspec.Struct]) -> str:
    """The wire `op` of a request class."""
    return str(cls.__struct_config__.tag)


#: the most replicas a write may wait for (`durability:"replicated:N"`)
MAX_REPLICAS = 16


class Request(msgspec.Struct, tag_field="op", frozen=True, kw_only=True, gc=False):
    v: Literal[2]
    token: str | None = None
    # accepted on every op (karma 1.0 type-checks them everywhere, uses them on eligible writes)
    idempotency_key: str | int | UnsetType = UNSET
    fingerprint: str | int | UnsetType = UNSET
    idempotency_created_at_unix: U64 | UnsetType = UNSET
    # karma-trio's, for HA (docs/ha.md): the highest term the client has seen (a lower-term
    # master refuses its writes; the answer then carries `term` and `lsn`), and how many
    # replicas must hold a write before it is acknowledged
    term: U64 | UnsetType = UNSET
    durability: str | UnsetType = UNSET

    @property
    def asks_term(self) -> bool:
        return not isinstance(self.term, UnsetType) or not isinstance(self.durability, UnsetType)

    @property
    def replicas_required(self) -> int:
        """N of `durability:"replicated:N"`; 0 for `"local"` or no field."""
        durability = self.durability
        if isinstance(durability, UnsetType) or durability == "local":
            return 0
        kind, _, count = durability.partition(":")
        if kind == "replicated" and count.isdigit() and 1 <= int(count) <= MAX_REPLICAS:
            return int(count)
        raise KarmaError.validation(
            f'Field durability must be "local" or "replicated:N" with N from 1 to {MAX_REPLICAS}'
        )

    @property
    def key_text(self) -> str | None:
        """The idempotency key as text (karma 1.0 turns integer keys into strings)."""
        key = self.idempotency_key
        return None if isinstance(key, UnsetType) else str(key)

    def check(self) -> None:
        """Validate-phase rules; the default is none."""


class SeriesRequest(Request, frozen=True, kw_only=True):
    """Names a series as `series` or, in karma 1.0's older spelling, `tree` (which wins)."""

    tree: str | None = None
    series: str | None = None

    @property
    def name(self) -> str:
        name = self.tree if self.tree is not None else self.series
        if name is None:
            raise KarmaError.validation("Field tree or series is required")
        return name

    def check(self) -> None:
        f.check_series_name("tree" if self.tree is not None else "series", self.name)


# --- system -------------------------------------------------------------------------------
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


# --- series (tree) --------------------------------------------------------------------------
class TreeList(Request, tag="tree.list", frozen=True, kw_only=True):
    pass


class TreeCreate(SeriesRequest, tag="tree.create", frozen=True, kw_only=True):
    pass


class TreeDrop(SeriesRequest, tag="tree.drop", frozen=True, kw_only=True):
    pass


class TreeReset(SeriesRequest, tag="tree.reset", frozen=True, kw_only=True):
    pass


class TreeInfo(SeriesRequest, tag="tree.info", frozen=True, kw_only=True):
    pass


#: karma 1.0 answered internal_error when `limit` was missing (DEFECTS.md #12): these defaults.
TREE_KEYS_DEFAULT_LIMIT = 100
TREE_KEYS_MAX_LIMIT = 10_000
TREE_TOP_DEFAULT_LIMIT = 50
TREE_TOP_MAX_LIMIT = 1_000


class TreeKeys(SeriesRequest, tag="tree.keys", frozen=True, kw_only=True):
    limit: int | UnsetType = UNSET
    cursor: U64 | None = None

    def check(self) -> None:
        super().check()
        f.check_limit(opt(self.limit), default=TREE_KEYS_DEFAULT_LIMIT, maximum=TREE_KEYS_MAX_LIMIT)
        if self.cursor is not None:
            f.check_u64("cursor", self.cursor)


class TreeSummary(SeriesRequest, tag="tree.summary", frozen=True, kw_only=True):
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        super().check()
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class TreeTop(SeriesRequest, tag="tree.top", frozen=True, kw_only=True):
    limit: int | UnsetType = UNSET
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        super().check()
        f.check_limit(opt(self.limit), default=TREE_TOP_DEFAULT_LIMIT, maximum=TREE_TOP_MAX_LIMIT)
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class RangedSeriesRequest(SeriesRequest, frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class TreeSeries(RangedSeriesRequest, tag="tree.series", frozen=True, kw_only=True):
    pass


class TreeDeleteRange(RangedSeriesRequest, tag="tree.delete_range", frozen=True, kw_only=True):
    pass


class SeriesCompact(SeriesRequest, tag="series.compact", frozen=True, kw_only=True):
    pass


class TreeCompact(SeriesCompact, tag="tree.compact", frozen=True, kw_only=True):
    """karma 1.0 alias of series.compact."""


class DeleteBefore(SeriesRequest, tag="series.delete_before", frozen=True, kw_only=True):
    before: U64 | UnsetType = UNSET
    date: U64 | UnsetType = UNSET

    @property
    def day(self) -> int:
        day = opt(self.before)
        if day is None:
            day = opt(self.date)
        if day is None:
            raise KarmaError.required("before")
        return day

    def check(self) -> None:
        super().check()
        f.check_day("before", self.day)


class TreeDeleteBefore(DeleteBefore, tag="tree.delete_before", frozen=True, kw_only=True):
    """karma 1.0 alias of series.delete_before."""


# --- counters -------------------------------------------------------------------------------
class KeyRequest(SeriesRequest, frozen=True, kw_only=True):
    key: U64

    def check(self) -> None:
        super().check()
        f.check_u64("key", self.key)


class Increment(KeyRequest, tag="counter.increment", frozen=True, kw_only=True):
    date: U64 | UnsetType = UNSET
    bucket: U64 | str | UnsetType = UNSET
    value: U64 | UnsetType = UNSET

    def bucket_or(self, today: int) -> int:
        """The day this write lands on: `date`, else `bucket`, else today (UTC)."""
        bucket = self.bucket
        if type(bucket) is int and self.date is UNSET:  # the common case, first
            return bucket
        if not isinstance(self.date, UnsetType):
            return self.date
        if isinstance(self.bucket, str):
            return f.bucket_from_text("bucket", self.bucket)
        return today if isinstance(self.bucket, UnsetType) else self.bucket

    @property
    def amount(self) -> int:
        value = self.value
        return value if type(value) is int else 1

    def check(self) -> None:
        # the hottest validation of all: the common case (a series, an int bucket and value)
        # is checked inline; anything unusual falls back to the general helpers
        name = self.tree if self.tree is not None else self.series
        bucket, value = self.bucket, self.value
        if (
            name is not None
            and type(bucket) is int
            and type(value) is int
            and self.date is UNSET
            and f.fast_series_ok(name)
            and self.key <= f.U64_MAX
            and 0 < value <= f.U64_MAX
            and days.is_day(bucket)
        ):
            return
        super().check()
        if not isinstance(self.date, UnsetType):
            f.check_day("date", self.date)
        elif not isinstance(self.bucket, UnsetType):
            f.check_day("bucket", self.bucket_or(0))
        if not isinstance(self.value, UnsetType):
            f.check_u64("value", self.value)
            f.check_positive("value", self.value)


class SeriesIncrement(Increment, tag="series.increment", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.increment."""


class Decrement(Increment, tag="counter.decrement", frozen=True, kw_only=True):
    pass


class Sum(KeyRequest, tag="counter.sum", frozen=True, kw_only=True):
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        # the hottest read: the common case is checked inline, as Increment's is
        name = self.tree if self.tree is not None else self.series
        if (
            name is not None
            and self.range is UNSET
            and self.key <= f.U64_MAX
            and f.fast_series_ok(name)
        ):
            return
        super().check()
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class SeriesSum(Sum, tag="series.sum", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.sum."""


class CounterSeries(KeyRequest, tag="counter.series", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class SeriesPoints(CounterSeries, tag="series.points", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.series."""


class CounterDeleteRange(KeyRequest, tag="counter.delete_range", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class CounterReset(KeyRequest, tag="counter.reset", frozen=True, kw_only=True):
    pass


class KeysRequest(SeriesRequest, frozen=True, kw_only=True):
    keys: list[U64]

    def check(self) -> None:
        super().check()
        f.check_keys(self.keys)


class BatchSum(KeysRequest, tag="counter.batch_sum", frozen=True, kw_only=True):
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        super().check()
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class SeriesBatchSum(BatchSum, tag="series.batch_sum", frozen=True, kw_only=True):
    """karma 1.0 alias of counter.batch_sum."""


class BatchReset(KeysRequest, tag="counter.batch_reset", frozen=True, kw_only=True):
    pass


class BatchDeleteRange(KeysRequest, tag="counter.batch_delete_range", frozen=True, kw_only=True):
    range: DayRange

    def check(self) -> None:
        super().check()
        f.check_range(self.range)


class MultiSumItem(msgspec.Struct, frozen=True, gc=False):
    series: str
    key: U64


class MultiSum(Request, tag="counter.multi_sum", frozen=True, kw_only=True):
    items: list[MultiSumItem]
    range: DayRange | UnsetType = UNSET

    def check(self) -> None:
        if len(self.items) > f.MAX_BATCH:
            raise KarmaError.validation("Field items exceeds max size")
        for item in self.items:
            f.check_non_empty("items[].series", item.series)
            f.check_series_name("items[].series", item.series)
            f.check_u64("items[].key", item.key)
        if not isinstance(self.range, UnsetType):
            f.check_range(self.range)


class BatchAdd(SeriesRequest, tag="series.batch_add", frozen=True, kw_only=True):
    items: list[Item]

    def check(self) -> None:
        super().check()
        f.check_items(self.items, allow_zero=False)


class BatchIncrement(BatchAdd, tag="counter.batch_increment", frozen=True, kw_only=True):
    """karma 1.0 alias of series.batch_add."""


class BatchSet(SeriesRequest, tag="series.batch_set", frozen=True, kw_only=True):
    items: list[Item]

    def check(self) -> None:
        super().check()
        # a zero value deletes the bucket (karma 1.0 README)
        f.check_items(self.items, allow_zero=True)


# --- snapshots, recovery, replication (served from the storage layer) ------------------------
class SnapshotCreate(SeriesRequest, tag="snapshot.create", frozen=True, kw_only=True):
    pass


class SnapshotCreateAll(Request, tag="snapshot.create_all", frozen=True, kw_only=True):
    pass


class SnapshotList(Request, tag="snapshot.list", frozen=True, kw_only=True):
    pass


class SnapshotInfo(Request, tag="snapshot.info", frozen=True, kw_only=True):
    pass


class SnapshotVerify(Request, tag="snapshot.verify", frozen=True, kw_only=True):
    pass


class FileRequest(Request, frozen=True, kw_only=True):
    file: str

    def check(self) -> None:
        f.check_non_empty("file", self.file)
        if "/" in self.file or "\\" in self.file or self.file in (".", ".."):
            raise KarmaError.validation("Field file must be a snapshot basename")
        if not self.file.endswith(".tree"):
            raise KarmaError.validation("Field file must end with .tree")


class SnapshotLoad(FileRequest, tag="snapshot.load", frozen=True, kw_only=True):
    pass


class SnapshotFetch(FileRequest, tag="snapshot.fetch", frozen=True, kw_only=True):
    pass


#: karma 1.0's chunk size when `limit` is omitted, and its ceiling.
CHUNK_DEFAULT = 262_144
CHUNK_MAX = 524_288


class SnapshotFetchChunk(FileRequest, tag="snapshot.fetch_chunk", frozen=True, kw_only=True):
    offset: U64 | None = None
    limit: int | UnsetType = UNSET

    def check(self) -> None:
        super().check()
        f.check_limit(opt(self.limit), default=CHUNK_DEFAULT, maximum=CHUNK_MAX)


class RecoveryCheckpoint(Request, tag="recovery.checkpoint", frozen=True, kw_only=True):
    source: str
    offset: str | int | None = None
    source_offset: str | int | None = None
    event_id: str | int | None = None

    def check(self) -> None:
        f.check_non_empty("source", self.source)
        if self.source_offset is None and self.offset is None and self.event_id is None:
            raise KarmaError.validation("Field offset or event_id is required")
        offset = self.source_offset if self.source_offset is not None else self.offset
        if offset == "":
            raise KarmaError.validation("Field offset must not be empty")
        if self.event_id == "":
            raise KarmaError.validation("Field event_id must not be empty")


class RecoveryStatus(Request, tag="recovery.status", frozen=True, kw_only=True):
    source: str | None = None


class ReconciliationReport(Request, tag="reconciliation.report", frozen=True, kw_only=True):
    checked_points: int
    mismatch_count: int
    absolute_drift: int | None = None
    max_abs_delta: int | None = None

    def check(self) -> None:
        ge0 = "must be greater than or equal to 0"
        if self.checked_points < 0:
            raise KarmaError.validation(f"Field checked_points {ge0}")
        if self.mismatch_count < 0:
            raise KarmaError.validation(f"Field mismatch_count {ge0}")
        if self.mismatch_count > self.checked_points:
            raise KarmaError.validation(
                "Field mismatch_count must be less than or equal to checked_points"
            )
        if (self.absolute_drift or 0) < 0:
            raise KarmaError.validation(f"Field absolute_drift {ge0}")
        if (self.max_abs_delta or 0) < 0:
            raise KarmaError.validation(f"Field max_abs_delta {ge0}")


REPLICATION_DEFAULT_LIMIT = 1_000
REPLICATION_MAX_LIMIT = 10_000


#: the longest a replication.entries poll waits for a new entry (wait_ms is capped to it)
REPLICATION_MAX_WAIT_MS = 10_000


class ReplicationEntries(Request, tag="replication.entries", frozen=True, kw_only=True):
    after_lsn: int
    limit: int | UnsetType = UNSET
    # karma-trio's: the polling replica's name (its `after_lsn` is its durable LSN, which
    # `durability:"replicated:N"` writes wait for), the term of its last entry (a master whose
    # history disagrees answers replication_diverged), and how long to wait for a new entry
    node: str | UnsetType = UNSET
    after_term: U64 | UnsetType = UNSET
    wait_ms: U64 | UnsetType = UNSET

    def check(self) -> None:
        if self.after_lsn < 0:
            raise KarmaError.validation("Field after_lsn must be greater than or equal to 0")
        f.check_limit(
            opt(self.limit), default=REPLICATION_DEFAULT_LIMIT, maximum=REPLICATION_MAX_LIMIT
        )


class ReplicationStatus(Request, tag="replication.status", frozen=True, kw_only=True):
    pass


class ClusterTopology(Request, tag="cluster.topology", frozen=True, kw_only=True):
    """HA: the leader's address, the term and the members (karma.ha)."""


# --- ingest and idempotency ----------------------------------------------------------------
class StreamRequest(Request, frozen=True, kw_only=True):
    stream_id: str

    def check(self) -> None:
        if not self.stream_id:
            raise KarmaError.required("stream_id")


class IngestBegin(StreamRequest, tag="ingest.begin", frozen=True, kw_only=True):
    mode: str
    granularity: str | None = None

    def check(self) -> None:
        super().check()
        if not self.mode:
            raise KarmaError.required("mode")
        if self.mode not in INGEST_MODES:
            raise KarmaError.validation(f"Unsupported ingest mode {self.mode}")


INGEST_MODES = ("add", "set", "replace_series")


class IngestChunk(SeriesRequest, tag="ingest.chunk", frozen=True, kw_only=True):
    stream_id: str
    chunk_seq: U64
    items: list[Item]

    def check(self) -> None:
        if not self.stream_id:
            raise KarmaError.required("stream_id")
        super().check()
        f.check_u64("chunk_seq", self.chunk_seq)
        f.check_positive("chunk_seq", self.chunk_seq)
        f.check_items(self.items, allow_zero=True)  # zero is refused later for `add` streams


class IngestCommit(StreamRequest, tag="ingest.commit", frozen=True, kw_only=True):
    pass


class IngestAbort(StreamRequest, tag="ingest.abort", frozen=True, kw_only=True):
    pass


PRUNE_MAX_LIMIT = 100_000


class IdempotencyPrune(Request, tag="idempotency.prune", frozen=True, kw_only=True):
    before: U64 | str
    limit: int | UnsetType = UNSET

    @property
    def before_unix(self) -> int:
        if isinstance(self.before, int):
            return self.before
        return f.unix_from_text("before", self.before)

    def check(self) -> None:
        f.check_u64("before", self.before_unix)
        if not isinstance(self.limit, UnsetType):
            f.check_limit(self.limit, default=1, maximum=PRUNE_MAX_LIMIT)


class IdempotencySnapshotFetchChunk(
    Request, tag="idempotency.snapshot_fetch_chunk", frozen=True, kw_only=True
):
    offset: U64 | UnsetType = UNSET
    limit: int | UnsetType = UNSET

    def check(self) -> None:
        f.check_limit(opt(self.limit), default=CHUNK_DEFAULT, maximum=CHUNK_MAX)


AnyRequest = (
    Ping
    | Health
    | Stats
    | Metrics
    | SystemCompact
    | SlowLog
    | TreeList
    | TreeCreate
    | TreeDrop
    | TreeReset
    | TreeInfo
    | TreeKeys
    | TreeSummary
    | TreeTop
    | TreeSeries
    | TreeDeleteRange
    | SeriesCompact
    | TreeCompact
    | DeleteBefore
    | TreeDeleteBefore
    | Increment
    | SeriesIncrement
    | Decrement
    | Sum
    | SeriesSum
    | CounterSeries
    | SeriesPoints
    | CounterDeleteRange
    | CounterReset
    | BatchSum
    | SeriesBatchSum
    | BatchReset
    | BatchDeleteRange
    | MultiSum
    | BatchAdd
    | BatchIncrement
    | BatchSet
    | SnapshotCreate
    | SnapshotCreateAll
    | SnapshotList
    | SnapshotInfo
    | SnapshotVerify
    | SnapshotLoad
    | SnapshotFetch
    | SnapshotFetchChunk
    | RecoveryCheckpoint
    | RecoveryStatus
    | ReconciliationReport
    | ReplicationEntries
    | ReplicationStatus
    | ClusterTopology
    | IngestBegin
    | IngestChunk
    | IngestCommit
    | IngestAbort
    | IdempotencyPrune
    | IdempotencySnapshotFetchChunk
)
