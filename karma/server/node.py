"""One node's request handling: decode a line, admit it, answer reads, queue writes.

Everything here is synchronous except what a write waits for. `handle` returns either the
answer bytes, or a `Waiting` write whose answer is ready once its WAL batch is applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec

from karma import days
from karma.config import Config, Role
from karma.core import report
from karma.core.budget import AnyBudget, Budget, Unlimited
from karma.core.counters import NodeStatus
from karma.core.engine import ENGINE_READS, WRITES, Engine
from karma.errors import ErrorCode, KarmaError
from karma.observability.logs import Logger
from karma.protocol import envelope
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from karma.server.wal_writer import Pending, WalWriter
from karma.storage import wal_files


@attrs.define(eq=False)
class Waiting:
    """A write queued on the WAL writer; `answer()` once `pending.done` is set."""

    node: Node
    pending: Pending
    started: float

    def answer(self) -> bytes:
        pending = self.pending
        failed = pending.error is not None
        self.node.engine.counters.record((time.perf_counter() - self.started) * 1000, failed=failed)
        if pending.error is not None:
            return envelope.encode_error(pending.error)
        return envelope.encode_ok_checked(pending.response, self.node.config.max_response_bytes)


@attrs.define(eq=False)
class Node:
    config: Config
    engine: Engine
    status: NodeStatus
    log: Logger
    writer: WalWriter | None = None
    gate: Gate = attrs.field(init=False)
    directory: Path = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.gate = Gate(
            self.config.auth_token,
            self.config.read_auth_token,
            slave=self.config.role is Role.SLAVE,
        )
        self.directory = Path(self.config.directory).resolve()

    def decode(self, line: bytes) -> r.Request | bytes:
        """The request on `line`, or the error answer for it."""
        try:
            return decode(line, self.gate)
        except KarmaError as exc:
            self.engine.counters.record(0.0, failed=True)
            return envelope.encode_error(exc)

    @staticmethod
    def is_write(request: r.Request) -> bool:
        return type(request) in WRITES

    def handle(self, request: r.Request) -> bytes | Waiting:
        """Answer a read, or queue a write (its answer comes from the returned Waiting)."""
        started = time.perf_counter()
        try:
            if type(request) in WRITES:
                return self._write(request, started)
            answer = self._read(request)
        except KarmaError as exc:
            if exc.code is ErrorCode.QUERY_TIMEOUT:
                self.engine.counters.query_timeout_count += 1
            self._record(started, failed=True)
            return envelope.encode_error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged below, answered, server keeps serving
            self.log.error("internal_error", error=repr(exc), op=r.op_tag(type(request)))
            self._record(started, failed=True)
            return envelope.encode_error(KarmaError.internal())
        self._record(started, failed=False)
        return envelope.encode_ok_checked(answer, self.config.max_response_bytes)

    def handle_line(self, line: bytes) -> bytes | Waiting:
        request = self.decode(line)
        return request if isinstance(request, bytes) else self.handle(request)

    def _record(self, started: float, *, failed: bool) -> None:
        self.engine.counters.record((time.perf_counter() - started) * 1000, failed=failed)

    def _write(self, request: r.Request, started: float) -> bytes | Waiting:
        mutation = self.engine.mutation_for(request, today=days.today_from_unix(time.time()))
        if self.writer is None:
            response = self.engine.apply(mutation)
            self._record(started, failed=False)
            return envelope.encode_ok_checked(response, self.config.max_response_bytes)
        return Waiting(self, self.writer.submit_nowait(mutation), started)

    def _read(self, request: r.Request) -> object:
        cls = type(request)
        if cls in ENGINE_READS:
            return self.engine.read(request, self._budget())
        handler = _SHELL.get(cls)
        if handler is None:
            for parent in cls.__mro__:
                handler = _SHELL.get(parent)
                if handler is not None:
                    break
        if handler is None:
            raise KarmaError(
                ErrorCode.INTERNAL_ERROR, f"{r.op_tag(cls)} is not available in this build"
            )
        return handler(self, request)

    def _budget(self) -> AnyBudget:
        if not self.config.query_timeout_ms:
            return Unlimited()
        return Budget(time.monotonic, time.monotonic() + self.config.query_timeout_ms / 1000)

    # --- answers that need the node, not just the store ----------------------------------------
    def ping(self, req: r.Ping) -> object:
        return "pong"

    def health(self, req: r.Health) -> object:
        return report.health(self.status, time.time())

    def stats(self, req: r.Stats) -> object:
        return self._stats()

    def _stats(self) -> dict[str, object]:
        return report.stats(
            self.engine.store, self.engine.counters, self.status, time.time(), _memory_bytes()
        )

    def metrics(self, req: r.Metrics) -> object:
        return report.metrics_text(self._stats())

    def reconciliation_report(self, req: r.ReconciliationReport) -> object:
        c = self.engine.counters
        drift, delta = req.absolute_drift or 0, req.max_abs_delta or 0
        c.reconciliation_run_count += 1
        c.reconciliation_checked_points += req.checked_points
        c.reconciliation_mismatch_count += req.mismatch_count
        c.reconciliation_absolute_drift += drift
        c.reconciliation_last_run_unix = int(time.time())
        c.reconciliation_last_checked_points = req.checked_points
        c.reconciliation_last_mismatch_count = req.mismatch_count
        c.reconciliation_last_absolute_drift = drift
        c.reconciliation_last_max_abs_delta = delta
        return "OK"

    def replication_entries(self, req: r.ReplicationEntries) -> object:
        limit = r.opt(req.limit) or r.REPLICATION_DEFAULT_LIMIT
        byte_limit = _entries_byte_limit(self.config.max_response_bytes)
        current = self.status.wal_current_lsn
        entries: list[tuple[int, bytes]] = []
        truncated = False
        if self.config.wal:
            entries, truncated, first = wal_files.read_after(
                self.directory, req.after_lsn, limit, byte_limit, current
            )
            available_from = first if first is not None else current + 1
            if req.after_lsn + 1 < available_from and req.after_lsn < current:
                raise KarmaError(
                    ErrorCode.REPLICATION_GAP,
                    f"WAL entries after LSN {req.after_lsn} are no longer available",
                )
        raw = [_RawEntry(lsn, entry) for lsn, entry in entries]
        return {
            "after_lsn": req.after_lsn,
            "limit": limit,
            "byte_limit": byte_limit,
            "entries_bytes": sum(
                len(b'{"lsn":,"entry":}') + len(str(e.lsn)) + len(e.entry) for e in raw
            ),
            "truncated_by_bytes": truncated,
            "count": len(raw),
            "source_lsn": current,
            "entries": [{"lsn": e.lsn, "entry": _raw(e.entry)} for e in raw],
            "next_lsn": raw[-1].lsn if raw else req.after_lsn,
        }

    def replication_status(self, req: r.ReplicationStatus) -> object:
        fields = dict(report.REPLICATION_FIELDS)
        answer: dict[str, object] = {
            "role": self.status.role,
            "wal_enabled": self.status.wal_enabled,
            "wal_current_lsn": self.status.wal_current_lsn,
            "wal_bytes": self.status.wal_bytes,
            "replayed_lsn": fields.pop("replication_replayed_lsn"),
        }
        answer.update(fields)
        answer.update(
            {
                "last_snapshot_lsn": self.status.last_snapshot_lsn,
                "latest_snapshots": [],
                "recovery": {"checkpoint_count": 0, "checkpoints": []},
                "recovery_checkpoint_count": 0,
            }
        )
        return answer


@attrs.frozen
class _RawEntry:
    lsn: int
    entry: bytes


def _raw(entry: bytes) -> object:
    return msgspec.Raw(entry)


def _entries_byte_limit(max_response_bytes: int) -> int:
    """karma 1.0 leaves 2 KiB of the response limit for the envelope around the entries."""
    return (max_response_bytes or 1048576) - 2048


def _memory_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_SHELL: Final[dict[type, Callable[[Node, Any], object]]] = {
    r.Ping: Node.ping,
    r.Health: Node.health,
    r.Stats: Node.stats,
    r.Metrics: Node.metrics,
    r.ReconciliationReport: Node.reconciliation_report,
    r.ReplicationEntries: Node.replication_entries,
    r.ReplicationStatus: Node.replication_status,
}
