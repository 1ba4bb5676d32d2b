"""The router's view of the cluster: the shard map and each group's leader, read from etcd,
and a pool of connections per leader address.

The map is watched (`/karma/<cluster>/shardmap`); leaders are read from each group's HA leader
key (`/karma/<group>/leader`, karma.ha.rules.Keys) every `LEADER_POLL_S` and again at once when
a leader cannot be reached. Nothing here is kept on disk: a router restarts from etcd.
"""

from __future__ import annotations

import math

import attrs
import trio

from karma.cluster import shardmap as sm
from karma.cluster.directory import etcd_urls, leader_key, leader_of
from karma.ha.etcd_client import EtcdClient
from karma.ha.etcd_wire import EtcdError
from karma.observability.logs import Logger

LEADER_POLL_S = 0.5
#: a watch is re-opened after this long even if nothing changed (a lost stream is noticed)
WATCH_RENEW_S = 30.0
#: a connection that answers nothing within this long is given up (the request fails retriable)
EXCHANGE_TIMEOUT_S = 10.0


__all__ = [
    "EXCHANGE_TIMEOUT_S",
    "Directory",
    "GroupUnavailableError",
    "Pools",
    "etcd_urls",
    "leader_key",
]


class GroupUnavailableError(Exception):
    """A group's leader is unknown or cannot be reached; the message says why."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        #: the group may have applied the line, only too slowly: never sent again
        self.timed_out = timed_out


@attrs.define(eq=False)
class Directory:
    """The map and the leaders, as last read from etcd."""

    etcd: EtcdClient
    cluster: str
    log: Logger
    shardmap: sm.ShardMap | None = None
    leaders: dict[str, str | None] = attrs.field(factory=dict)
    map_loaded: trio.Event = attrs.field(factory=trio.Event)
    _leaders_asked: trio.Event = attrs.field(factory=trio.Event)
    #: map refreshes asked for by a `moved` answer since start
    moved_refreshes: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_map)
            nursery.start_soon(self._poll_leaders)
            task_status.started()

    async def refresh_map(self) -> bool:
        """Read the map now; True when it was read and is valid."""
        try:
            found = await self.etcd.range(sm.map_key(self.cluster))
        except EtcdError as exc:
            self.log.warning("router.map_unreadable", error=str(exc))
            return False
        if not found.kvs:
            self.log.warning("router.no_map", key=sm.map_key(self.cluster))
            return False
        kv = found.kvs[0]
        try:
            parsed = sm.parse(kv.value, kv.mod_revision)
        except sm.ShardMapError as exc:
            self.log.error("router.bad_map", error=str(exc))
            return False
        if self.shardmap is None or parsed.version != self.shardmap.version:
            self.log.info("router.map", version=parsed.version, groups=parsed.groups())
        self.shardmap = parsed
        for group in parsed.groups():
            self.leaders.setdefault(group, None)
        if not self.map_loaded.is_set():
            self.map_loaded.set()
            await self.refresh_leaders()
        return True

    async def moved(self) -> None:
        """A group said a key is not its own: the map changed; read it again."""
        self.moved_refreshes += 1
        await self.refresh_map()
        await self.refresh_leaders()

    async def _watch_map(self) -> None:
        key = sm.map_key(self.cluster)
        while True:
            if not await self.refresh_map():
                await trio.sleep(1.0)
                continue
            assert self.shardmap is not None
            with trio.move_on_after(WATCH_RENEW_S):
                try:
                    await self.etcd.watch(key, start_revision=self.shardmap.version + 1)
                except EtcdError as exc:
                    self.log.warning("router.watch_failed", error=str(exc))
                    await trio.sleep(1.0)

    async def refresh_leaders(self) -> None:
        shardmap = self.shardmap
        if shardmap is None:
            return
        for group in shardmap.groups():
            try:
                found = await self.etcd.range(leader_key(group))
            except EtcdError as exc:
                self.log.warning("router.leader_unreadable", group=group, error=str(exc))
                continue
            leader = leader_of(found.kvs)
            if self.leaders.get(group) != leader:
                self.log.info("router.leader", group=group, addr=leader)
            self.leaders[group] = leader

    def leader_lost(self) -> None:
        """A leader could not be reached: read the leaders again without waiting a full poll."""
        self._leaders_asked.set()

    async def _poll_leaders(self) -> None:
        while True:
            with trio.move_on_after(LEADER_POLL_S):
                await self._leaders_asked.wait()
            self._leaders_asked = trio.Event()
            await self.refresh_leaders()


@attrs.define(eq=False)
class _Link:
    stream: trio.SocketStream
    buffer: bytes = b""

    async def exchange(self, line: bytes) -> bytes:
        await self.stream.send_all(line + b"\n")
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(1 << 16)
            if not chunk:
                raise trio.BrokenResourceError("the group closed the connection")
            self.buffer += chunk
        answer, _, self.buffer = self.buffer.partition(b"\n")
        return answer + b"\n"


@attrs.define(eq=False)
class Pools:
    """Idle connections per leader address: a request takes one, and gives it back after."""

    timeout_s: float = EXCHANGE_TIMEOUT_S
    max_idle: int = 64
    _idle: dict[str, list[_Link]] = attrs.field(factory=dict)

    async def exchange(self, addr: str, line: bytes) -> bytes:
        """One request line to `addr`, its answer line (with `\\r\\n`); GroupUnavailableError.

        An idle connection the node closed meanwhile (it restarted, or failed over and came
        back) fails at once: the line is sent again on a new connection, once. That old
        connection belonged to a process that is gone, so the line was not applied there.
        """
        idle = self._idle.setdefault(addr, [])
        if idle:
            link = idle.pop()
            try:
                return await self._exchange(addr, link, line)
            except GroupUnavailableError as exc:
                if exc.timed_out:
                    raise
                for stale in idle:  # the others date from the same process
                    await trio.aclose_forcefully(stale.stream)
                idle.clear()
        return await self._exchange(addr, None, line)

    async def _exchange(self, addr: str, link: _Link | None, line: bytes) -> bytes:
        idle = self._idle.setdefault(addr, [])
        try:
            with trio.fail_after(self.timeout_s if self.timeout_s > 0 else math.inf):
                if link is None:
                    link = await _connect(addr)
                answer = await link.exchange(line)
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
        ) as exc:
            if link is not None:
                await trio.aclose_forcefully(link.stream)
            why = f"{addr}: {str(exc) or type(exc).__name__}"
            raise GroupUnavailableError(why, timed_out=isinstance(exc, trio.TooSlowError)) from None
        if len(idle) < self.max_idle:
            idle.append(link)
        else:
            await trio.aclose_forcefully(link.stream)
        return answer

    async def aclose(self) -> None:
        for links in self._idle.values():
            for link in links:
                await trio.aclose_forcefully(link.stream)
        self._idle.clear()


async def _connect(addr: str) -> _Link:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"not host:port: {addr!r}")
    return _Link(await trio.open_tcp_stream(host.strip("[]"), int(port)))
