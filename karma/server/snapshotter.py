"""Snapshots: a consistent cut taken synchronously, written to files in a thread.

`capture` encodes every series with no `await` in between, so all of them are cut at the same
LSN (the store only changes between awaits, in the WAL writer's apply loop). The files are then
written off the event loop while requests keep being served. `create_all` finishes by asking the
WAL writer to drop the records the snapshot covers — through the cut, never the whole file, since
writes kept arriving meanwhile — after pruning old snapshots.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import msgspec
import trio

from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.errors import KarmaError
from karma.observability.logs import Logger
from karma.server.wal_writer import WalWriter
from karma.storage import manifest, snapshot_codec, snapshot_files


@attrs.frozen
class Cut:
    lsn: int
    timestamp: int
    series: dict[str, bytes]
    idempotency: tuple[bytes, int, int]
    limits: bytes


@attrs.define(eq=False)
class Snapshotter:
    directory: Path
    engine: Engine
    status: NodeStatus
    log: Logger
    writer: WalWriter | None
    retention: int
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    _disk: trio.CapacityLimiter = attrs.field(init=False, factory=lambda: trio.CapacityLimiter(1))

    def capture(self, names: list[str] | None = None) -> Cut:
        """Synchronous: every named series (default: all) at the same LSN."""
        store = self.engine.store
        chosen = list(store.series) if names is None else names
        lsn = self.status.wal_current_lsn
        return Cut(
            lsn=lsn,
            timestamp=int(time.time()),
            series={name: snapshot_codec.encode_series(store.series[name]) for name in chosen},
            idempotency=self.engine.idempotency_document(snapshot_codec.encode_series),
            limits=self.engine.limits_document(lsn),
        )

    async def create_all(self, reason: str) -> None:
        async with self._lock:
            cut = self.capture()
            try:
                await trio.to_thread.run_sync(self._write_all, cut, limiter=self._disk)
                # pruned before the WAL is truncated, and by the cut's own series: a series
                # dropped before the cut loses its old files while the WAL still holds its drop,
                # so a crash in between can never bring back an older snapshot without the
                # records that followed it
                removed = await trio.to_thread.run_sync(
                    snapshot_files.prune,
                    self.directory,
                    self.retention,
                    set(cut.series),
                    limiter=self._disk,
                )
                if self.writer is not None:
                    await self.writer.truncate_through(cut.lsn)
            except OSError as exc:
                self.log.error("snapshot.failed", reason=reason, error=str(exc))
                raise self._refused(exc) from exc
            self.status.storage_recovered("files")
            self.status.last_snapshot_lsn = cut.lsn
            await self.refresh_count()
            self.log.info(
                "snapshot.created",
                reason=reason,
                series=len(cut.series),
                lsn=cut.lsn,
                pruned=removed,
            )

    async def create_one(self, name: str) -> None:
        async with self._lock:
            if name not in self.engine.store.series:
                raise KarmaError.series_not_found(name)
            cut = self.capture([name])
            live = set(self.engine.store.series)
            try:
                await trio.to_thread.run_sync(self._write_one, cut, name, live, limiter=self._disk)
            except OSError as exc:
                self.log.error("snapshot.failed", series=name, error=str(exc))
                raise self._refused(exc) from exc
            self.status.storage_recovered("files")
            await self.refresh_count()
            self.log.info("snapshot.created", series=name, lsn=cut.lsn)

    def _refused(self, exc: OSError) -> KarmaError:
        """The directory refused a snapshot file: retriable, and nothing older was removed
        (pruning and WAL truncation come only after every new file is written)."""
        error = KarmaError.storage("Snapshot failed", exc, "older snapshots and the WAL are kept")
        self.status.storage_refused("files", error.message)
        return error

    def _write_all(self, cut: Cut) -> None:
        previous = self._manifest()
        entries = {}
        for name, data in cut.series.items():
            meta = snapshot_files.write_snapshot(self.directory, name, data, cut.timestamp, cut.lsn)
            entries[name] = manifest.entry(previous, name, meta.file, cut.lsn)
        snapshot_files.write_idempotency(self.directory, cut.idempotency, cut.timestamp, cut.lsn)
        snapshot_files.write_limits(self.directory, cut.limits, cut.timestamp, cut.lsn)
        # after every file it names, before the WAL is truncated: from then on it proves
        # which series exist when every file of one is gone (recovery.find_gaps)
        limits = manifest.Entry(file=snapshot_files.LIMITS, last_lsn=cut.lsn, first_lsn=cut.lsn)
        manifest.write(
            self.directory,
            manifest.Manifest(
                lsn=cut.lsn, written_at_unix=cut.timestamp, series=entries, limits=limits
            ),
        )

    def _write_one(self, cut: Cut, name: str, live: set[str]) -> None:
        meta = snapshot_files.write_snapshot(
            self.directory, name, cut.series[name], cut.timestamp, cut.lsn
        )
        previous = self._manifest()
        if previous is None:
            # no manifest yet: nothing was truncated under one, so naming this series alone
            # (its WAL entries are all there) proves as much as a full one would
            previous = manifest.Manifest(lsn=0, written_at_unix=cut.timestamp, series={})
        entry = manifest.entry(previous, name, meta.file, cut.lsn)
        kept = {n: e for n, e in previous.series.items() if n in live}
        updated = msgspec.structs.replace(
            previous, written_at_unix=cut.timestamp, series={**kept, name: entry}
        )
        manifest.write(self.directory, updated)

    def _manifest(self) -> manifest.Manifest | None:
        """The manifest in the directory; an unreadable one is replaced by the new one."""
        try:
            return manifest.read(self.directory)
        except manifest.ManifestError as exc:
            self.log.warning("manifest.unreadable", error=str(exc))
            return None

    async def refresh_count(self) -> None:
        found = await trio.to_thread.run_sync(snapshot_files.list_snapshots, self.directory)
        self.status.dump_count = len(found)

    async def recover_lost_wal(self) -> None:
        """When karma.wal is found removed or replaced, memory still holds every acknowledged
        write but no file does: a full snapshot makes them durable again, and its truncation
        creates a new karma.wal. Until then writes are refused; retried every second."""
        assert self.writer is not None
        while True:
            await self.writer.lost.wait()
            try:
                await self.create_all("wal_lost")
            except KarmaError:
                await trio.sleep(1.0)  # logged by create_all; the disk may come back
                continue
            self.writer.recovered()

    async def serve_interval(self, seconds: float) -> None:
        """Periodic snapshots (`--snapshot-interval-seconds`); a failure is logged, not fatal."""
        while True:
            await trio.sleep(seconds)
            try:
                await self.create_all("interval")
            except KarmaError:
                pass  # already logged by create_all; the next interval tries again
