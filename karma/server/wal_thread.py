"""The WAL's own thread: the blocking work on karma.wal, in the order it was handed over.

With `--wal-fsync=true` every batch the writer task forms is handed here without waiting. The
thread is the flush leader: when it is free it takes *every* batch queued so far and writes
them with one write and one fdatasync (group commit across batches), then hands the outcome
back to the event loop through the trio token, where the batches are applied and answered in
one pass. While the loop answers, the next group is already being written: the disk never
waits for a round trip through the loop while writes are queued.

Truncation and a replica's reset also run here, in order with the appends, so one thread
touches the file.

Why not `trio.to_thread.run_sync` per batch: a no-op round trip through it took 124-183 µs on
the project's 2-core machine, one through a running thread (`SimpleQueue.put`, then
`TrioToken.run_sync_soon`) 77-104 µs; and a task that waits for each batch before handing the
next leaves the disk idle for both hops between fsyncs (docs/performance.md, "Group commit").
"""

from __future__ import annotations

import errno
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

from karma.storage.wal_files import ActiveWal

T = TypeVar("T")
P = TypeVar("P")


@attrs.define(eq=False)
class Append(Generic[P]):
    """One batch to log: its lines numbered from `first`, and what the writer needs back."""

    first: int
    count: int
    data: bytes
    starts: list[tuple[int, int]]  # (lsn, offset in data)
    payload: P
    #: perf_counter() when the batch's oldest write was submitted, and when it was handed over
    since_s: float
    handed_s: float = 0.0


@attrs.define(eq=False)
class Written(Generic[P]):
    """What became of consecutive batches: one write and one fdatasync for all of them, or
    (`refused`) one batch not written because it does not follow the file's last LSN."""

    appends: list[Append[P]]
    error: OSError | None = None
    rotated: str | None = None
    refused: bool = False
    #: the WAL's size on disk right after the write, read on the thread (a rotation there
    #: changes its parts, so the loop does not add them up meanwhile)
    wal_bytes: int = 0
    #: perf_counter(): the thread took the group (after waking, if it slept), began, finished
    woke_s: float = 0.0
    started_s: float = 0.0
    finished_s: float = 0.0
    #: True when the thread slept until the first batch came: woke_s - handed_s is a hop
    waited: bool = False

    @property
    def entries(self) -> int:
        return sum(append.count for append in self.appends)


@attrs.define(eq=False)
class Call(Generic[T]):
    """Any other blocking job on the file (truncation, reset), waited for on the loop."""

    fn: Callable[..., T]
    args: tuple[Any, ...]
    done: trio.Event = attrs.field(factory=trio.Event)
    _value: T | None = None
    _error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - raised again on the event loop
            self._error = exc

    def value(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # T itself may be None


class _Nothing:
    """No job was waiting (a `get_nowait` found the queue empty)."""


NOTHING: Final = _Nothing()

#: what the thread is handed: a batch, another file job, or None to stop
Job = Append[P] | Call[Any] | None


class NotContinuousError(OSError):
    """A batch numbered after one that failed: written, it would leave a gap in the LSNs."""

    def __init__(self, first: int, expected: int) -> None:
        super().__init__(
            errno.EIO, f"WAL batch from LSN {first} not written: the file continues at {expected}"
        )


@attrs.define(eq=False)
class WalThread(Generic[P]):
    """A long-lived thread that writes karma.wal; outcomes go to `on_written` on the loop."""

    wal: ActiveWal
    on_written: Callable[[Written[P]], None]
    #: the LSN the file continues at: a batch numbered otherwise is refused, never written
    next_lsn: int = 1
    #: most entries in one write + fdatasync (--wal-batch-size); a batch is never split
    max_entries: int = 1024
    _jobs: queue.SimpleQueue[Job[P]] = attrs.field(init=False, factory=queue.SimpleQueue)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)

    def start(self) -> None:
        """Start the thread, from the event loop it reports to (`append` and `run` do it)."""
        if self._thread is not None:
            return
        token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(
            target=self._serve, args=(self._jobs, token), name="karma-wal", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Let the thread end after the jobs already handed to it (a later job starts a new
        thread, with a queue of its own)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._jobs = queue.SimpleQueue()
            self._thread = None

    def append(self, batch: Append[P]) -> None:
        """Queue a batch for writing; its outcome comes to `on_written`, in LSN order."""
        self.start()
        batch.handed_s = time.perf_counter()
        self._jobs.put(batch)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the thread after everything handed before it; shielded, as a
        started file job always finishes (another job must not reach the file meanwhile)."""
        self.start()
        call: Call[T] = Call(fn, args)
        self._jobs.put(call)
        with trio.CancelScope(shield=True):
            await call.done.wait()
        return call.value()

    # --- on the thread -----------------------------------------------------------------------
    def _serve(self, jobs: queue.SimpleQueue[Job[P]], token: trio.lowlevel.TrioToken) -> None:
        job: Job[P] | _Nothing = jobs.get()
        waited = True  # the thread slept until `job` came
        while True:
            woke = time.perf_counter()
            if isinstance(job, Append):
                queued = [job]
                job = self._take_appends(jobs, queued)
                for written in self._write(queued, woke, waited):
                    if not self._deliver(token, self.on_written, written):
                        return
            elif isinstance(job, Call):
                job.run()
                if not self._deliver(token, job.done.set):
                    return
                job = NOTHING
            else:
                return  # stop()
            waited = False
            if job is NOTHING:
                try:  # handed over while the thread wrote: taken at once, no sleep
                    job = jobs.get_nowait()
                except queue.Empty:
                    job, waited = jobs.get(), True

    @staticmethod
    def _take_appends(
        jobs: queue.SimpleQueue[Job[P]], queued: list[Append[P]]
    ) -> Job[P] | _Nothing:
        """Move every batch queued now into `queued`; the first other job found, if any."""
        while True:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                return NOTHING
            if not isinstance(job, Append):
                return job
            queued.append(job)

    def _write(self, queued: list[Append[P]], woke: float, waited: bool) -> Iterator[Written[P]]:
        """Write the queued batches, each run that continues the file as one group."""
        while queued:
            if queued[0].first != self.next_lsn:
                refused = queued.pop(0)
                error = NotContinuousError(refused.first, self.next_lsn)
                yield Written([refused], error, refused=True)
                continue
            group = [queued.pop(0)]
            expected = self.next_lsn + group[0].count
            while (
                queued
                and queued[0].first == expected
                and expected + queued[0].count - self.next_lsn <= self.max_entries
            ):
                expected += queued[0].count
                group.append(queued.pop(0))
            yield self._write_group(group, woke, waited)
            waited = False

    def _write_group(self, group: list[Append[P]], woke: float, waited: bool) -> Written[P]:
        written = Written(group, woke_s=woke, waited=waited)
        if len(group) == 1:
            data, starts = group[0].data, group[0].starts
        else:
            parts, starts, base = [], [], 0
            for append in group:
                parts.append(append.data)
                starts.extend((lsn, base + offset) for lsn, offset in append.starts)
                base += len(append.data)
            data = b"".join(parts)
        written.started_s = time.perf_counter()
        try:
            written.rotated = self.wal.append(data, starts)
        except OSError as exc:  # the file was cut back: nothing of the group is on disk
            written.error = exc
        else:
            self.next_lsn = group[-1].first + group[-1].count
        written.wal_bytes = self.wal.total_bytes
        written.finished_s = time.perf_counter()
        return written

    @staticmethod
    def _deliver(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: Any) -> bool:
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False  # the event loop is gone: nobody waits any more
        return True
