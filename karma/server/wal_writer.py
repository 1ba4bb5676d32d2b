"""The WAL writer task: the only writer of karma.wal and the only place the store changes.

Connections submit mutations and wait. The writer takes what is queued (up to
`--wal-batch-size`, waiting up to `--wal-batch-wait-us` for more), assigns LSNs, writes the
batch in one call and fsyncs once (group commit) in a worker thread, then applies the batch
to memory in LSN order and wakes every waiter with its own result. If the write fails, every
waiter of the batch gets an error and memory is untouched.
"""

from __future__ import annotations

import math

import attrs
import trio

from karma.core import mutations as m
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.errors import ErrorCode, KarmaError
from karma.ha.fence import Fence
from karma.observability.logs import Logger
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
    _disk: trio.CapacityLimiter = attrs.field(init=False)
    _file_lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    #: True from the moment a batch leaves the queue until it is written and applied
    _busy: bool = attrs.field(init=False, default=False)
    #: submitted and not yet taken into a batch (the channel's statistics() costs ~1 µs)
    _queued: int = attrs.field(init=False, default=0)
    #: set when karma.wal is found removed or replaced; the recovery task waits on it
    lost: trio.Event = attrs.field(init=False, factory=trio.Event)
    #: the newest write submitted: a denial that writes nothing waits for it (limit_ops)
    _last: Pending | None = attrs.field(init=False, default=None)
    batches: int = 0
    #: HA (--ha-etcd): client writes are logged and acknowledged only while the fence is open
    fence: Fence | None = None

    def __attrs_post_init__(self) -> None:
        # unbounded: each submitter waits for its own result, so the depth is bounded by the
        # number of connections times the writes one read can carry
        self._send, self._receive = trio.open_memory_channel[Pending](math.inf)
        self._disk = trio.CapacityLimiter(1)

    def submit_nowait(
        self, mutation: m.Mutation, *, apply: bool = True, replicated: bool = False
    ) -> Pending:
        pending = Pending(mutation, apply=apply, replicated=replicated)
        self._send.send_nowait(pending)
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            self._busy = True
            await trio.lowlevel.checkpoint()  # let other ready connections queue their writes
            self._drain(batch)
            if self.batch_wait_us and len(batch) < self.batch_size:
                with trio.move_on_after(self.batch_wait_us / 1e6):
                    while len(batch) < self.batch_size:
                        batch.append(await self._receive.receive())
                        self._drain(batch)
            self._queued -= len(batch)
            with trio.CancelScope(shield=True):
                # a dequeued batch is finished even at shutdown: its clients are waiting
                async with self._file_lock:
                    await self._write(batch)
            self._busy = False

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
        first, data, starts = self._encode([mutation])
        try:
            rotated = self.wal.append(data, starts)
        except OSError as exc:
            raise self._failed(exc, 1) from exc
        self._logged(rotated, first, 1)
        response = self.engine.apply(mutation)  # total: on a late refusal nothing changed
        if fence is not None and not fence.may_ack():
            raise fence.refusal()  # logged, but past the deadline: never acknowledged
        return response

    def _encode(self, mutations: list[m.Mutation]) -> tuple[int, bytes, list[tuple[int, int]]]:
        """The batch's lines, numbered from the next LSN: (first LSN, bytes, line starts)."""
        first = self.status.wal_current_lsn + 1
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

    def _logged(self, rotated: str | None, first: int, count: int) -> None:
        if self.status.storage_problems:  # one dict test per write while all is well
            self.status.storage_recovered("wal")
        if rotated is not None:
            self.log.info("wal.rotate", segment=rotated, first_lsn_after=first)
        self.status.wal_current_lsn = first + count - 1
        self.status.wal_bytes = self.wal.total_bytes

    async def reset_to(self, lsn: int) -> None:
        """Empty the WAL and continue numbering after `lsn` (a replica's new bootstrap)."""
        async with self._file_lock:
            await trio.to_thread.run_sync(self.wal.reset_to, lsn, limiter=self._disk)
            self.status.wal_current_lsn = lsn
            self.status.wal_bytes = self.wal.total_bytes

    async def truncate_through(self, lsn: int) -> None:
        """Drop WAL records <= lsn, between batches (this task owns the file)."""
        async with self._file_lock:
            await trio.to_thread.run_sync(
                self.wal.truncate_through, lsn, self.status.wal_current_lsn, limiter=self._disk
            )
            self.status.wal_bytes = self.wal.total_bytes
            self.log.info("wal.truncate", through_lsn=lsn, wal_bytes=self.wal.total_bytes)

    def _drain(self, batch: list[Pending]) -> None:
        while len(batch) < self.batch_size:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return

    def _fenced(self, batch: list[Pending]) -> list[Pending]:
        """`batch` without the client writes the fence refuses now (they are answered)."""
        fence = self.fence
        if fence is None or fence.may_ack():
            return batch
        kept: list[Pending] = []
        for pending in batch:
            if pending.replicated:
                kept.append(pending)
                continue
            self.engine.limits.unpend(pending.mutation)
            pending.error = fence.refusal()  # nothing written, nothing applied
            pending.done.set()
        return kept

    def _late(self, pending: Pending) -> bool:
        """The deadline passed while this client write was written: it must not be acked."""
        fence = self.fence
        return fence is not None and not pending.replicated and not fence.may_ack()

    async def _write(self, batch: list[Pending]) -> None:
        batch = self._fenced(batch)
        if not batch:
            return
        first, data, starts = self._encode([pending.mutation for pending in batch])
        try:
            if self.wal.fsync:
                rotated = await trio.to_thread.run_sync(
                    self.wal.append, data, starts, limiter=self._disk
                )
            else:
                rotated = self.wal.append(data, starts)  # page cache: microseconds, no thread
        except OSError as exc:
            failure = self._failed(exc, len(batch))
            for pending in batch:
                self.engine.limits.unpend(pending.mutation)  # a limit effect no longer pending
                pending.error = failure
                pending.done.set()
            return
        self._logged(rotated, first, len(batch))
        self.batches += 1
        for pending in batch:
            if not pending.apply:
                pending.done.set()
                continue
            try:
                pending.response = self.engine.apply(pending.mutation)
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
