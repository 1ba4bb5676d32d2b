"""The shard map in etcd (spec: sharding §2): read it, change it only by compare-and-swap, and
read what goes with it (the groups recorded without slots, each group's leader).

Shared by the node's map task, the `cluster` command, and later the slot mover: every change to
the map goes through `change`, which reads the map, lets the caller compute the next one, and
writes it only if the key's mod_revision is still the one read. Of two admins (or movers) that
read the same version, exactly one wins; the other gets `MapConflictError` and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from karma.cluster.shardmap import (
    ShardMap,
    ShardMapError,
    even_split,
    group_key,
    groups_prefix,
    map_key,
    parse,
)
from karma.ha import rules
from karma.ha.etcd_client import EtcdClient
from karma.ha.etcd_wire import (
    EtcdError,
    parse_txn,
    put_if_mod_revision_request,
    ranges_request,
)


class MapConflictError(Exception):
    """The map changed between the read and the guarded write (another admin won)."""


@attrs.frozen
class MapRead:
    """The map key as read: absent (`mod_revision` 0), a valid map, or a bad one (`problem`)."""

    map: ShardMap | None
    mod_revision: int
    #: the store's revision at the read: watch from revision + 1 to miss nothing after it
    revision: int
    #: why the stored value is not a valid map (None when absent or valid)
    problem: str | None = None


@attrs.define(eq=False)
class ShardMapStore:
    etcd: EtcdClient
    cluster: str

    @property
    def key(self) -> str:
        return map_key(self.cluster)

    async def read(self) -> MapRead:
        found = await self.etcd.range(self.key)
        if not found.kvs:
            return MapRead(None, 0, found.revision)
        kv = found.kvs[0]
        try:
            return MapRead(parse(kv.value, kv.mod_revision), kv.mod_revision, found.revision)
        except ShardMapError as exc:
            return MapRead(None, kv.mod_revision, found.revision, str(exc))

    async def write_if(self, shardmap: ShardMap, *, mod_revision: int) -> ShardMap:
        """Write `shardmap` if the key's mod_revision is still `mod_revision` (0: absent);
        the map as written, with its new version. MapConflictError when another write came first."""
        value = shardmap.to_json()
        parse(value)  # never store what a node would refuse
        request = put_if_mod_revision_request(self.key, value, mod_revision=mod_revision)
        done = parse_txn(await self.etcd.call(request))
        if not done.succeeded:
            now = done.kvs[0].mod_revision if done.kvs else 0
            raise MapConflictError(
                f"the map of cluster {self.cluster} changed (version {mod_revision} was read,"
                f" {now} is stored): nothing written; read it again"
            )
        return ShardMap(shardmap.ranges, done.revision)

    async def change(self, edit: Callable[[MapRead], ShardMap]) -> ShardMap:
        """Read the map, let `edit` compute the next one (it raises to refuse), write it
        guarded by the version read. The one way the map changes."""
        current = await self.read()
        return await self.write_if(edit(current), mod_revision=current.mod_revision)

    async def create(self, groups: Sequence[str]) -> ShardMap:
        """An even split over `groups`; refused when a map exists (valid or not)."""

        def first(current: MapRead) -> ShardMap:
            if current.mod_revision:
                raise MapConflictError(
                    f"cluster {self.cluster} already has a map (version"
                    f" {current.mod_revision}); nothing written"
                )
            return even_split(groups)

        return await self.change(first)

    async def registered(self) -> list[str]:
        """Groups recorded by `add-group`, by name."""
        found = await self.etcd.range(groups_prefix(self.cluster), prefix=True)
        prefix = groups_prefix(self.cluster)
        return sorted(kv.key.removeprefix(prefix) for kv in found.kvs)

    async def add_group(self, group: str) -> bool:
        """Record `group` (owning no slots yet); False when it was recorded already."""
        key = group_key(self.cluster, group)
        done = parse_txn(
            await self.etcd.call(put_if_mod_revision_request(key, group.encode(), mod_revision=0))
        )
        return done.succeeded

    async def leaders(self, groups: Sequence[str]) -> dict[str, str | None]:
        """Each group's leader address (its HA leader key), None where it has none, in one
        round trip."""
        if not groups:
            return {}
        keys = {rules.Keys(group).leader: group for group in groups}
        done = parse_txn(await self.etcd.call(ranges_request(list(keys))))
        found: dict[str, str | None] = dict.fromkeys(groups)
        for kv in done.kvs:
            leader = rules.decode_leader(kv.value, kv.create_revision)
            if leader is not None and kv.key in keys:
                found[keys[kv.key]] = leader.addr
        return found


__all__ = ["EtcdError", "MapConflictError", "MapRead", "ShardMapStore"]
