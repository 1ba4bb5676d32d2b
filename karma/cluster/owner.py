"""A cluster node's view of the map, and the owner check of its admit step (spec: sharding §3).

`Ownership` holds what the node knows: its cluster and group, the current shard map (version =
the etcd key's mod_revision), the other groups' leaders, and the groups registered without
slots. The shell's map task (server/shardmap_task.py) replaces the map and the leaders; the
node calls `admit` once per decoded request. Pure: no I/O, no clock.

`admit` refuses a request that names a key whose slot this group does not own with `moved`,
for the whole request; before any valid map is known, every keyed request gets `moved` with
`group` null (the node cannot tell who owns anything yet; a client refreshes and retries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from karma.cluster.keys import KEYED
from karma.cluster.shardmap import ShardMap
from karma.cluster.slots import SLOTS, slot_of
from karma.errors import ErrorCode, KarmaError
from karma.protocol import requests as r

_NOTHING_OWNED: Final = bytes(SLOTS)


@attrs.frozen
class Moved:
    """What a `moved` answer names (its envelope's `moved` field)."""

    slot: int
    group: str | None
    leader: str | None
    version: int

    def to_wire(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "group": self.group,
            "leader": self.leader,
            "version": self.version,
        }

    def error(self, cluster: str) -> KarmaError:
        if self.group is None:
            text = f"Moved: no shard map of cluster {cluster} is known here yet; retry shortly"
        else:
            where = f"its leader is {self.leader}" if self.leader else "no leader is known"
            text = (
                f"Moved: slot {self.slot} is owned by group {self.group} ({where}),"
                f" map version {self.version}; retry there"
            )
        return KarmaError(ErrorCode.MOVED, text, {"moved": self.to_wire()})


def moved_of(answer: Mapping[str, object]) -> Moved | None:
    """The `moved` details of a decoded answer envelope, or None when it is not one."""
    if answer.get("error_code") != "moved":
        return None
    raw = answer.get("moved")
    if not isinstance(raw, dict):
        return None
    slot, group, leader, version = (raw.get(k) for k in ("slot", "group", "leader", "version"))
    if type(slot) is not int or type(version) is not int:
        return None
    return Moved(
        slot,
        group if isinstance(group, str) else None,
        leader if isinstance(leader, str) else None,
        version,
    )


@attrs.define(eq=False)
class Ownership:
    cluster: str
    group: str
    #: None until the first valid map is read
    map: ShardMap | None = None
    #: each group's leader address as last read from its HA keys (None: no leader now)
    leaders: dict[str, str | None] = attrs.field(factory=dict)
    #: groups recorded with `cluster add-group` (they may own no slot yet)
    registered: tuple[str, ...] = ()
    #: one byte per slot, 1 where this group owns it (one index per key in `admit`)
    _owned: bytes = attrs.field(default=_NOTHING_OWNED, init=False)

    def set_map(self, shardmap: ShardMap) -> None:
        owned = bytearray(SLOTS)
        for first, last, group in shardmap.ranges:
            if group == self.group:
                owned[first : last + 1] = b"\x01" * (last - first + 1)
        self._owned = bytes(owned)
        self.map = shardmap

    def owns_slot(self, slot: int) -> bool:
        return bool(self._owned[slot])

    def admit(self, request: r.Request) -> None:
        """Raise `moved` unless this group owns the slot of every key `request` names."""
        read = KEYED.get(type(request))
        if read is None:
            return
        owned = self._owned
        for key in read(request):
            slot = slot_of(key)
            if not owned[slot]:
                raise self.moved(slot).error(self.cluster)

    def moved(self, slot: int) -> Moved:
        shardmap = self.map
        if shardmap is None:
            return Moved(slot, None, None, 0)
        owner = shardmap.owner_of_slot(slot)
        return Moved(slot, owner, self.leaders.get(owner), shardmap.version)

    def groups(self) -> list[str]:
        """The map's groups in map order, then registered groups that own no slot."""
        listed = [] if self.map is None else self.map.groups()
        return listed + [g for g in self.registered if g not in listed]

    def to_wire(self) -> dict[str, object]:
        """`cluster.topology`'s cluster part."""
        shardmap = self.map
        return {
            "cluster": self.cluster,
            "group": self.group,
            "shardmap": None if shardmap is None else shardmap.to_wire(),
            "groups": [
                {
                    "group": group,
                    "slots": 0 if shardmap is None else shardmap.slot_count(group),
                    "leader": self.leaders.get(group),
                }
                for group in self.groups()
            ],
        }
