"""The WAL writer: group commit, and a failed write (disk full) that changes nothing."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import attrs
import trio
import trio.testing

from karma.core import mutations as m
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.observability.logs import Logger
from karma.server.wal_writer import Pending, WalWriter
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


@attrs.define(eq=False)
class GatedDisk(FullDisk):
    """FullDisk whose first append waits for `release`, as a slow fdatasync would; `appends`
    counts the writes (each one write and one fdatasync)."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    release: threading.Event = attrs.field(factory=threading.Event)
    appends: int = 0

    def append(self, data: bytes, line_starts: list[tuple[int, int]]) -> str | None:
        self.appends += 1
        if self.appends == 1:
            self.entered.set()
            self.release.wait(10)
        return super().append(data, line_starts)


def inc(value: int) -> m.Increment:
    return m.Increment(series="a", key=1, bucket=20260501, value=value)


async def start(
    nursery: trio.Nursery, tmp_path: Path, *, fsync: bool = False, gated: bool = False
) -> tuple[WalWriter, FullDisk, Engine, NodeStatus]:
    wal = (GatedDisk if gated else FullDisk)(tmp_path, fsync=fsync, segment_bytes=0)
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


async def _hand_over_while_the_first_write_waits(
    writer: WalWriter, wal: GatedDisk, batches: int
) -> list[Pending]:
    """One write goes to the WAL thread and stays there; then `batches` more batches are
    handed over one by one (each submitted once the writer task handed over the last)."""
    pending = [writer.submit_nowait(inc(1))]
    await trio.to_thread.run_sync(wal.entered.wait)
    for _ in range(batches):
        pending += [writer.submit_nowait(inc(1)), writer.submit_nowait(inc(1))]
        await trio.testing.wait_all_tasks_blocked()
    return pending


async def test_batches_handed_over_during_an_fdatasync_share_the_next_one(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    writer, wal, engine, status = await start(nursery, tmp_path, fsync=True, gated=True)
    assert isinstance(wal, GatedDisk)
    pending = await _hand_over_while_the_first_write_waits(writer, wal, batches=5)
    assert not any(p.done.is_set() for p in pending)  # nothing answered before it is on disk
    assert engine.store.series == {}  # nor applied
    wal.release.set()
    for each in pending:
        await each.done.wait()
    assert all(p.error is None for p in pending)
    assert wal.appends == 2  # the first write, then the five batches in one write + fdatasync
    assert writer.batches == 2
    assert status.wal_batches.entries.counts[0] == 1  # a batch of 1 entry ...
    assert status.wal_batches.entries.total == 11  # ... and one of 10
    assert engine.store.series["a"].sum(1) == 11
    assert status.wal_current_lsn == 11
    replayed = Engine()
    recovery.restore(
        tmp_path, replayed, today=20260501, now=0, replay=True, log=Logger(enabled=False)
    )
    assert replayed.store.series["a"].sum(1) == 11


async def test_batches_numbered_after_a_failed_write_are_refused_unwritten(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    writer, wal, engine, status = await start(nursery, tmp_path, fsync=True, gated=True)
    assert isinstance(wal, GatedDisk)
    wal.failures = 1  # the first write fails once released: disk full
    pending = await _hand_over_while_the_first_write_waits(writer, wal, batches=2)
    wal.release.set()
    for each in pending:
        await each.done.wait()
    # the later batches were numbered to follow the failed one: written, they would leave a
    # gap in the LSNs; they are answered with the same error and nothing is applied
    assert {p.error.message if p.error else None for p in pending} == {pending[0].error.message}
    assert "No space left" in pending[0].error.message
    assert engine.store.series == {}
    assert status.wal_current_lsn == 0
    assert (await _commit(writer, inc(7))).error is None  # numbering starts again at 1
    assert status.wal_current_lsn == 1
    replayed = Engine()
    recovery.restore(
        tmp_path, replayed, today=20260501, now=0, replay=True, log=Logger(enabled=False)
    )
    assert replayed.store.series["a"].sum(1) == 7


async def _commit(writer: WalWriter, mutation: m.Mutation):  # type: ignore[no-untyped-def]
    pending = writer.submit_nowait(mutation)
    await pending.done.wait()
    return pending


async def test_a_write_in_flight_to_the_gathering_task_is_failed_behind_a_failed_flush(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The window: the writer task waits in receive(); a write is submitted (handed straight to
    # that task, which has not run yet) and, before the task runs, a failed flush's result is
    # handled on the loop. The write is in neither the channel nor the batch being gathered.
    # The failure's handling is called here as the WAL thread's callback calls it, with no
    # checkpoint in between, because the thread's timing cannot place it in that window.
    writer, wal, engine, _status = await start(nursery, tmp_path, fsync=True, gated=True)
    assert isinstance(wal, GatedDisk)
    wal.failures = 1
    first = writer.submit_nowait(inc(1))
    await trio.to_thread.run_sync(wal.entered.wait)  # on the WAL thread, held there
    await trio.testing.wait_all_tasks_blocked()  # the writer task waits in receive()
    behind = writer.submit_nowait(inc(2))  # handed to the waiting task, which has not run
    error = writer._failure = writer._failed(OSError(errno.EIO, "Input/output error"), 1)
    writer._fail_behind(error)
    with trio.fail_after(5):  # dropped unfinished, it would never be answered
        await behind.done.wait()
    assert behind.error is error
    assert first.error is error  # ahead of it, and not done either: failed with it
    wal.release.set()  # the thread's own result for `first` comes back: a failure too
    with trio.fail_after(5):
        await writer._settled.wait()  # nothing handed over is out any more
    assert engine.store.series == {}
    assert (await _commit(writer, inc(7))).error is None  # the writer goes on
    assert engine.store.series["a"].sum(1) == 7
