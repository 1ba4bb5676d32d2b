"""`ingest.*` and `idempotency.*`: streams of chunks applied at commit, and the table that makes a
retried keyed write answer as the first did (pruned by age; fetched by a bootstrapping replica).
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64, Item
from karma.protocol.requests.base import Request, SeriesRequest, opt
from karma.protocol.requests.snapshots import CHUNK_DEFAULT, CHUNK_MAX

__all__ = [
    "INGEST_MODES",
    "PRUNE_MAX_LIMIT",
    "IdempotencyPrune",
    "IdempotencySnapshotFetchChunk",
    "IngestAbort",
    "IngestBegin",
    "IngestChunk",
    "IngestCommit",
    "StreamRequest",
]


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


AnyIngestRequest = (
    IngestBegin
    | IngestChunk
    | IngestCommit
    | IngestAbort
    | IdempotencyPrune
    | IdempotencySnapshotFetchChunk
)
