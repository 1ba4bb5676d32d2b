"""Idempotency records: the first successful answer to a keyed write, and its fingerprint.

A record is added when its mutation is *applied* (live, replayed or replicated alike), with the
creation time carried in the mutation, so replay rebuilds exactly the table the live server had
(karma 1.0 stamped replayed records with the replay time: DEFECTS.md #5). Limits are enforced
when a record is added: first records older than the age limit (oldest first), then the oldest
beyond the count limit.
"""

from __future__ import annotations

from typing import Any

import attrs

from karma.errors import ErrorCode, KarmaError


@attrs.define(eq=False, slots=True)
class Record:
    key: str
    operation: str
    fingerprint: str
    response: Any
    created_at_unix: int

    def document(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "operation": self.operation,
            "fingerprint": self.fingerprint,
            "response": self.response,
            "created_at_unix": self.created_at_unix,
        }


@attrs.define(eq=False)
class IdempotencyTable:
    max_records: int = 1_000_000
    max_age_seconds: int = 604_800
    records: dict[str, Record] = attrs.field(factory=dict)
    hits: int = 0
    conflicts: int = 0
    pruned: int = 0
    writes: int = 0

    def lookup(self, key: str, fingerprint: str) -> Record | None:
        """The stored answer for a retry, None for a new key; a different payload is a conflict."""
        record = self.records.get(key)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            self.conflicts += 1
            raise KarmaError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "Idempotency key was already used with a different request",
            )
        self.hits += 1
        return record

    def remember(self, record: Record) -> None:
        self.records.pop(record.key, None)
        self.records[record.key] = record
        self.writes += 1
        self._enforce(now=record.created_at_unix)

    def _enforce(self, now: int) -> None:
        if self.max_age_seconds:
            oldest_kept = now - self.max_age_seconds
            # oldest first, and stop at the first one young enough: no copy of the keys (a
            # list of them per keyed write cost O(records), ~100 µs at 40,000 records)
            records = self.records
            while records:
                key = next(iter(records))
                if records[key].created_at_unix >= oldest_kept:
                    break
                del records[key]
                self.pruned += 1
        while self.max_records and len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]
            self.pruned += 1

    def prune(self, before: int, limit: int | None) -> int:
        """Delete records created before `before`, oldest-inserted first, at most `limit`."""
        doomed = [key for key, rec in self.records.items() if rec.created_at_unix < before]
        if limit is not None:
            doomed = doomed[:limit]
        for key in doomed:
            del self.records[key]
        self.pruned += len(doomed)
        return len(doomed)

    def documents(self) -> list[dict[str, Any]]:
        return [record.document() for record in self.records.values()]

    def load(self, documents: list[Any]) -> None:
        """Records from a snapshot (`karma.idempotency.json`, `karma.limits.json`), in the
        order written, which is the order they were stored in.

        Nothing is pruned by age here. The age rule runs when a record is stored, from that
        record's time (`remember`), and the file holds the table as the running node left it
        after its last store, so applying it again changes nothing, and applying it from any
        other time (the newest record's, which a clock stepped forward and back leaves far
        ahead of the rest, or the clock at restart) would forget keys the running node still
        honoured. The next keyed write applies the rule, as it would have on that node. The
        count limit is applied: it may have been lowered for this start.
        """
        for d in documents:
            if not (isinstance(d, dict) and "key" in d and "fingerprint" in d):
                continue
            record = Record(
                str(d["key"]),
                str(d.get("operation", "")),
                str(d["fingerprint"]),
                d.get("response"),
                int(d.get("created_at_unix", 0)),
            )
            self.records.pop(record.key, None)
            self.records[record.key] = record
        while self.max_records and len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]
            self.pruned += 1
