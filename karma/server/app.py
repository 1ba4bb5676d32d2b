"""`serve`: the nursery tree. Its shape is the shutdown order.

    services nursery ── WAL writer, signal watcher            (outlive every connection)
      connections nursery ── one task per client             (drained with a deadline)
        accepting nursery ── the listeners                   (cancelled first on shutdown)

Restore happens before the first listener opens, so no client sees a half-restored store.
`task_status.started(listeners)` is the moment the port accepts: tests and systemd wait on it.
"""

from __future__ import annotations

import math
import signal
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from karma import days, tls
from karma.cluster.owner import Ownership
from karma.config import Config
from karma.config_values import Role
from karma.core.counters import NodeStatus
from karma.core.engine import Engine
from karma.core.idempotency import IdempotencyTable
from karma.errors import KarmaError
from karma.ha.etcd_client import EtcdClient
from karma.ha.fence import Fence
from karma.ha.rules import Keys
from karma.ha.shardmap_store import ShardMapStore
from karma.observability import metrics
from karma.observability.logs import Logger
from karma.protocol import scopes
from karma.server import limit_ops, system_ops, systemd
from karma.server.accept import AcceptFailures, listen, serve_listeners
from karma.server.connections import Drain, serve_connection, serve_tls_connection
from karma.server.context import Context, HaView
from karma.server.follower_task import Follower
from karma.server.ha_task import HaTask, Settings
from karma.server.metrics_http import Probes, serve_metrics
from karma.server.node import Node
from karma.server.roles import ServerRoles
from karma.server.shardmap_task import ShardMapTask
from karma.server.snapshotter import Snapshotter
from karma.server.wal_writer import WalWriter
from karma.storage import files, recovery, snapshot_files
from karma.storage.wal_files import ActiveWal, WalCorruptError


class StartupError(Exception):
    """The data directory or its files cannot be used; the CLI exits non-zero."""


@attrs.frozen
class Prepared:
    directory: Path
    engine: Engine
    status: NodeStatus
    wal: ActiveWal | None
    checkpoints: list[dict[str, Any]]


def _prepare(config: Config, log: Logger) -> Prepared:
    directory = Path(config.directory).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"--directory {directory}: {exc.strerror}") from exc
    engine = Engine(
        idempotency=IdempotencyTable(
            config.idempotency_max_records, config.idempotency_max_age_seconds
        )
    )
    engine.limits.max_open = config.max_open_reservations
    engine.limits.max_settled = config.max_settled_reservations
    status = NodeStatus(role=str(config.role), wal_enabled=config.wal, started_at=time.time())
    now = time.time()
    try:
        restored = recovery.restore(
            directory,
            engine,
            today=days.today_from_unix(now),
            now=int(now),
            replay=config.restore,
            log=log,
            accept_loss=config.restore_accept_loss,
        )
    except (WalCorruptError, recovery.RestoreError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    for path in files.planted(directory):
        # restore skipped it (karma writes only regular files, and a link would lead out of
        # the directory): if it was put there on purpose, replace it with the file itself
        kind = "symlink" if path.is_symlink() else "not a regular file"
        log.warning("storage.ignored", path=str(path), kind=kind)
    status.wal_current_lsn = restored.last_lsn
    status.last_snapshot_lsn = restored.snapshot_lsn
    status.dump_count = len(snapshot_files.list_snapshots(directory))
    if not config.restore and restored.records:
        log.warning("wal.not_replayed", reason="--restore=false", records=len(restored.records))
    wal = None
    if config.wal:
        wal = ActiveWal(directory, fsync=config.wal_fsync, segment_bytes=config.wal_segment_bytes)
        wal.open(restored.records)
        status.wal_bytes = wal.total_bytes
    return Prepared(directory, engine, status, wal, restored.checkpoints)


def load_tokens(config: Config) -> scopes.TokenTable | None:
    """--tokens-file's table with the two tokens of the options in it; None without a file.
    Raises TokensFileError (or OSError) naming the line or entry and the reason."""
    if config.tokens_file is None:
        return None
    path = Path(config.tokens_file)
    table = scopes.parse(path.read_text(encoding="utf-8"), str(path))
    return scopes.with_implicit(table, config.auth_token, config.read_auth_token)


@attrs.define(eq=False)
class Reloader:
    """SIGHUP: the TLS certificate and key, and the tokens file, read again. Each part that
    fails keeps what it had and logs why; open connections keep going either way."""

    config: Config
    node: Node
    log: Logger
    contexts: tls.Reloadable | None

    def reload(self) -> None:
        if self.contexts is not None:
            failed = self.contexts.reload()
            if failed is None:
                self.log.info("tls.reloaded", cert=self.contexts.settings.cert)
            else:
                self.log.error("tls.reload_failed", reason=failed, kept="the previous certificate")
        if self.config.tokens_file is not None:
            try:
                table = load_tokens(self.config)
            except (scopes.TokensFileError, OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.log.error("tokens.reload_failed", reason=reason, kept="the previous table")
                return
            assert table is not None
            self.node.context.tokens = table
            self.node.gate = attrs.evolve(self.node.gate, tokens=table)
            self.log.info("tokens.reloaded", tokens=len(table.names()))


async def serve(
    config: Config,
    *,
    log: Logger | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    if log is None:
        log = Logger(enabled=config.log, level=config.log_level)
    if shutdown is None:  # not `shutdown or ...`: a trio.Event refuses bool()
        shutdown = trio.Event()
    try:
        settings = tls.server_settings(config)
        contexts = None if settings is None else tls.Reloadable.load(settings)
        tokens = load_tokens(config)
        etcd_tls(config)  # a bad etcd CA or certificate stops the start, not the HA loop
    except (tls.TlsError, scopes.TokensFileError, OSError, UnicodeDecodeError) as exc:
        raise StartupError(str(exc)) from exc
    prepared = await trio.to_thread.run_sync(_prepare, config, log)
    engine, status, wal = prepared.engine, prepared.status, prepared.wal
    writer = None
    if wal is not None:
        writer = WalWriter(
            engine,
            wal,
            status,
            log,
            batch_size=config.wal_batch_size,
            batch_wait_us=config.wal_batch_wait_us,
        )
    directory = prepared.directory
    snapshots = Snapshotter(
        directory, engine, status, log, writer, retention=config.dump_retention_per_tree
    )
    checkpoints = {c["source"]: c for c in prepared.checkpoints}
    fence = None
    if config.ha_etcd is not None:
        if writer is None:
            raise StartupError("--ha-etcd needs --wal=true: replicas copy the master's WAL")
        fence = Fence(time.monotonic)  # closed: every HA node starts read-only
        writer.fence = fence
        status.role = str(Role.SLAVE)
    ownership = None
    if config.cluster is not None:
        if config.ha_etcd is None:
            raise StartupError("--cluster needs --ha-etcd: the shard map lives in etcd")
        ownership = Ownership(config.cluster, group_name(config))
    context = Context(
        config,
        engine,
        status,
        log,
        directory,
        writer,
        snapshots,
        checkpoints,
        fence,
        cluster=ownership,
        tokens=tokens,
    )
    node = Node(context)
    limit_ops.bound_loaded_holds(context)
    reloader = Reloader(config, node, log, contexts)
    if writer is not None:
        writer.on_logged = node.context.replicas.wal_appended
    drain = Drain()
    failures = AcceptFailures(engine.counters, log)
    try:
        async with trio.open_nursery() as services:
            if writer is not None:
                await services.start(writer.run)
                services.start_soon(snapshots.recover_lost_wal)
            services.start_soon(_watch_signals, shutdown, snapshots, log, reloader.reload)
            if config.metrics_port:
                registry = metrics.full_registry(
                    partial(system_ops.stats_values, node.context),
                    engine.counters,
                    status,
                    lambda: node.context.replicas.lsns,
                    lambda: engine.limits,  # a replica's bootstrap replaces it
                    node.context.clocks.behind_s,
                    lambda: node.audit.counts,
                )
                await services.start(
                    serve_metrics,
                    registry,
                    config.metrics_bind,
                    config.metrics_port,
                    log,
                    failures,
                    Probes(status, config.ready_max_lag_entries, fence),
                    contexts,
                )
            if fence is not None:
                pass  # the HA task decides the role, once the client port is known (below)
            elif config.role is Role.SLAVE and config.replication_source_host:
                follower = Follower(config, directory, engine, status, writer, log)
                follower.name = replica_name(config, config.port)
                await services.start(follower.run)
            elif config.role is Role.MASTER:
                # holds expire by the master's clock, through the WAL: replicas follow it
                services.start_soon(limit_ops.expire_holds, node.context)
            if config.snapshot_interval_seconds:
                services.start_soon(snapshots.serve_interval, config.snapshot_interval_seconds)
            if ownership is not None:
                services.start_soon(_shardmap_task(config, ownership, log).serve)
            async with trio.open_nursery() as connections:
                listeners = await listen(config.bind, config.port, "--bind/--port")
                plain = partial(serve_connection, node, drain)
                secure = (
                    None
                    if contexts is None
                    else partial(serve_tls_connection, node, drain, contexts)
                )
                tls_port = None
                async with trio.open_nursery() as accepting:
                    if secure is not None and config.tls_port is not None:
                        # two ports: --port stays plaintext (karma 1.0 clients), TLS beside it
                        tls_listeners = await listen(config.bind, config.tls_port, "--tls-port")
                        tls_port = tls_listeners[0].socket.getsockname()[1]
                        accepting.start_soon(
                            serve_listeners, secure, tls_listeners, connections, failures
                        )
                    handler = plain if secure is None or tls_port is not None else secure
                    accepting.start_soon(serve_listeners, handler, listeners, connections, failures)
                    port = listeners[0].socket.getsockname()[1]
                    ha = None
                    if fence is not None:
                        ha = _ha_task(config, directory, node, status, log, services, fence, port)
                        node.context.ha = HaView(
                            ha.topology, ha.current_term, ha.known_history, ha.newer_term_seen
                        )
                        services.start_soon(ha.serve)
                    log.info(
                        "server.started",
                        bind=config.bind,
                        port=port,
                        tls="off" if contexts is None else ("--tls-port" if tls_port else "on"),
                        tls_port=tls_port,
                        role=str(config.role),
                        wal=config.wal,
                        keys=engine.store.key_count,
                        lsn=status.wal_current_lsn,
                    )
                    status.listening = True
                    task_status.started(listeners)
                    systemd.notify("READY=1")
                    await shutdown.wait()
                    if ha is not None:  # still listening: replicas fetch the last entries
                        await ha.hand_over(HAND_OVER_S)
                    status.listening = False
                    systemd.notify("STOPPING=1")
                    log.info("server.stopping", open_connections=len(connections.child_tasks))
                    accepting.cancel_scope.cancel()
                drain.close_idle()  # requests in progress finish; idle clients go now
                connections.cancel_scope.deadline = trio.current_time() + (
                    config.shutdown_timeout if config.shutdown_timeout else math.inf
                )
            await _final_snapshot(snapshots, config, log)
            services.cancel_scope.cancel()
    finally:
        if wal is not None:
            wal.close()
    log.info("server.stopped", lsn=status.wal_current_lsn)


def _ha_task(
    config: Config,
    directory: Path,
    node: Node,
    status: NodeStatus,
    log: Logger,
    services: trio.Nursery,
    fence: Fence,
    port: int,
) -> HaTask:
    assert config.ha_etcd is not None
    host = config.bind if config.bind not in ("0.0.0.0", "::", "") else socket.gethostname()
    name = replica_name(config, port)
    settings = Settings(
        node=name,
        addr=config.ha_advertise or f"{host}:{port}",
        ttl_s=config.ha_ttl,
        loop_wait_s=config.ha_loop_wait,
        max_lag=config.ha_max_lag_on_failover,
        priority=config.ha_priority,
        nofailover=config.ha_nofailover,
        keys=Keys(group_name(config)),
    )
    # each etcd request gets at most a third of the TTL (spec: 1 s at ttl 10), so one slow
    # member cannot eat the whole lease
    etcd = EtcdClient(
        config.ha_etcd.split(","), timeout_s=min(1.0, config.ha_ttl / 3), tls=etcd_tls(config)
    )
    roles = ServerRoles(config, directory, node, status, log, services, name)
    log.info("ha.started", node=name, addr=settings.addr, etcd=config.ha_etcd)
    node.context.replicas.unpublished()  # no report counts until this node leads and publishes
    return HaTask(settings, etcd, fence, roles, log, replicas=node.context.replicas)


def group_name(config: Config) -> str:
    """The HA group's name: --group, or its alias --ha-cluster."""
    return config.group if config.group is not None else config.ha_cluster


def _shardmap_task(config: Config, ownership: Ownership, log: Logger) -> ShardMapTask:
    assert config.ha_etcd is not None
    assert config.cluster is not None
    etcd = EtcdClient(
        config.ha_etcd.split(","), timeout_s=min(1.0, config.ha_ttl / 3), tls=etcd_tls(config)
    )
    log.info("cluster.started", cluster=config.cluster, group=ownership.group)
    return ShardMapTask(ShardMapStore(etcd, config.cluster), ownership, log, config.ha_loop_wait)


def etcd_tls(config: Config) -> ssl.SSLContext | None:
    """The context https:// etcd members are reached with, when a CA or a client certificate
    is given (else httpx's own verification against the system store)."""
    if config.ha_etcd_ca is None and config.ha_etcd_cert is None:
        return None
    return tls.client_context(config.ha_etcd_ca, config.ha_etcd_cert, config.ha_etcd_key)


#: how long a stopping HA master waits for its replicas to hold its last entry
HAND_OVER_S = 5.0


def replica_name(config: Config, port: int) -> str:
    """The name this node goes by in etcd and in its master's replica list."""
    return config.ha_node if config.ha_node is not None else f"{socket.gethostname()}-{port}"


async def _final_snapshot(snapshots: Snapshotter, config: Config, log: Logger) -> None:
    """Every connection is gone: snapshot all so the next start need not replay the WAL."""
    try:
        await snapshots.create_all("shutdown")
    except KarmaError as exc:  # the WAL still holds everything: log, and exit as planned
        log.error("snapshot.shutdown_failed", error=exc.message)


async def _watch_signals(
    shutdown: trio.Event, snapshots: Snapshotter, log: Logger, reload: Callable[[], None]
) -> None:
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
    with trio.open_signal_receiver(*watched) as signals:
        async for signum in signals:
            log.info("signal", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                reload()
                continue
            if signum != signal.SIGUSR1:
                shutdown.set()
                continue
            try:
                await snapshots.create_all("SIGUSR1")
            except KarmaError:
                pass  # logged by the snapshotter; the server keeps running
