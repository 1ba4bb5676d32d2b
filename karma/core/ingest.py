"""Streaming ingest: begin → numbered chunks → commit (or abort), for rebuilds and backfills.

Modes: `add` and `set` apply each chunk to the live series at once; `replace_series` stages the
chunks in a hidden series that replaces the live one atomically at commit. Chunks are numbered
from 1: a repeat with the same payload is skipped, a gap is refused before anything is applied.
Committed streams are remembered (and persisted in the idempotency snapshot), so repeating a
commit — even after a restart — never replaces a series twice.

`check_*` run before a mutation is logged and may answer at once (a skipped duplicate changes
nothing, so it is not logged); `apply_*` are total, as everywhere in the core.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Final

import attrs

from karma.core import mutations as m
from karma.core.series import Series
from karma.core.store import Store
from karma.errors import ErrorCode, KarmaError
from karma.protocol.fields import U64_MAX

MODES: Final = ("add", "set", "replace_series")


@attrs.define(eq=False)
class Stream:
    stream_id: str
    mode: str
    granularity: str | None
    begin_fingerprint: str
    series: str | None = None
    last_chunk_seq: int = 0
    chunk_fingerprints: dict[int, str] = attrs.field(factory=dict)
    staged: Series | None = None

    def status(self, status: str = "active") -> dict[str, object]:
        return {
            "stream_id": self.stream_id,
            "mode": self.mode,
            "series": self.series,
            "granularity": self.granularity,
            "status": status,
            "last_chunk_seq": self.last_chunk_seq,
        }


@attrs.define(eq=False)
class Committed:
    stream_id: str
    mode: str
    granularity: str | None
    series_name: str | None
    last_chunk_seq: int
    begin_fingerprint: str
    chunk_fingerprints: dict[int, str]
    committed_at_unix: int

    def answer(self) -> dict[str, object]:
        return {
            "stream_id": self.stream_id,
            "mode": self.mode,
            "series": self.series_name,
            "granularity": self.granularity,
            "status": "already_committed",
            "last_chunk_seq": self.last_chunk_seq,
        }

    def document(self) -> dict[str, Any]:
        """karma 1.0's committed-stream record: null granularity/series are omitted."""
        out: dict[str, Any] = {"stream_id": self.stream_id, "mode": self.mode}
        if self.granularity is not None:
            out["granularity"] = self.granularity
        if self.series_name is not None:
            out["series_name"] = self.series_name
        out.update(
            {
                "last_chunk_seq": self.last_chunk_seq,
                "begin_fingerprint": self.begin_fingerprint,
                "chunk_fingerprints": {str(k): v for k, v in self.chunk_fingerprints.items()},
                "committed_at_unix": self.committed_at_unix,
            }
        )
        return out


def _not_found(stream_id: str) -> KarmaError:
    return KarmaError(ErrorCode.NOT_FOUND, f'Ingest stream "{stream_id}" not found')


def _conflict(message: str) -> KarmaError:
    return KarmaError(ErrorCode.IDEMPOTENCY_CONFLICT, message)


@attrs.define(eq=False)
class Ingest:
    active: dict[str, Stream] = attrs.field(factory=dict)
    committed: dict[str, Committed] = attrs.field(factory=dict)
    chunks_applied: int = 0
    items_applied: int = 0
    chunks_skipped: int = 0
    chunks_rejected: int = 0

    # --- begin -------------------------------------------------------------------------------
    def check_begin(self, mut: m.IngestBegin) -> dict[str, object] | None:
        """An immediate answer for a repeated begin, None for a new stream; raises on conflict."""
        if mut.mode not in MODES:
            raise KarmaError.validation(f"Unsupported ingest mode {mut.mode}")
        done = self.committed.get(mut.stream_id)
        if done is not None:
            if (done.mode, done.granularity) != (mut.mode, mut.granularity):
                raise _conflict("Ingest stream was already committed with different parameters")
            return done.answer()
        stream = self.active.get(mut.stream_id)
        if stream is not None:
            if (stream.mode, stream.granularity) != (mut.mode, mut.granularity):
                raise _conflict("Ingest stream already exists with different parameters")
            return stream.status()
        return None

    def apply_begin(self, mut: m.IngestBegin) -> object:
        answer = self.check_begin(mut)
        if answer is not None:
            return answer
        stream = Stream(mut.stream_id, mut.mode, mut.granularity, mut.canon().digest())
        self.active[mut.stream_id] = stream
        return stream.status()

    # --- chunk -------------------------------------------------------------------------------
    def check_chunk(self, mut: m.IngestChunk, fingerprint: str) -> dict[str, object] | None:
        """A skip answer for a duplicate chunk, None for the next one; raises otherwise."""
        done = self.committed.get(mut.stream_id)
        if done is not None:
            if (
                mut.chunk_seq <= done.last_chunk_seq
                and done.series_name == mut.series
                and done.chunk_fingerprints.get(mut.chunk_seq) == fingerprint
            ):
                return _skipped(mut, committed=True)
            raise _conflict("Ingest stream was already committed with different chunks")
        stream = self.active.get(mut.stream_id)
        if stream is None:
            raise _not_found(mut.stream_id)
        if mut.chunk_seq <= stream.last_chunk_seq:
            if stream.chunk_fingerprints.get(mut.chunk_seq) == fingerprint:
                return _skipped(mut, committed=False)
            raise _conflict("Ingest chunk was already used with different payload")
        if mut.chunk_seq != stream.last_chunk_seq + 1:
            self.chunks_rejected += 1
            raise KarmaError.validation("Field chunk_seq must be the next chunk")
        if stream.series is not None and stream.series != mut.series:
            self.chunks_rejected += 1
            raise KarmaError.validation(f"Ingest stream is already bound to series {stream.series}")
        if stream.mode == "add" and any(value == 0 for _, _, value in mut.items):
            raise KarmaError.validation("Batch item value must be greater than 0")
        return None

    def apply_chunk(self, store: Store, mut: m.IngestChunk) -> object:
        fingerprint = mut.canon().digest()
        skipped = self.check_chunk(mut, fingerprint)
        if skipped is not None:
            self.chunks_skipped += 1
            return skipped
        stream = self.active[mut.stream_id]
        if stream.mode == "add":
            store.apply(m.BatchAdd(series=mut.series, granularity="day", items=mut.items))
        elif stream.mode == "set":
            store.apply(m.BatchSet(series=mut.series, granularity="day", items=mut.items))
        else:
            staged = stream.staged if stream.staged is not None else Series()
            _check_staged(staged, mut.items)
            for key, bucket, value in mut.items:
                staged.get_or_create(key).set(bucket, value)
            stream.staged = staged
        stream.series = mut.series
        stream.last_chunk_seq = mut.chunk_seq
        stream.chunk_fingerprints[mut.chunk_seq] = fingerprint
        self.chunks_applied += 1
        self.items_applied += len(mut.items)
        return {
            "stream_id": mut.stream_id,
            "chunk_seq": mut.chunk_seq,
            "skipped": False,
            "applied": len(mut.items),
            "total": sum(item[2] for item in mut.items),
        }

    def replay_state_only(self, mut: m.IngestChunk | m.IngestCommit) -> None:
        """Replay a record whose effect on live series is already in their snapshots."""
        if isinstance(mut, m.IngestCommit):
            stream = self.active.get(mut.stream_id)
            if stream is not None and mut.stream_id not in self.committed:
                self.apply_commit(Store(), mut)  # the swap is in the series snapshot already
            return
        stream = self.active.get(mut.stream_id)
        if stream is None or mut.chunk_seq != stream.last_chunk_seq + 1:
            return
        if stream.mode == "replace_series":
            self.apply_chunk(Store(), mut)  # staged data is stream state, not a live series
            return
        stream.series = mut.series
        stream.last_chunk_seq = mut.chunk_seq
        stream.chunk_fingerprints[mut.chunk_seq] = mut.canon().digest()

    # --- commit / abort ------------------------------------------------------------------------
    def check_commit(self, mut: m.IngestCommit) -> dict[str, object] | None:
        done = self.committed.get(mut.stream_id)
        if done is not None:
            return done.answer()
        stream = self.active.get(mut.stream_id)
        if stream is None:
            raise _not_found(mut.stream_id)
        if stream.mode == "replace_series" and stream.series is None:
            raise KarmaError.validation("Cannot commit empty replace_series stream")
        return None

    def apply_commit(self, store: Store, mut: m.IngestCommit) -> object:
        answer = self.check_commit(mut)
        if answer is not None:
            return answer
        stream = self.active.pop(mut.stream_id)
        if stream.mode == "replace_series" and stream.series is not None:
            store.series[stream.series] = stream.staged if stream.staged is not None else Series()
        self.committed[mut.stream_id] = Committed(
            stream.stream_id,
            stream.mode,
            stream.granularity,
            stream.series,
            stream.last_chunk_seq,
            stream.begin_fingerprint,
            dict(stream.chunk_fingerprints),
            mut.committed_at_unix or 0,
        )
        return {
            "stream_id": stream.stream_id,
            "status": "committed",
            "last_chunk_seq": stream.last_chunk_seq,
        }

    def check_abort(self, mut: m.IngestAbort) -> None:
        if mut.stream_id not in self.active:
            raise _not_found(mut.stream_id)

    def apply_abort(self, mut: m.IngestAbort) -> object:
        self.check_abort(mut)
        stream = self.active.pop(mut.stream_id)
        return {
            "stream_id": stream.stream_id,
            "status": "aborted",
            "last_chunk_seq": stream.last_chunk_seq,
        }

    # --- persistence ---------------------------------------------------------------------------
    def committed_documents(self) -> list[dict[str, Any]]:
        return [done.document() for done in self.committed.values()]

    def open_documents(self, encode: Callable[[Series], bytes]) -> list[dict[str, Any]]:
        """Open streams, so a snapshot (which truncates the WAL) does not lose them.

        karma 1.0 lost every open stream at the next snapshot; it ignores this extra key.
        """
        out = []
        for stream in self.active.values():
            staged = None
            if stream.staged is not None:
                staged = base64.b64encode(encode(stream.staged)).decode()
            out.append(
                {
                    "stream_id": stream.stream_id,
                    "mode": stream.mode,
                    "granularity": stream.granularity,
                    "series_name": stream.series,
                    "last_chunk_seq": stream.last_chunk_seq,
                    "begin_fingerprint": stream.begin_fingerprint,
                    "chunk_fingerprints": {str(k): v for k, v in stream.chunk_fingerprints.items()},
                    "staged": staged,
                }
            )
        return out

    def load_open(self, documents: list[Any], decode: Callable[[bytes], Series]) -> None:
        for doc in documents:
            if not isinstance(doc, dict) or "stream_id" not in doc:
                continue
            staged = doc.get("staged")
            stream = Stream(
                str(doc["stream_id"]),
                str(doc.get("mode", "")),
                doc.get("granularity"),
                str(doc.get("begin_fingerprint", "")),
                doc.get("series_name"),
                int(doc.get("last_chunk_seq", 0)),
                {int(k): str(v) for k, v in (doc.get("chunk_fingerprints") or {}).items()},
                None if staged is None else decode(base64.b64decode(staged)),
            )
            self.active[stream.stream_id] = stream

    def load_committed(self, documents: list[Any]) -> None:
        for doc in documents:
            if not isinstance(doc, dict) or "stream_id" not in doc:
                continue
            fingerprints = doc.get("chunk_fingerprints") or {}
            self.committed[str(doc["stream_id"])] = Committed(
                str(doc["stream_id"]),
                str(doc.get("mode", "")),
                doc.get("granularity"),
                doc.get("series_name"),
                int(doc.get("last_chunk_seq", 0)),
                str(doc.get("begin_fingerprint", "")),
                {int(k): str(v) for k, v in fingerprints.items()},
                int(doc.get("committed_at_unix", 0)),
            )


def _skipped(mut: m.IngestChunk, *, committed: bool) -> dict[str, object]:
    return {
        "stream_id": mut.stream_id,
        "chunk_seq": mut.chunk_seq,
        "skipped": True,
        "committed": committed,
        "applied": 0,
        "total": 0,
    }


def _check_staged(staged: Series, items: list[tuple[int, int, int]]) -> None:
    totals: dict[int, int] = {}
    for key, bucket, value in items:
        counter = staged.get(key)
        base = counter.total if counter is not None else 0
        old = counter.get(bucket) if counter is not None else 0
        totals[key] = totals.get(key, base) + value - old
        if totals[key] > U64_MAX:
            raise KarmaError.validation(f"Counter overflow in batch item key={key} bucket={bucket}")
