"""`series.*` maintenance: compacting a series and deleting its days before a date, with karma
1.0's `tree.*` aliases.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64
from karma.protocol.requests.base import SeriesRequest, opt

__all__ = [
    "DeleteBefore",
    "SeriesCompact",
    "TreeCompact",
    "TreeDeleteBefore",
]


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


AnySeriesRequest = SeriesCompact | TreeCompact | DeleteBefore | TreeDeleteBefore
