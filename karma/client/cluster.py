"""Cluster mode's shared half (docs/client.md, "Cluster mode"): no sockets to the nodes here.

A cluster URL names where the shard map and the groups' leaders are read:

- `karma+etcd://[token@]HOST:PORT[,HOST:PORT…]/CLUSTER`: from etcd, through its JSON gateway
  (plain HTTP, `urllib`, so the blocking client needs nothing more; the async client runs the
  same read in a worker thread);
- `karma+seeds://[token@]HOST:PORT[,HOST:PORT…]`: from the first of these nodes (or routers)
  whose `cluster.topology` answer carries `shardmap` and its groups' leaders.

Each call becomes a request object, is decoded by the node's own protocol code (so a request
a node would refuse is sent whole to one group, whose answer is the node's), and is driven
through the fan-out plan by karma.cluster.drive; `Client` and `AsyncClient` only send parts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import msgspec

from karma.client.call import Call
from karma.client.errors import ConnectionFailed
from karma.client.wire import Answer, encode_call, parse_url
from karma.cluster import shardmap as sm
from karma.cluster.directory import View, etcd_urls, leader_key, leader_of, topology_view
from karma.cluster.parts import JsonObject
from karma.cluster.reply import Reply
from karma.errors import KarmaError as ProtocolError
from karma.ha import etcd_wire
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.gate import Gate

__all__ = [
    "Address",
    "ClusterUrl",
    "Planned",
    "View",
    "address_of",
    "parse_any_url",
    "plan_call",
    "read_etcd",
]

Address = tuple[str, int]
SCHEMES: Final = ("karma+etcd", "karma+seeds")
#: the client checks no token itself: every group does, on every part
_GATE: Final = Gate()
_generic: Final = msgspec.json.Decoder()
_encode: Final = msgspec.json.Encoder().encode
#: ops a part carries the caller's fields of; `v` and `op` are the envelope
_ENVELOPE: Final = frozenset({"v", "op"})


@attrs.frozen
class ClusterUrl:
    """Where a cluster client reads the map: etcd endpoints or seed nodes (one of the two)."""

    etcd: tuple[str, ...] = ()
    seeds: tuple[Address, ...] = ()
    cluster: str = ""

    def describe(self) -> str:
        if self.etcd:
            return f"cluster {self.cluster} in etcd {','.join(self.etcd)}"
        return "cluster seeds " + ",".join(f"{h}:{p}" for h, p in self.seeds)


def parse_cluster_url(url: str) -> dict[str, Any]:
    """`karma+etcd://…/CLUSTER` or `karma+seeds://…` → Client keyword arguments."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    token = parts.username or None
    if not hosts:
        raise ValueError(f"no hosts in {url}")
    if parts.scheme == "karma+etcd":
        name = parts.path.strip("/")
        if not name or "/" in name:
            raise ValueError(
                f"a karma+etcd URL names one cluster: karma+etcd://HOST:PORT/NAME, not {url}"
            )
        found = ClusterUrl(etcd=tuple(etcd_urls(hosts)), cluster=name)
    elif parts.scheme == "karma+seeds":
        seeds = []
        for text in hosts.split(","):
            split = urlsplit(f"//{text}")
            if not split.hostname:
                raise ValueError(f"a seed without a host in {url}")
            seeds.append((split.hostname, split.port or 8080))
        found = ClusterUrl(seeds=tuple(seeds), cluster=parts.path.strip("/"))
    else:
        raise ValueError(f"not a cluster URL: {url}")
    return {"cluster": found, "token": token}


def parse_any_url(url: str) -> dict[str, Any]:
    """Any client URL → Client keyword arguments: `karma://…` (karma.client.wire.parse_url),
    or a cluster URL (`cluster` then says where the shard map is read)."""
    if urlsplit(url).scheme in SCHEMES:
        return parse_cluster_url(url)
    return parse_url(url)


def address_of(text: str) -> Address | None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


# --- reading the map ----------------------------------------------------------------------------
def read_etcd(urls: Sequence[str], cluster: str, timeout: float) -> View:
    """The map and every group's leader, from etcd's JSON gateway (blocking)."""
    key = sm.map_key(cluster)
    found = etcd_wire.parse_range(_post(urls, etcd_wire.range_request(key), timeout))
    if not found.kvs:
        raise ConnectionFailed(f"no shard map for cluster {cluster} in etcd (key {key})")
    kv = found.kvs[0]
    try:
        shardmap = sm.parse(kv.value, kv.mod_revision)
    except sm.ShardMapError as exc:
        raise ConnectionFailed(f"the shard map of cluster {cluster} is not valid: {exc}") from exc
    leaders: dict[str, str | None] = {}
    for group in shardmap.groups():
        answer = _post(urls, etcd_wire.range_request(leader_key(group)), timeout)
        leaders[group] = leader_of(etcd_wire.parse_range(answer).kvs)
    return View(shardmap, leaders)


def _post(urls: Sequence[str], call: etcd_wire.Call, timeout: float) -> dict[str, Any]:
    failures = []
    body = json.dumps(call.body).encode()
    for url in urls:
        request = urllib.request.Request(
            url + call.path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                answer = json.loads(reply.read())
        except (OSError, ValueError, urllib.error.URLError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        if isinstance(answer, dict) and answer.get("code") != 14:
            try:
                etcd_wire.check(answer)
            except etcd_wire.EtcdError as exc:
                raise ConnectionFailed(f"etcd refused a read: {exc}") from exc
            return answer
        failures.append(f"{url}: {str(answer)[:80]}")
    raise ConnectionFailed("etcd unavailable: " + "; ".join(failures))


def seed_view(answer: Answer) -> View | None:
    """The map and leaders of a seed's `cluster.topology` answer (None: it has none)."""
    if not answer.success:
        return None
    try:
        return topology_view(msgspec.json.decode(answer.response))
    except msgspec.DecodeError:
        return None


# --- one call as a request ----------------------------------------------------------------------
@attrs.frozen
class Planned:
    """A call as the fan-out rules read it: its object and decoded request; or, when a node
    would refuse it, None (it is sent whole to one group, whose answer is the node's)."""

    obj: JsonObject
    request: r.Request | None


def plan_call(call: Call[Any], token: str | None) -> Planned:
    line = encode_call(call, token)[:-1]
    obj = _generic.decode(line)
    assert isinstance(obj, dict)
    try:
        return Planned(obj, decode(line, _GATE))
    except ProtocolError:
        return Planned(obj, None)


def as_call(obj: JsonObject) -> Call[Any]:
    """A part's object as a Call a group's plain client sends (token and all in its fields)."""
    return Call(str(obj["op"]), {k: v for k, v in obj.items() if k not in _ENVELOPE}, _same)


def _same(raw: object) -> object:
    return raw


def to_reply(answer: Answer) -> Reply:
    return Reply(
        answer.success, msgspec.json.decode(answer.response), answer.error_code, answer.idempotent
    )


def to_answer(reply: Reply) -> Answer:
    return Answer(
        success=reply.success,
        response=msgspec.Raw(_encode(reply.response)),
        error_code=reply.error_code,
        idempotent=reply.idempotent,
    )
