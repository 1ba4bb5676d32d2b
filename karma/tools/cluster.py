"""`karma-trio cluster create|show|check|add-group --etcd=URLS --cluster=C`: the shard map's
operator commands (spec: sharding §2; docs/cluster.md).

- `create G1 G2 …`: an even split of the 16384 slots over the groups, written only if the
  cluster has no map yet (a guarded etcd transaction: of two admins, one wins).
- `show [--json]`: the map, its version, each group's slots, ranges and leader.
- `check`: the map is valid (it covers every slot once), every group owning slots has a leader
  that answers `system.ping` and serves this map version; exit 1 naming each problem.
- `add-group G`: record a group that owns no slots yet (under /karma/C/groups/G), so `show` and
  `check` list it and a slot move can name it.

Every change goes through karma.ha.shardmap_store (compare the map key's mod_revision).
Exit codes: 0 done / no problem, 1 refused or problems found, 2 usage, 3 etcd unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio

from karma.cluster.shardmap import ShardMap, ShardMapError
from karma.config_values import parse_name
from karma.ha.etcd_client import EtcdClient
from karma.ha.etcd_wire import EtcdError
from karma.ha.shardmap_store import MapConflictError, MapRead, ShardMapStore
from karma.tools.session import Address, Exit, Session, UnreachableError

#: how long `check` waits for each leader's answer
PING_TIMEOUT_S = 2.0


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if not args.etcd or not args.cluster:
        parser.error("--etcd and --cluster are required (or KARMA_HA_ETCD and KARMA_CLUSTER)")
    try:
        parse_name(args.cluster)
        for group in getattr(args, "groups", ()):
            parse_name(group)
    except ValueError as exc:
        parser.error(f"bad cluster or group name: {exc}")
    store = ShardMapStore(EtcdClient(args.etcd.split(","), timeout_s=2.0), args.cluster)
    command = COMMANDS[args.command]
    try:
        return anyio.run(partial(_run, command, store, args))
    except EtcdError as exc:
        print(f"karma-trio cluster: etcd: {exc}", file=sys.stderr)
        return Exit.UNREACHABLE


async def _run(command: Any, store: ShardMapStore, args: argparse.Namespace) -> int:
    try:
        code: int = await command(store, args)
        return code
    finally:
        await store.etcd.aclose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="karma-trio cluster",
        description="Create, show and check a sharded cluster's map in etcd (docs/cluster.md).",
        epilog="exit codes: 0 done; 1 refused (a map exists, another admin changed it) or"
        " problems found; 2 usage; 3 etcd unreachable",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--etcd",
        default=os.environ.get("KARMA_HA_ETCD"),
        help="etcd client URLs, comma-separated (default: $KARMA_HA_ETCD)",
    )
    common.add_argument(
        "--cluster",
        default=os.environ.get("KARMA_CLUSTER"),
        help="the cluster's name (default: $KARMA_CLUSTER)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", parents=[common], help="write a map: an even split")
    create.add_argument("groups", nargs="+", metavar="GROUP")
    show = sub.add_parser("show", parents=[common], help="print the map and the leaders")
    show.add_argument("--json", action="store_true", help="one JSON object")
    check = sub.add_parser("check", parents=[common], help="coverage and reachability")
    check.add_argument("--token", default=None, help="token for system.ping (a read token does)")
    add = sub.add_parser("add-group", parents=[common], help="record a group with no slots")
    add.add_argument("groups", nargs=1, metavar="GROUP")
    return parser


# --- the commands ---------------------------------------------------------------------------
async def create(store: ShardMapStore, args: argparse.Namespace) -> int:
    try:
        written = await store.create(args.groups)
    except (MapConflictError, ShardMapError) as exc:
        print(f"karma-trio cluster create: {exc}", file=sys.stderr)
        return Exit.REFUSED
    print(f"created the map of cluster {store.cluster}, version {written.version}:")
    for first, last, group in written.ranges:
        print(f"  {group}: slots {first}-{last} ({last - first + 1})")
    return Exit.OK


async def add_group(store: ShardMapStore, args: argparse.Namespace) -> int:
    group = args.groups[0]
    current = await store.read()
    if current.map is not None and group in current.map.groups():
        print(
            f"karma-trio cluster add-group: group {group} already owns slots in cluster"
            f" {store.cluster}",
            file=sys.stderr,
        )
        return Exit.REFUSED
    if not await store.add_group(group):
        print(f"karma-trio cluster add-group: group {group} is recorded already", file=sys.stderr)
        return Exit.REFUSED
    print(f"recorded group {group} in cluster {store.cluster}: it owns no slots yet")
    return Exit.OK


async def show(store: ShardMapStore, args: argparse.Namespace) -> int:
    state = await _state(store)
    if args.json:
        print(json.dumps(state, sort_keys=True))
    else:
        print(_text(state))
    return Exit.OK if state["version"] else Exit.REFUSED


async def check(store: ShardMapStore, args: argparse.Namespace) -> int:
    state = await _state(store)
    problems: list[str] = []
    if state["problem"] is not None:
        problems.append(f"the map (version {state['version']}) is not valid: {state['problem']}")
    elif not state["version"]:
        problems.append(f"cluster {store.cluster} has no map (karma-trio cluster create)")
    for row in state["groups"]:
        if not row["slots"]:
            continue  # recorded, owns nothing yet: its nodes may not run yet
        problems.extend(await anyio.to_thread.run_sync(_check_leader, row, state, args.token))
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return Exit.REFUSED
    groups = sum(1 for row in state["groups"] if row["slots"])
    print(
        f"ok: cluster {store.cluster}, map version {state['version']}: 16384 slots over"
        f" {groups} groups, every leader answers"
    )
    return Exit.OK


COMMANDS = {"create": create, "show": show, "check": check, "add-group": add_group}


# --- helpers --------------------------------------------------------------------------------
async def _state(store: ShardMapStore) -> dict[str, Any]:
    """The map as read, each group (map order, then recorded ones) with slots and leader."""
    read: MapRead = await store.read()
    registered = await store.registered()
    shardmap: ShardMap | None = read.map
    groups = [] if shardmap is None else shardmap.groups()
    groups += [g for g in registered if g not in groups]
    leaders = await store.leaders(groups)
    rows = []
    for group in groups:
        ranges = [] if shardmap is None else [[f, la] for f, la, g in shardmap.ranges if g == group]
        rows.append(
            {
                "group": group,
                "slots": sum(la - f + 1 for f, la in ranges),
                "ranges": ranges,
                "leader": leaders.get(group),
                "recorded": group in registered,
            }
        )
    return {
        "cluster": store.cluster,
        "version": read.mod_revision,
        "problem": read.problem,
        "ranges": [] if shardmap is None else [list(r) for r in shardmap.ranges],
        "groups": rows,
    }


def _text(state: dict[str, Any]) -> str:
    if state["problem"] is not None:
        head = f"cluster {state['cluster']}: the stored map (version {state['version']}) is not"
        head += f" valid: {state['problem']}"
    elif not state["version"]:
        head = f"cluster {state['cluster']}: no map yet (karma-trio cluster create)"
    else:
        head = f"cluster {state['cluster']}, map version {state['version']}"
    lines = [head, f"  {'group':<16} {'slots':>6}  {'leader':<24} ranges"]
    for row in state["groups"]:
        ranges = ", ".join(f"{f}-{la}" for f, la in row["ranges"]) or "(none yet)"
        leader = row["leader"] or "(no leader)"
        lines.append(f"  {row['group']:<16} {row['slots']:>6}  {leader:<24} {ranges}")
    return "\n".join(lines)


def _check_leader(row: dict[str, Any], state: dict[str, Any], token: str | None) -> list[str]:
    group, leader = row["group"], row["leader"]
    if leader is None:
        return [f"group {group} ({row['slots']} slots) has no leader"]
    host, _, port = str(leader).rpartition(":")
    try:
        address = Address(host, int(port), token)
    except ValueError:
        return [f"group {group}'s leader address {leader!r} is not host:port"]
    try:
        with Session(address, PING_TIMEOUT_S) as session:
            ping = session.request({"op": "system.ping"})
            if not ping.success:
                return [f"group {group}'s leader {leader} answers system.ping: {ping.line}"]
            topology = session.request({"op": "cluster.topology"})
    except UnreachableError as exc:
        return [f"group {group}'s leader {leader} does not answer: {exc}"]
    response = topology.response if isinstance(topology.response, dict) else {}
    served = response.get("shardmap")
    version = served.get("version") if isinstance(served, dict) else None
    if version != state["version"]:
        return [
            f"group {group}'s leader {leader} serves map version {version}, etcd holds"
            f" {state['version']}"
        ]
    if response.get("group") != group:
        return [f"group {group}'s leader {leader} says it is in group {response.get('group')}"]
    return []
