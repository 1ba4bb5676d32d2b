"""Snapshot ops: create, list, inspect, verify, load and fetch the `.tree` files (and the
idempotency snapshot a replica bootstraps from)."""

from __future__ import annotations

import base64
import contextlib
from typing import Final

from karma.errors import ErrorCode, KarmaError
from karma.protocol import requests as r
from karma.server.context import AsyncHandler, Context
from karma.server.snapshotter import Snapshotter
from karma.storage import files, manifest, snapshot_codec, snapshot_files


def _snapshotter(ctx: Context) -> Snapshotter:
    assert ctx.snapshots is not None
    return ctx.snapshots


async def snapshot_create(ctx: Context, req: r.SnapshotCreate) -> object:
    await _snapshotter(ctx).create_one(req.name)
    return f'Tree "{req.name}" saved'


async def snapshot_create_all(ctx: Context, req: r.SnapshotCreateAll) -> object:
    await _snapshotter(ctx).create_all("request")
    return "OK"


async def snapshot_list(ctx: Context, req: r.SnapshotList) -> object:
    found = await ctx.in_thread(snapshot_files.list_snapshots, ctx.directory)
    return [str(s.path) for s in found]


async def snapshot_info(ctx: Context, req: r.SnapshotInfo) -> object:
    return await ctx.in_thread(_snapshot_info, ctx)


def _snapshot_info(ctx: Context) -> dict[str, object]:
    found = snapshot_files.list_snapshots(ctx.directory)
    latest = [s.meta() for s in snapshot_files.latest_by_series(ctx.directory).values()]
    latest.sort(key=lambda meta: -meta.timestamp)
    return {
        "dump_count": len(found),
        "latest_by_tree": [meta.presented() for meta in latest],
        "idempotency_snapshot": snapshot_files.idempotency_meta(ctx.directory),
        "last_snapshot_lsn": max((meta.last_lsn for meta in latest), default=0),
        "wal_enabled": ctx.status.wal_enabled,
        "wal_bytes": ctx.status.wal_bytes,
        "wal_current_lsn": ctx.status.wal_current_lsn,
        "dump_retention_per_tree": ctx.config.dump_retention_per_tree,
    }


async def snapshot_verify(ctx: Context, req: r.SnapshotVerify) -> object:
    from karma.storage import verify

    return await ctx.in_thread(verify.verify, ctx.directory)


async def snapshot_manifest(ctx: Context, req: r.SnapshotManifest) -> object:
    try:
        found = await ctx.in_thread(manifest.read, ctx.directory)
    except manifest.ManifestError as exc:
        raise KarmaError.validation(f"{manifest.NAME} cannot be read: {exc}") from exc
    if found is None:
        raise KarmaError(ErrorCode.NOT_FOUND, f"{manifest.NAME} not found")
    return found


async def snapshot_load(ctx: Context, req: r.SnapshotLoad) -> object:
    snapshot = snapshot_files.resolve(ctx.directory, req.file)
    if snapshot is None:
        if snapshot_files.TREE_NAME.fullmatch(req.file) is None:
            raise KarmaError.validation(f'Invalid dump file name "{req.file}"')
        series = req.file.split("_", 1)[1].removesuffix(".tree")
        raise KarmaError(ErrorCode.NOT_FOUND, f'Dump "{series}" not found')
    try:
        data = await ctx.in_thread(snapshot_files.read, snapshot)
        loaded = snapshot_codec.decode_series(data)
    except files.NotRegularFileError as exc:  # removed, or swapped for a link, meanwhile
        raise KarmaError(ErrorCode.NOT_FOUND, f'Dump "{snapshot.series}" not found') from exc
    except (OSError, snapshot_codec.SnapshotError) as exc:
        raise KarmaError.validation(f"Cannot load {req.file}: {exc}") from exc
    # karma 1.0 semantics: memory only, not logged; the next snapshot makes it durable
    ctx.engine.store.series[snapshot.series] = loaded
    ctx.log.info("snapshot.load", file=req.file, series=snapshot.series)
    return f'Tree "{snapshot.series}" loaded'


async def snapshot_fetch(ctx: Context, req: r.SnapshotFetch) -> object:
    snapshot, data = await _existing(ctx, req.file)
    return {
        "metadata": snapshot.meta().presented(),
        "data_base64": base64.b64encode(data).decode(),
    }


async def snapshot_fetch_chunk(ctx: Context, req: r.SnapshotFetchChunk) -> object:
    snapshot, data = await _existing(ctx, req.file)
    return _chunk(snapshot.meta().presented(), data, req.offset, req.limit, "snapshot")


async def idempotency_snapshot_fetch_chunk(
    ctx: Context, req: r.IdempotencySnapshotFetchChunk
) -> object:
    meta = snapshot_files.idempotency_meta(ctx.directory)
    path = ctx.directory / snapshot_files.IDEMPOTENCY
    if meta is not None:
        with contextlib.suppress(files.NotRegularFileError):  # a link is no snapshot
            data = await ctx.in_thread(files.read_regular, path)
            return _chunk(meta, data, req.offset, req.limit, "idempotency snapshot")
    raise KarmaError(ErrorCode.NOT_FOUND, "Idempotency snapshot not found")


async def _existing(ctx: Context, file: str) -> tuple[snapshot_files.SnapshotFile, bytes]:
    """The snapshot named `file` and its bytes: a regular file in the directory only."""
    snapshot = snapshot_files.resolve(ctx.directory, file)
    if snapshot is not None:
        with contextlib.suppress(files.NotRegularFileError):  # removed or swapped meanwhile
            return snapshot, await ctx.in_thread(snapshot_files.read, snapshot)
    raise KarmaError(ErrorCode.NOT_FOUND, f'Snapshot "{file}" not found')


def _chunk(
    meta: dict[str, object], data: bytes, offset_field: object, limit_field: object, what: str
) -> dict[str, object]:
    offset = r.opt(offset_field) or 0
    limit = r.opt(limit_field) or r.CHUNK_DEFAULT
    assert isinstance(offset, int)
    assert isinstance(limit, int)
    if offset > len(data):
        raise KarmaError.validation(f"Field offset exceeds {what} size")
    piece = data[offset : offset + limit]
    next_offset = offset + len(piece)
    return {
        "metadata": meta,
        "offset": offset,
        "limit": limit,
        "bytes": len(piece),
        "total_bytes": len(data),
        "next_offset": next_offset,
        "done": next_offset >= len(data),
        "data_base64": base64.b64encode(piece).decode(),
    }


ASYNC: Final[dict[type, AsyncHandler]] = {
    r.SnapshotCreate: snapshot_create,
    r.SnapshotCreateAll: snapshot_create_all,
    r.SnapshotList: snapshot_list,
    r.SnapshotInfo: snapshot_info,
    r.SnapshotVerify: snapshot_verify,
    r.SnapshotManifest: snapshot_manifest,
    r.SnapshotLoad: snapshot_load,
    r.SnapshotFetch: snapshot_fetch,
    r.SnapshotFetchChunk: snapshot_fetch_chunk,
    r.IdempotencySnapshotFetchChunk: idempotency_snapshot_fetch_chunk,
}
