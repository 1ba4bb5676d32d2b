"""A replica's follower: bootstrap from the master's snapshots, then poll its WAL.

The replica's own WAL numbers entries exactly as the master did (it is the only writer on a
slave, and it logs entries in the master's LSN order), so a restarted replica resumes from its
own snapshots and WAL, and a promoted one keeps its LSNs. On a gap — the master truncated past
what the replica has — it bootstraps again by itself (karma 1.0 polled the gap forever).
Failures back off with jitter and show in replication.status, stats and metrics.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec
import trio

from karma import days, tls
from karma.config import Config
from karma.core import mutations as m
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.core.idempotency import IdempotencyTable
from karma.errors import ErrorCode, KarmaError
from karma.observability.logs import Logger
from karma.protocol.decode import decode
from karma.protocol.gate import Gate
from karma.server.master_link import GapError, MasterLink, RejectedError, ReplicationError
from karma.server.wal_writer import Pending, WalWriter
from karma.storage import manifest, recovery, snapshot_codec, snapshot_files, wal_files

_OPEN = Gate(internal_ops=True)  # effect entries (limit.*) are read from the WAL
CHUNK = 262_144
MAX_BACKOFF_S = 30.0


def move_wal_aside(directory: Path, term: int) -> Path:
    """Copy every WAL file into diverged-<term>-<unix>/ (blocking: run it in a thread)."""
    aside = directory / f"diverged-{term}-{int(time.time())}"
    aside.mkdir(exist_ok=True)
    for path in wal_files.wal_paths(directory):
        shutil.copy2(path, aside / path.name)
    return aside


@attrs.define(eq=False)
class Follower:
    config: Config
    directory: Path
    engine: Engine
    status: NodeStatus
    writer: WalWriter | None
    log: Logger
    link: MasterLink = attrs.field(init=False)
    #: per-series snapshot LSNs of the last bootstrap, and the idempotency snapshot's: entries
    #: up to these are already (partly) in the snapshots
    cuts: dict[str, int] = attrs.field(factory=dict)
    state_lsn: int = 0
    limits_lsn: int = 0
    #: HA re-pointing found this node's WAL diverged from the new leader's: bootstrap first
    force_bootstrap: bool = False
    #: this node's name in its master's replica list (for `durability:"replicated:N"`)
    name: str | None = None
    #: HA: the term of this node's last entry, sent on each poll (fencing layers 3 and 4)
    term: Callable[[], int] | None = None

    def __attrs_post_init__(self) -> None:
        assert self.config.replication_source_host is not None
        timeout = self.config.read_timeout or 30.0
        self.link = MasterLink(
            self.config.replication_source_host,
            self.config.replication_source_port,
            self.config.replication_token,
            # a poll may long-wait for one poll interval on the master
            max(timeout, 5.0, 2 * self.config.replication_poll_interval_ms / 1000 + 1),
            tls=tls.link_context(self.config),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self.config.replication_poll_interval_ms / 1000
        need_bootstrap = self.force_bootstrap or (
            self.status.wal_current_lsn == 0 and not self.engine.store.series
        )
        failures = 0
        try:
            while True:
                try:
                    if need_bootstrap:
                        await self.bootstrap()
                        need_bootstrap = False
                    polled = trio.current_time()
                    fetched, full, waited = await self.poll()
                    failures = 0
                    if full or fetched:
                        continue  # catching up, or report what we hold at once (sync writes)
                    if not waited or trio.current_time() - polled < interval / 2:
                        await trio.sleep(interval)  # a master that does not long-poll
                except GapError as exc:
                    self.log.warning("replication.gap", error=str(exc))
                    need_bootstrap = True
                except RejectedError as exc:
                    if exc.code != ErrorCode.REPLICATION_DIVERGED:
                        raise
                    await self._diverged(str(exc))
                    need_bootstrap = True
                except (ReplicationError, OSError, ValueError, KeyError, TypeError) as exc:
                    # a bad answer or a local file problem: visible, retried, never fatal
                    failures += 1
                    delay = min(MAX_BACKOFF_S, interval * 2 ** min(failures, 10))
                    # named by what failed: a replica that never reaches its master fails
                    # its bootstrap, not a poll (alerts and runbooks look for both)
                    event = (
                        "replication.bootstrap_failed"
                        if need_bootstrap
                        else "replication.poll_failed"
                    )
                    self.log.warning(event, error=str(exc), retry_in_s=round(delay, 2))
                    await trio.sleep(delay * random.uniform(0.5, 1.5))
        finally:
            await self.link.close()

    # --- polling -------------------------------------------------------------------------------
    async def poll(self) -> tuple[int, bool, bool]:
        """Fetch and apply one page of entries: (entries, page was full, master long-polled).

        The poll names this node and asks the master to wait for a new entry (karma 1.0
        ignores both), so the LSN we report — what we hold, written and, with
        --wal-fsync=true, fsynced — reaches the master one round trip after each entry.
        """
        fields: dict[str, object] = {}
        if self.name is not None:
            fields["node"] = self.name
        if self.term is not None:
            fields["after_term"] = self.term()
        with self.status.replication.poll.attempt(time.time):
            page = await self.link.call(
                "replication.entries",
                after_lsn=self.status.wal_current_lsn,
                limit=self.config.replication_batch_size,
                wait_ms=self.config.replication_poll_interval_ms,
                **fields,
            )
            if self.term is not None and int(page.get("term") or 0) < self.term():
                # fencing layer 3: never follow a master of an older term than ours
                raise ReplicationError(
                    f"master's term {page.get('term')} is older than ours ({self.term()})"
                )
            self.status.replication.source_lsn = max(
                self.status.replication.source_lsn, int(page.get("source_lsn") or 0)
            )
            entries = page.get("entries") or []
            await self._apply(entries)
        count = int(page.get("count") or 0)
        return len(entries), count >= self.config.replication_batch_size, "wait_ms" in page

    async def _diverged(self, reason: str) -> None:
        """The master's history says our WAL tail was never its: keep it aside, bootstrap."""
        first = self.status.wal_current_lsn
        aside = await trio.to_thread.run_sync(move_wal_aside, self.directory, self.term_now())
        self.log.warning(
            "replication.diverged",
            reason=reason,
            last_lsn=first,
            saved=str(aside),
            recovery="re-bootstrapping from the master; the diverged entries are not merged",
        )

    def term_now(self) -> int:
        return 0 if self.term is None else self.term()

    async def _apply(self, entries: list[dict[str, Any]]) -> None:
        last: Pending | None = None
        overlap = max([self.state_lsn, self.limits_lsn, *self.cuts.values()], default=0)
        current = self.status.wal_current_lsn  # the LSN of the last entry logged or queued
        for item in entries:
            lsn = int(item["lsn"])
            if lsn <= current:
                continue
            if lsn != current + 1:
                raise GapError(f"Replication gap: expected LSN {current + 1}, got {lsn}")
            current = lsn
            now = time.time()
            try:
                request = decode(json.dumps(item["entry"]).encode(), _OPEN)
                mutation = self.engine.normalize(request, days.today_from_unix(now), int(now))
            except (KarmaError, LookupError) as exc:
                raise ReplicationError(f"Cannot apply WAL entry {lsn}: {exc}") from exc
            if lsn <= overlap:
                # a bootstrap snapshot holds part of this entry: log it, then apply the rest
                if last is not None:
                    await last.done.wait()
                    last = None
                await self._log_only(mutation, lsn)
                if isinstance(mutation, m.LIMIT_EFFECTS):
                    cut_of = self.cuts.get
                    self.engine.replay_limit(
                        mutation,
                        series_behind=lambda name: lsn > cut_of(name, 0),  # noqa: B023 - used now
                        state_effect=lsn > self.limits_lsn,
                    )
                    continue
                series = getattr(mutation, "series", None)
                self.engine.replay(
                    mutation,
                    store_effect=lsn > self.cuts.get(str(series), 0),
                    state_effect=lsn > self.state_lsn,
                )
            elif self.writer is None:
                self._apply_unlogged(mutation, lsn)
            else:
                last = self.writer.submit_nowait(mutation, replicated=True)
            self.status.replication.entries_applied += 1
            self.status.replication.last_received_unix = int(now)
        if last is not None:
            await last.done.wait()

    async def _log_only(self, mutation: m.Mutation, lsn: int) -> None:
        if self.writer is None:
            self.status.wal_current_lsn = lsn
            return
        pending = self.writer.submit_nowait(mutation, apply=False, replicated=True)
        await pending.done.wait()
        if pending.error is not None:
            raise ReplicationError(f"WAL write failed: {pending.error.message}")

    def _apply_unlogged(self, mutation: m.Mutation, lsn: int) -> None:
        """--wal=false on a replica: memory only, as on a master without a WAL."""
        try:
            self.engine.apply(mutation)
        except KarmaError as exc:
            self.log.warning("replication.entry_failed", lsn=lsn, error=exc.message)
        self.status.wal_current_lsn = lsn

    async def _reset_wal(self, lsn: int) -> None:
        if self.writer is None:
            self.status.wal_current_lsn = lsn
        else:
            await self.writer.reset_to(lsn)

    # --- bootstrap -----------------------------------------------------------------------------
    async def bootstrap(self) -> None:
        with self.status.replication.bootstrap.attempt(time.time):
            lsn = await self._bootstrap()
        self.log.info("replication.snapshot_bootstrap", last_lsn=lsn, series=len(self.cuts))

    async def _bootstrap(self) -> int:
        # before the files it names: they can then only be as new or newer
        copied = await self._fetch_manifest()
        info = await self.link.call("snapshot.info")
        trees: list[tuple[dict[str, Any], bytes]] = []
        for meta in info.get("latest_by_tree") or []:
            data = await self._fetch("snapshot.fetch_chunk", meta, file=meta["file"])
            trees.append((meta, data))
        idempotency: tuple[dict[str, Any], bytes] | None = None
        idem_meta = info.get("idempotency_snapshot")
        if idem_meta:
            idempotency = (
                idem_meta,
                await self._fetch("idempotency.snapshot_fetch_chunk", idem_meta),
            )
        limit_state = await self._fetch_limits()
        if copied is not None:
            self._check_copy(copied, trees, limit_state)
        limits = self.engine.idempotency
        fresh = Engine(idempotency=IdempotencyTable(limits.max_records, limits.max_age_seconds))
        fresh.limits = self.engine.limits.emptied()
        await trio.to_thread.run_sync(self._install, trees, idempotency, limit_state, copied)
        restored = await trio.to_thread.run_sync(self._load, fresh)
        # resume after the oldest cut: newer entries are filtered per series as they arrive
        lsn = min([restored.snapshot_state_lsn, *restored.cuts.values()])
        if limit_state is not None:
            lsn = min(lsn, restored.limits_lsn)
        await self._reset_wal(lsn)
        # the swap: synchronous, so no request sees half of the old and half of the new data
        self.engine.store.series = fresh.store.series
        self.engine.idempotency.records = fresh.idempotency.records
        self.engine.ingest.active = fresh.ingest.active
        self.engine.ingest.committed = fresh.ingest.committed
        self.engine.limits = fresh.limits
        self.cuts, self.state_lsn = restored.cuts, restored.snapshot_state_lsn
        self.limits_lsn = restored.limits_lsn
        self.status.last_snapshot_lsn = max(restored.cuts.values(), default=0)
        return lsn

    async def _fetch(self, op: str, meta: dict[str, Any], **fields: Any) -> bytes:
        parts: list[bytes] = []
        offset = 0
        while True:
            chunk = await self.link.call(op, offset=offset, limit=CHUNK, **fields)
            seen = chunk["metadata"]
            if (seen.get("file"), seen.get("last_lsn"), seen.get("bytes")) != (
                meta.get("file"),
                meta.get("last_lsn"),
                meta.get("bytes"),
            ):
                raise ReplicationError("Snapshot changed during fetch")
            parts.append(base64.b64decode(chunk["data_base64"]))
            offset = int(chunk["next_offset"])
            if chunk["done"]:
                break
        data = b"".join(parts)
        if len(data) != int(meta.get("bytes", len(data))):
            raise ReplicationError(
                f"{meta.get('file')}: got {len(data)} bytes, expected {meta.get('bytes')}"
            )
        return data

    async def _fetch_limits(self) -> tuple[dict[str, Any], bytes] | None:
        """The master's karma.limits.json, or None: it has none yet, or it is karma 1.0."""
        try:
            first = await self.link.call("limit.snapshot_fetch_chunk", offset=0, limit=1)
        except RejectedError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.UNKNOWN_COMMAND):
                return None  # no limit state yet, or a karma 1.0 master
            raise
        meta = first["metadata"]
        return meta, await self._fetch("limit.snapshot_fetch_chunk", meta)

    async def _fetch_manifest(self) -> manifest.Manifest | None:
        """The master's karma.manifest.json, or None: it has none yet, or it is karma 1.0 (or
        an older karma-trio)."""
        try:
            answer = await self.link.call("snapshot.manifest")
        except RejectedError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.UNKNOWN_COMMAND):
                return None
            raise
        try:
            return msgspec.convert(answer, manifest.Manifest)
        except msgspec.ValidationError as exc:
            raise ReplicationError(f"master's {manifest.NAME}: {exc}") from exc

    def _check_copy(
        self,
        copied: manifest.Manifest,
        trees: list[tuple[dict[str, Any], bytes]],
        limit_state: tuple[dict[str, Any], bytes] | None,
    ) -> None:
        """The restore's continuity rule on what was fetched, before anything is installed."""
        series = {str(meta["tree"]): int(meta["last_lsn"]) for meta, _ in trees}
        limits_lsn = None if limit_state is None else int(limit_state[0].get("last_lsn", 0))
        gaps = recovery.copied_gaps(self.directory, copied, series, limits_lsn)
        if gaps:
            named = "; ".join(
                f"{gap.file}: writes at LSN {gap.first}..{gap.last} ({gap.why})" for gap in gaps
            )
            raise ReplicationError(f"bootstrap copy incomplete, not installed: {named}")

    def _install(
        self,
        trees: list[tuple[dict[str, Any], bytes]],
        idempotency: tuple[dict[str, Any], bytes] | None,
        limit_state: tuple[dict[str, Any], bytes] | None = None,
        copied: manifest.Manifest | None = None,
    ) -> None:
        """Replace the replica's snapshot files with the master's (blocking; in a thread)."""
        manifest.remove(self.directory)  # first: it must never name files from the old set
        for old in snapshot_files.list_snapshots(self.directory):
            snapshot_files.remove(old)
        for meta, data in trees:
            snapshot_codec.decode_series(data)  # refuse garbage before it lands on disk
            snapshot_files.write_snapshot(
                self.directory,
                str(meta["tree"]),
                data,
                int(meta["timestamp"]),
                int(meta["last_lsn"]),
            )
        if idempotency is not None:
            meta, data = idempotency
            document = json.loads(data)
            records = len(document.get("records") or [])
            streams = len(document.get("committed_streams") or [])
            snapshot_files.write_idempotency(
                self.directory,
                (data, records, streams),
                int(meta.get("timestamp", 0)),
                int(meta.get("last_lsn", 0)),
            )
        for stale in (snapshot_files.LIMITS, snapshot_files.LIMITS + ".meta.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / stale).unlink()
        if limit_state is not None:
            meta, data = limit_state
            json.loads(data)  # refuse garbage before it lands on disk
            snapshot_files.write_limits(
                self.directory, data, int(meta.get("timestamp", 0)), int(meta.get("last_lsn", 0))
            )
        if copied is not None:
            # last, as a snapshot writes it: it proves the replica's own restarts
            manifest.write(self.directory, copied)

    def _load(self, fresh: Engine) -> recovery.Loaded:
        try:
            return recovery.load_snapshots(self.directory, fresh, self.log)
        except recovery.RestoreError as exc:
            raise ReplicationError(f"bootstrap snapshot unusable: {exc}") from exc
