"""The shard map: which group owns which slot range (spec: sharding §2).

Stored in etcd at ``/karma/<cluster>/shardmap`` as ``{"ranges": [[first, last, "group"], ...]}``;
its version is the etcd key's ``mod_revision`` (0 for a map not read from etcd). A valid map
covers 0..16383 exactly once, in order, with no empty group name; :func:`parse` refuses anything
else with one message naming the first problem, so a node never routes on a half-written map.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence

import attrs

from karma.cluster.slots import LAST_SLOT, SLOTS, slot_of


class ShardMapError(ValueError):
    """The map's text or shape is not a valid map; the message names the first problem."""


def map_key(cluster: str) -> str:
    """The etcd key holding cluster `cluster`'s map."""
    return f"/karma/{cluster}/shardmap"


def groups_prefix(cluster: str) -> str:
    """Where `cluster add-group` records groups (one key per group, the value its name)."""
    return f"/karma/{cluster}/groups/"


def group_key(cluster: str, group: str) -> str:
    return groups_prefix(cluster) + group


@attrs.frozen(slots=True)
class ShardMap:
    """Slot ranges, sorted and covering every slot once; `version` orders maps of one cluster."""

    ranges: tuple[tuple[int, int, str], ...]
    version: int = 0
    # the ranges' first slots, for bisect
    _firsts: tuple[int, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_firsts", tuple(first for first, _, _ in self.ranges))

    def owner_of_slot(self, slot: int) -> str:
        index = bisect.bisect_right(self._firsts, slot) - 1
        return self.ranges[index][2]

    def owner_of(self, key: int) -> str:
        """The group that owns subject `key`."""
        return self.owner_of_slot(slot_of(key))

    def groups(self) -> list[str]:
        """Every group that owns at least one slot, in the order of their first range."""
        seen: dict[str, None] = {}
        for _, _, group in self.ranges:
            seen.setdefault(group, None)
        return list(seen)

    def slot_count(self, group: str) -> int:
        return sum(last - first + 1 for first, last, owner in self.ranges if owner == group)

    def to_wire(self) -> dict[str, object]:
        """The form `cluster.topology` answers with."""
        return {"version": self.version, "ranges": [list(r) for r in self.ranges]}

    def to_json(self) -> bytes:
        """The value stored in etcd (the version lives in etcd's mod_revision, not here)."""
        return json.dumps({"ranges": [list(r) for r in self.ranges]}).encode()


def check_ranges(ranges: Sequence[Sequence[object]]) -> tuple[tuple[int, int, str], ...]:
    """Validate ranges and return them normalised (adjacent ranges of one group merged)."""
    out: list[tuple[int, int, str]] = []
    expected = 0
    for index, item in enumerate(ranges):
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ShardMapError(f"range {index} is not [first, last, group]: {item!r}")
        first, last, group = item
        if type(first) is not int or type(last) is not int:
            raise ShardMapError(f"range {index}: slots must be integers: {item!r}")
        if not isinstance(group, str) or not group:
            raise ShardMapError(f"range {index}: group must be a non-empty string: {item!r}")
        if first != expected:
            what = "overlaps" if first < expected else "leaves a gap before"
            raise ShardMapError(f"range {index} [{first}, {last}] {what} slot {expected}")
        if last < first or last > LAST_SLOT:
            raise ShardMapError(f"range {index}: [{first}, {last}] is not within 0..{LAST_SLOT}")
        if out and out[-1][2] == group:
            out[-1] = (out[-1][0], last, group)
        else:
            out.append((first, last, group))
        expected = last + 1
    if expected != SLOTS:
        raise ShardMapError(f"the map leaves slots {expected}..{LAST_SLOT} without a group")
    return tuple(out)


def parse(data: bytes | str, version: int = 0) -> ShardMap:
    """The map stored in etcd, checked; ShardMapError names what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ShardMapError(f"the map is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ranges"), list):
        raise ShardMapError('the map is not an object with a "ranges" list')
    return ShardMap(check_ranges(doc["ranges"]), version)


def even_split(groups: Sequence[str], version: int = 0) -> ShardMap:
    """Slots split in contiguous, near-equal ranges, one per group, in the order given."""
    if not groups:
        raise ShardMapError("a map needs at least one group")
    if len(set(groups)) != len(groups):
        raise ShardMapError(f"group names repeat: {list(groups)}")
    count = len(groups)
    ranges = []
    for index, group in enumerate(groups):
        first = index * SLOTS // count
        last = (index + 1) * SLOTS // count - 1
        ranges.append((first, last, group))
    return ShardMap(check_ranges(ranges), version)
