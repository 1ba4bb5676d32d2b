"""The shard map task: a sibling of the HA task in the server nursery (spec: sharding §2-3).

Each round reads the map key, the groups recorded by `cluster add-group` and every group's
leader key, and puts what it read into the node's `Ownership` (karma.cluster.owner), which the
owner check of every keyed request reads. Between rounds it watches the map key from the read's
revision + 1, so a change to the map (a guarded write by `cluster create`, or later a slot move)
starts the next round at once; leaders are read again every `--ha-loop-wait` seconds.

A stored value that is not a valid map is logged once per version and ignored: the last good
map stays. So is a deleted map key. etcd being unreachable changes nothing either: the node
keeps answering by the map it has (a move needs etcd, so the map cannot change meanwhile).
"""

from __future__ import annotations

import attrs
import trio

from karma.cluster.owner import Ownership
from karma.ha.etcd_wire import EtcdError
from karma.ha.shardmap_store import MapRead, ShardMapStore
from karma.observability.logs import Logger


@attrs.define(eq=False)
class ShardMapTask:
    store: ShardMapStore
    ownership: Ownership
    log: Logger
    loop_wait_s: float
    rounds: int = 0
    #: the version of a bad map already logged (one line per bad version, not per round)
    _logged_bad: int = attrs.field(default=0, init=False)
    _logged_missing: bool = attrs.field(default=False, init=False)

    async def serve(self) -> None:
        try:
            while True:
                watch_from = 0
                try:
                    watch_from = await self.round()
                except EtcdError as exc:
                    self.log.warning("cluster.etcd_failed", error=str(exc))
                self.rounds += 1
                await self._wait(watch_from)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.store.etcd.aclose()

    async def round(self) -> int:
        """Read the map, the recorded groups and the leaders; the revision to watch from."""
        read = await self.store.read()
        self.apply(read)
        own = self.ownership
        own.registered = tuple(await self.store.registered())
        own.leaders = await self.store.leaders(own.groups())
        return read.revision + 1

    def apply(self, read: MapRead) -> None:
        own = self.ownership
        kept = None if own.map is None else own.map.version
        if read.problem is not None:
            if read.mod_revision != self._logged_bad:
                self._logged_bad = read.mod_revision
                self.log.error(
                    "cluster.bad_map",
                    cluster=own.cluster,
                    version=read.mod_revision,
                    problem=read.problem,
                    kept_version=kept,
                )
            return
        if read.map is None:
            if not self._logged_missing:
                self._logged_missing = True
                self.log.warning("cluster.no_map", cluster=own.cluster, kept_version=kept)
            return
        self._logged_missing = False
        if kept == read.map.version:
            return
        own.set_map(read.map)
        self.log.info(
            "cluster.map",
            cluster=own.cluster,
            group=own.group,
            version=read.map.version,
            previous_version=kept,
            owned_slots=read.map.slot_count(own.group),
        )

    async def _wait(self, watch_from: int) -> None:
        """Until the next round: a loop_wait, or sooner when the map key changes."""
        with trio.move_on_after(self.loop_wait_s):
            if watch_from:
                try:
                    await self.store.etcd.watch(self.store.key, start_revision=watch_from)
                except EtcdError as exc:
                    self.log.debug("cluster.watch_failed", error=str(exc))
                else:
                    return
            await trio.sleep_forever()
