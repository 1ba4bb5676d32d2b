"""`snapshot.*`: write, list, verify, load and fetch the `.tree` files (served from the storage
layer); a replica bootstraps from `snapshot.fetch_chunk`.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64
from karma.protocol.requests.base import Request, SeriesRequest, opt

__all__ = [
    "CHUNK_DEFAULT",
    "CHUNK_MAX",
    "FileRequest",
    "SnapshotCreate",
    "SnapshotCreateAll",
    "SnapshotFetch",
    "SnapshotFetchChunk",
    "SnapshotInfo",
    "SnapshotList",
    "SnapshotLoad",
    "SnapshotManifest",
    "SnapshotVerify",
]


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


class SnapshotManifest(Request, tag="snapshot.manifest", frozen=True, kw_only=True):
    """karma.manifest.json: a replica copies it to check its bootstrap against."""


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


AnySnapshotRequest = (
    SnapshotCreate
    | SnapshotCreateAll
    | SnapshotList
    | SnapshotInfo
    | SnapshotVerify
    | SnapshotManifest
    | SnapshotLoad
    | SnapshotFetch
    | SnapshotFetchChunk
)
