"""The WAL writer task: the only writer of karma.wal and the only place the store changes.

Connections submit mutations and wait. The writer takes what is queued (up to
`--wal-batch-size`, waiting up to `--wal-batch-wait-us` for more) and assigns LSNs. A batch is
applied to memory in LSN order only once it is written (and fsynced, with `--wal-fsync=true`),
and every waiter of the batch is woken with its own result in the same pass. If the write
fails, every waiter of the batch gets an error and memory is untouched, and so does every write
submitted behind it that is not done yet (docs/durability.md, "A failed flush"): the WAL is a
prefix, and a limit decision behind the failed batch may have counted its effects.

With fsync off the write goes to the page cache from the event loop (microseconds). With fsync
on, batches are handed to the WAL's own thread (wal_thread.py) without waiting; it writes
everything handed over since its last fdatasync with one write and one fdatasync, and its
outcome comes back to `_written` on the event loop, which applies and answers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import attrs
import trio

from karma.core import mutations as m
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.errors import ErrorCode, KarmaError
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.server.wal_thread import Append, WalThread, Written
from karma.storage import wal_codec
from karma.storage.wal_files import ActiveWal, WalLostError


@attrs.define(eq=False)
class Pending:
    mutation: m.Mutation
    done: trio.Event = attrs.field(factory=trio.Event)
    response: object = None
    error: KarmaError | None = None
    #: A replica logs some records whose effect its bootstrap snapshots already hold; it
    #: applies those itself (partially) once they are logged.
    apply: bool = True
    #: an entry copied from the master (the fence does not apply: the master acked it)
    replicated: bool = False
    #: the writer's count of failed flushes when this was submitted: one submitted before a
    #: flush failed is behind the failed batch, and is failed with it (`_fail_behind`)
    epoch: int = 0
    #: called once `done` is set, by the writer (the node drops the claim of a keyed write)
    on_done: Callable[[], None] | None = None
    #: a keyed write's (command, fingerprint), worked out once when it was decided: its
    #: idempotency record is made from them instead of hashing the request again
    canon: tuple[str, str] | None = None

    def finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()


Batch = list[Pending]
#: a batch's lines: (first LSN, bytes, (lsn, offset) of each line)
Encoded = tuple[int, bytes, list[tuple[int, int]]]


@attrs.define(eq=False)
class WalWriter:
    engine: Engine
    wal: ActiveWal
    status: NodeStatus
    log: Logger
    batch_size: int = 1024
    batch_wait_us: int = 0
    _send: trio.MemorySendChannel[Pending] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Pending] = attrs.field(init=False)
    #: the WAL's own thread: appends with fsync, truncation, reset
    _thread: WalThread[Batch] = attrs.field(init=False)
    _file_lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    #: True from the moment a batch leaves the queue until it is written (fsync off)
    _busy: bool = attrs.field(init=False, default=False)
    #: submitted and not yet taken into a batch (the channel's statistics() costs ~1 µs)
    _queued: int = attrs.field(init=False, default=0)
    #: perf_counter() when the oldest write still queued was submitted
    _oldest_s: float = attrs.field(init=False, default=0.0)
    #: fsync on: the LSN the next batch handed to the thread starts at, and the batches handed
    #: over and not yet back; `_settled` is set while none are out
    _next_lsn: int = attrs.field(init=False, default=0)
    _out: int = attrs.field(init=False, default=0)
    _settled: trio.Event = attrs.field(init=False, factory=trio.Event)
    #: a bug met while handling a batch's outcome on the loop; the writer task raises it
    _crashed: BaseException | None = attrs.field(init=False, default=None)
    _running: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    #: the error of the last batch the disk refused (fsync on)
    _failure: KarmaError | None = attrs.field(init=False, default=None)
    #: set when karma.wal is found removed or replaced; the recovery task waits on it
    lost: trio.Event = attrs.field(init=False, factory=trio.Event)
    #: the newest write submitted: a denial that writes nothing waits for it (limit_ops)
    _last: Pending | None = attrs.field(init=False, default=None)
    #: flushes that failed so far (the epoch of new Pendings); the batch being gathered and
    #: the batches handed to the thread and not back yet: what a failed flush fails behind it
    _failures: int = attrs.field(init=False, default=0)
    _forming: Batch = attrs.field(init=False, factory=list)
    _handed: deque[Append[Batch]] = attrs.field(init=False, factory=deque)
    #: batches written (with fsync on: fdatasync calls, each for every batch handed over)
    batches: int = 0
    #: HA (--ha-etcd): client writes are logged and acknowledged only while the fence is open
    fence: Fence | None = None
    #: called after each batch is logged (the master's long-polling replicas wait for it)
    on_logged: Callable[[], None] | None = None

    def __attrs_post_init__(self) -> None:
        # unbounded: each submitter waits for its own result, so the depth is bounded by the
        # number of connections times the writes one read can carry
        self._send, self._receive = trio.open_memory_channel[Pending](math.inf)
        self._thread = WalThread(self.wal, self._written, max_entries=self.batch_size)
        self._settled.set()

    def submit_nowait(
        self,
        mutation: m.Mutation,
        canon: tuple[str, str] | None = None,
        *,
        apply: bool = True,
        replicated: bool = False,
    ) -> Pending:
        pending = Pending(mutation, apply=apply, replicated=replicated, epoch=self._failures)
        pending.canon = canon
        self._send.send_nowait(pending)
        if not self._queued:
            self._oldest_s = time.perf_counter()  # once per batch, for karma_wal_batch_wait
        self._queued += 1
        self._last = pending
        return pending

    async def barrier(self) -> KarmaError | None:
        """Wait until everything submitted so far is written and applied; its error, if any."""
        last = self._last
        if last is None:
            return None
        await last.done.wait()
        return last.error

    def unfinished(self) -> Pending | None:
        """The newest write submitted, while it is not done yet: a decision that writes nothing
        but counted pending effects is answered once it is (every earlier write is done then,
        as batches finish in queue order), with its error if it failed."""
        last = self._last
        return None if last is None or last.done.is_set() else last

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._next_lsn = self._thread.next_lsn = self.status.wal_current_lsn + 1
        task_status.started()
        try:
            with self._running:
                await self._serve()
        finally:
            with trio.CancelScope(shield=True):
                await self._settled.wait()  # batches handed over are answered first
            self._thread.stop()
        if self._crashed is not None:
            raise self._crashed

    async def _serve(self) -> None:
        while True:
            batch, since = await self._gather()
            with trio.CancelScope(shield=True):
                # a dequeued batch is finished even at shutdown: its clients are waiting
                async with self._file_lock:
                    batch = self._current(batch)
                    if not batch:
                        pass  # all of it was behind a failed flush, and failed with it
                    elif self.wal.fsync:
                        self._hand(batch, since)
                    else:
                        self._write(batch, since)
            self._forming = []
            self._busy = False

    async def _gather(self) -> tuple[Batch, float]:
        """The next batch, once other ready connections had their turn to add to it, and when
        its oldest write was submitted."""
        self._forming = batch = [await self._receive.receive()]
        self._busy = True
        await trio.lowlevel.checkpoint()  # let other ready connections queue their writes
        self._drain(batch)
        if self.batch_wait_us and len(batch) < self.batch_size:
            with trio.move_on_after(self.batch_wait_us / 1e6):
                while len(batch) < self.batch_size:
                    batch.append(await self._receive.receive())
                    self._drain(batch)
        since = self._oldest_s
        self._queued -= len(batch)
        if self._queued:
            self._oldest_s = time.perf_counter()  # beyond --wal-batch-size: counted from now
        return batch, since

    def _drain(self, batch: Batch) -> None:
        while len(batch) < self.batch_size:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return

    def can_write_now(self) -> bool:
        """True when a write may be logged and applied right here, synchronously.

        Only without fsync (a page-cache write costs microseconds, less than waking this task),
        and only when nothing else is queued, being written or holding the file: then every
        write submitted before is already applied, so order is kept (on each connection too).
        """
        return (
            not self.wal.fsync
            and not self._busy
            and not self._file_lock.locked()
            and self._queued == 0
        )

    def write_now(self, mutation: m.Mutation) -> object:
        """Log and apply one mutation synchronously (see `can_write_now`); raises KarmaError."""
        fence = self.fence
        if fence is not None and not fence.may_ack():
            raise fence.refusal()  # nothing written
        first, data, starts = self._encode([mutation], self.status.wal_current_lsn + 1)
        try:
            rotated = self.wal.append(data, starts)
        except OSError as exc:
            raise self._failed(exc, 1) from exc
        self._logged(rotated, first, 1)
        self.status.wal_batches.one_entry_written()
        response = self.engine.apply(mutation)  # total: on a late refusal nothing changed
        if fence is not None and not fence.may_ack():
            raise fence.refusal()  # logged, but past the deadline: never acknowledged
        return response

    # --- fsync off: written from the loop --------------------------------------------------------
    def _write(self, batch: Batch, since: float) -> None:
        batch = self._fenced(batch)
        if not batch:
            return
        first, data, starts = self._encode(
            [pending.mutation for pending in batch], self.status.wal_current_lsn + 1
        )
        started = time.perf_counter()
        try:
            rotated = self.wal.append(data, starts)
        except OSError as exc:
            error = self._failure = self._failed(exc, len(batch))
            self._fail(batch, error)
            self._fail_behind(error)
            return
        stats = self.status.wal_batches
        stats.entries.observe(len(batch))
        stats.wait_s.observe(started - since)
        stats.sync_s.observe(time.perf_counter() - started)
        self._logged(rotated, first, len(batch))
        self.batches += 1
        self._apply(batch)

    # --- fsync on: written on the WAL thread -----------------------------------------------------
    def _hand(self, batch: Batch, since: float) -> None:
        """Number and encode `batch`, and give it to the WAL thread without waiting."""
        batch = self._fenced(batch)
        if not batch:
            return
        first, data, starts = self._encode([pending.mutation for pending in batch], self._next_lsn)
        self._next_lsn = first + len(batch)
        if not self._out:
            self._settled = trio.Event()
        self._out += 1
        append = Append(first, len(batch), data, starts, batch, since)
        self._handed.append(append)
        self._thread.append(append)

    def _written(self, written: Written[Batch]) -> None:
        """On the event loop (the WAL thread's run_sync_soon): apply and answer, or fail.

        Written batches arrive in LSN order. A failed group was cut from the file; the batches
        handed over after it were numbered to follow it, so the thread refuses them unwritten
        (wal_thread.NotContinuousError), and numbering starts again after the last LSN written.
        """
        try:
            self._settle(written)
        except BaseException as exc:  # noqa: BLE001 - a bug: the writer task raises it
            self._crashed = exc
            self._running.cancel()
        self._out -= len(written.appends)
        if not self._out:
            self._settled.set()

    def _settle(self, written: Written[Batch]) -> None:
        self._observe(written)
        for _ in written.appends:
            self._handed.popleft()  # they come back in the order they were handed over
        entries = written.entries
        if written.error is None:
            self._logged(written.rotated, written.appends[0].first, entries, written.wal_bytes)
            self.batches += 1
            for append in written.appends:
                self._apply(append.payload)
            return
        if written.refused and self._failure is not None:
            error = self._failure  # numbered after a failed batch: answered as that one was
        else:
            error = self._failure = self._failed(written.error, entries)
            self._next_lsn = self.status.wal_current_lsn + 1
        for append in written.appends:
            self._fail(append.payload, error)
        if not written.refused:
            self._fail_behind(error)

    def _observe(self, written: Written[Batch]) -> None:
        if written.refused:
            return
        stats = self.status.wal_batches
        stats.entries.observe(written.entries)
        stats.sync_s.observe(written.finished_s - written.started_s)
        for append in written.appends:
            stats.wait_s.observe(written.started_s - append.since_s)
        hops = time.perf_counter() - written.finished_s  # the result back to the loop
        if written.waited:  # and the thread was woken for this group
            hops += written.woke_s - written.appends[0].handed_s
        stats.handoff_s.observe(hops)

    # --- both ------------------------------------------------------------------------------------
    @staticmethod
    def _encode(mutations: list[m.Mutation], first: int) -> Encoded:
        """The batch's lines, numbered from `first`: (first LSN, bytes, line starts)."""
        parts: list[bytes] = []
        starts: list[tuple[int, int]] = []
        offset = 0
        for lsn, mutation in enumerate(mutations, first):
            line = wal_codec.encode_line(lsn, m.encode(mutation))
            starts.append((lsn, offset))
            offset += len(line)
            parts.append(line)
        return first, b"".join(parts), starts

    def _failed(self, exc: OSError, records: int) -> KarmaError:
        if isinstance(exc, WalLostError):
            if not self.lost.is_set():
                self.log.error(
                    "wal.lost",
                    path=str(self.wal.directory / "karma.wal"),
                    records=records,
                    recovery="refusing writes until a full snapshot is written and a new"
                    " karma.wal is created",
                )
                self.lost.set()
            error = KarmaError(
                ErrorCode.STORAGE_UNAVAILABLE,
                "WAL write failed: karma.wal was removed or replaced; nothing was written,"
                " retry after the server's recovery snapshot",
            )
            self.status.storage_refused("wal", error.message)
            return error
        # the disk refused (full, read-only, ...): append cut the file back, nothing was
        # applied or acknowledged, so the client may retry — not a bug (internal_error)
        self.log.error("wal.write_failed", error=str(exc), records=records)
        error = KarmaError.storage("WAL write failed", exc, "nothing was written")
        self.status.storage_refused("wal", error.message)
        return error

    def recovered(self) -> None:
        """A full snapshot holds every acknowledged write and a new karma.wal is open."""
        if self.lost.is_set():
            self.lost = trio.Event()
            self.log.info("wal.recovered", path=str(self.wal.directory / "karma.wal"))

    def _logged(
        self, rotated: str | None, first: int, count: int, wal_bytes: int | None = None
    ) -> None:
        if self.status.storage_problems:  # one dict test per write while all is well
            self.status.storage_recovered("wal")
        if rotated is not None:
            self.log.info("wal.rotate", segment=rotated, first_lsn_after=first)
        self.status.wal_current_lsn = first + count - 1
        if self.on_logged is not None:
            self.on_logged()
        self.status.wal_bytes = self.wal.total_bytes if wal_bytes is None else wal_bytes

    async def reset_to(self, lsn: int) -> None:
        """Empty the WAL and continue numbering after `lsn` (a replica's new bootstrap)."""
        async with self._file_lock:
            await self._settled.wait()
            await self._thread.run(self._reset_on_thread, lsn)
            self.status.wal_current_lsn = lsn
            self._next_lsn = lsn + 1
            self.status.wal_bytes = self.wal.total_bytes

    def _reset_on_thread(self, lsn: int) -> None:
        self.wal.reset_to(lsn)
        self._thread.next_lsn = lsn + 1

    async def truncate_through(self, lsn: int) -> None:
        """Drop WAL records <= lsn, between batches (this task owns the file)."""
        async with self._file_lock:
            await self._settled.wait()  # the LSN file gets the last LSN written
            await self._thread.run(self.wal.truncate_through, lsn, self.status.wal_current_lsn)
            self.status.wal_bytes = self.wal.total_bytes
            self.log.info("wal.truncate", through_lsn=lsn, wal_bytes=self.wal.total_bytes)

    def _fail(self, batch: Batch, error: KarmaError) -> None:
        """The batch was not written: every waiter gets `error`, nothing was applied."""
        for pending in batch:
            if pending.done.is_set():
                continue  # failed already, behind an earlier failed flush
            self.engine.limits.unpend(pending.mutation)  # a limit effect no longer pending
            pending.error = error
            pending.finish()

    def _fail_behind(self, error: KarmaError) -> None:
        """A flush failed: fail, in queue order, every write submitted before now that is not
        done — the batches handed to the thread after it, the batch being gathered, the queue.

        They are behind the failed batch in the WAL, and were decided while its effects were
        pending: a limit decision among them may have counted them (docs/durability.md, "A
        failed flush"). None is acknowledged, none is applied; a decision made from now on
        sees the effects unpended. Failed at once, in one pass, so they finish in queue order.
        """
        self._failures += 1
        for append in self._handed:
            self._fail(append.payload, error)
        self._fail(self._forming, error)
        while True:
            try:
                pending = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            self._queued -= 1
            self._fail([pending], error)

    def _current(self, batch: Batch) -> Batch:
        """`batch` without the writes submitted before a failed flush: they are behind it.

        Most were failed by `_fail_behind` already. One can have escaped it: the write this
        task's `receive()` was handed but had not run with yet when the failure came back
        from the WAL thread (in neither the channel nor `_forming`). It is failed here, like
        the others: dropped unfinished, its client would wait forever and its limit effect
        would stay pending, counted by every later decision.
        """
        if batch[0].epoch == self._failures:  # submitted in order: the first is the oldest
            return batch
        kept: Batch = []
        for pending in batch:
            if pending.epoch == self._failures:
                kept.append(pending)
            elif not pending.done.is_set():
                assert self._failure is not None  # an older epoch means a flush failed
                self._fail([pending], self._failure)
        return kept

    def _fenced(self, batch: Batch) -> Batch:
        """`batch` without the client writes the fence refuses now (they are answered)."""
        fence = self.fence
        if fence is None or fence.may_ack():
            return batch
        kept: Batch = []
        for pending in batch:
            if pending.replicated:
                kept.append(pending)
                continue
            self.engine.limits.unpend(pending.mutation)
            pending.error = fence.refusal()  # nothing written, nothing applied
            pending.finish()
        return kept

    def _late(self, pending: Pending) -> bool:
        """The deadline passed while this client write was written: it must not be acked."""
        fence = self.fence
        return fence is not None and not pending.replicated and not fence.may_ack()

    def _apply(self, batch: Batch) -> None:
        """The batch is logged: apply it in LSN order and wake every waiter, in one pass."""
        for pending in batch:
            if not pending.apply:
                pending.finish()
                continue
            try:
                pending.response = self.engine.apply(pending.mutation, canon=pending.canon)
                if self._late(pending):
                    assert self.fence is not None
                    # logged and applied, but the lease may be gone: the outcome is unknown
                    # to the client (a keyed retry on the new leader counts it at most once)
                    pending.error = self.fence.refusal()
            except KarmaError as exc:  # changed between check and apply: nothing applied
                self.engine.limits.unpend(pending.mutation)
                pending.error = exc
            except Exception as exc:  # noqa: BLE001 - a bug; this task must outlive it
                self.log.error("internal_error", error=repr(exc), op=pending.mutation.OP)
                self.engine.limits.unpend(pending.mutation)
                pending.error = KarmaError.internal()
            pending.done.set()
            if pending.on_done is not None:  # inline: this loop is the hot path of every write
                pending.on_done()
