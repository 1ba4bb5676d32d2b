"""`tree.*`: a series as a whole (karma 1.0 calls a series a tree): the catalog, create, drop and
reset, and the reads over all of a series' keys (info, keys, summary, top, points, deletes).
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.protocol import fields as f
from karma.protocol.fields import U64, DayRange
from karma.protocol.requests.base import Request, SeriesRequest, opt

__all__ = [
    "TREE_KEYS_DEFAULT_LIMIT",
    "TREE_KEYS_MAX_LIMIT",
    "TREE_TOP_DEFAULT_LIMIT",
    "TREE_TOP_MAX_LIMIT",
    "RangedSeriesRequest",
    "TreeCreate",
    "TreeDeleteRange",
    "TreeDrop",
    "TreeInfo",
    "TreeKeys",
    "TreeList",
    "TreeReset",
    "TreeSeries",
    "TreeSummary",
    "TreeTop",
]


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


AnyTreeRequest = (
    TreeList
    | TreeCreate
    | TreeDrop
    | TreeReset
    | TreeInfo
    | TreeKeys
    | TreeSummary
    | TreeTop
    | TreeSeries
    | TreeDeleteRange
)
