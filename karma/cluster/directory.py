"""Where a cluster's facts live in etcd, and how a `cluster.topology` answer carries them:
pure helpers shared by the router (karma.server.router_groups) and the Python client.

- the map: `/karma/<cluster>/shardmap` (karma.cluster.shardmap.map_key);
- each group's leader: the group's HA leader key, `/karma/<group>/leader` (karma.ha.rules);
- a node or router answering `cluster.topology` in a cluster adds
  `"shardmap": {"version": N, "ranges": [...]}` and its groups' leaders, either as a list
  (`[{"group": "g1", "leader": "h:p" | null, ...}]`, the node) or as an object
  (`{"g1": {"addr": "h:p"} | null}`, the router); `topology_view` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from karma.cluster import shardmap as sm
from karma.ha import rules
from karma.ha.etcd_wire import KeyValue


def leader_key(group: str) -> str:
    """Where group `group`'s leader is published (an HA group of spec/ha.md)."""
    return rules.Keys(group).leader


def leader_of(kvs: Sequence[KeyValue]) -> str | None:
    """The leader's `host:port` from a read of its leader key (None: no leader now)."""
    if not kvs:
        return None
    decoded = rules.decode_leader(kvs[0].value, kvs[0].create_revision)
    return None if decoded is None or not decoded.addr else decoded.addr


def etcd_urls(text: str) -> Sequence[str]:
    """`--etcd=h1:2379,http://h2:2379` → base URLs."""
    urls = []
    for item in text.split(","):
        item = item.strip().rstrip("/")
        if item:
            urls.append(item if "://" in item else f"http://{item}")
    return urls


@attrs.frozen
class View:
    """A cluster as last read: the map and each group's leader (`host:port`, None if none)."""

    shardmap: sm.ShardMap
    leaders: Mapping[str, str | None]


def topology_view(response: object) -> View | None:
    """The map and leaders of a `cluster.topology` response; None when it carries no map (a
    node outside a cluster, or karma 1.0) or a map that does not check."""
    if not isinstance(response, dict):
        return None
    wire = response.get("shardmap")
    if not isinstance(wire, dict) or not isinstance(wire.get("ranges"), list):
        return None
    version = wire.get("version", 0)
    try:
        ranges = sm.check_ranges(wire["ranges"])
    except sm.ShardMapError:
        return None
    shardmap = sm.ShardMap(ranges, version if type(version) is int else 0)
    leaders: dict[str, str | None] = dict.fromkeys(shardmap.groups())
    groups = response.get("groups")
    if isinstance(groups, list):
        for item in groups:
            if isinstance(item, dict) and isinstance(item.get("group"), str):
                leaders[item["group"]] = _addr(item.get("leader"))
    elif isinstance(groups, dict):
        for name, item in groups.items():
            leaders[str(name)] = _addr(item)
    return View(shardmap, leaders)


def _addr(value: object) -> str | None:
    """`"h:p"`, `{"addr": "h:p"}` or null."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        return _addr(value.get("addr"))
    return None
