"""The WAL writer: group commit, and a failed write (disk full) that changes nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import attrs
import trio

from karma.core import mutations as m
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.observability.logs import Logger
from karma.server.wal_writer import WalWriter
from karma.storage import recovery, wal_files


@attrs.define(eq=False)
class FullDisk(wal_files.ActiveWal):
    """A real ActiveWal whose next `failures` appends fail as a full disk would."""

    failures: int = 0

    def append(self, data: bytes, line_starts: list[tuple[int, int]]) -> str | None:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().append(data, line_starts)


def inc(value: int) -> m.Increment:
    return m.Increment(series="a", key=1, bucket=20260501, value=value)


async def start(
    nursery: trio.Nursery, tmp_path: Path, *, fsync: bool = False
) -> tuple[WalWriter, FullDisk, Engine, NodeStatus]:
    wal = FullDisk(tmp_path, fsync=fsync, segment_bytes=0)
    wal.open([])
    engine, status = Engine(), NodeStatus()
    writer = WalWriter(engine, wal, status, Logger(enabled=False))
    await nursery.start(writer.run)
    return writer, wal, engine, status


async def test_a_failed_write_answers_every_waiter_and_changes_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    writer, wal, engine, status = await start(nursery, tmp_path)
    assert (await _commit(writer, inc(1))).error is None
    wal.failures = 1
    batch = [writer.submit_nowait(inc(10)) for _ in range(3)]
    for pending in batch:
        await pending.done.wait()
    assert all(p.error is not None and "No space left" in p.error.message for p in batch)
    assert engine.store.series["a"].sum(1) == 1
    assert status.wal_current_lsn == 1
    assert (await _commit(writer, inc(2))).error is None  # the server carries on
    assert status.wal_current_lsn == 2
    replayed = Engine()
    recovery.restore(
        tmp_path, replayed, today=20260501, now=0, replay=True, log=Logger(enabled=False)
    )
    assert replayed.store.series["a"].sum(1) == 3


async def test_queued_writes_share_one_batch(nursery: trio.Nursery, tmp_path: Path) -> None:
    writer, _, engine, status = await start(nursery, tmp_path, fsync=True)
    pending = [writer.submit_nowait(inc(1)) for _ in range(100)]
    for each in pending:
        await each.done.wait()
    assert engine.store.series["a"].sum(1) == 100
    assert status.wal_current_lsn == 100
    assert writer.batches <= 2  # one fsync for the lot, not one per write


async def _commit(writer: WalWriter, mutation: m.Mutation):  # type: ignore[no-untyped-def]
    pending = writer.submit_nowait(mutation)
    await pending.done.wait()
    return pending
