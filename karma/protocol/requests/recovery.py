"""`recovery.*` and `reconciliation.report`: an importer's checkpoints in its source (the offset
or event it reached) and its reports of how far the counters drifted from that source.
"""

from __future__ import annotations

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.requests.base import Request

__all__ = [
    "ReconciliationReport",
    "RecoveryCheckpoint",
    "RecoveryStatus",
]


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


AnyRecoveryRequest = RecoveryCheckpoint | RecoveryStatus | ReconciliationReport
