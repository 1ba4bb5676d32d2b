"""`karma-trio router`: a stateless router in front of a sharded cluster (spec: sharding §4).

It speaks the same v2 protocol as a node, so netcat, karma 1.0's clients and anything else
work unchanged against a cluster. Each request line is decoded by the node's own protocol code
(so bad input gets a node's answer), planned by the fan-out rules (karma.cluster.fanout), sent
to the owning groups' leaders (tokens passed through), and the groups' answers merged into one.
`system.ping` and `cluster.topology` are answered here. Nothing is kept between requests but
the map, the leaders' addresses and idle connections, so routers scale out behind any TCP
balancer.

    karma-trio router --etcd=URLS --cluster=C --bind=HOST --port=PORT [--metrics-port=P]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Protocol

import attrs
import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram

from karma.cluster import fanout
from karma.cluster.consume import ConsumePlan
from karma.cluster.parts import JsonObject
from karma.cluster.reply import Reply, unreachable
from karma.cluster.shardmap import ShardMap
from karma.config import Config
from karma.core.counters import Counters
from karma.errors import ErrorCode, KarmaError
from karma.ha.etcd_client import EtcdClient
from karma.observability.logs import Logger
from karma.observability.metrics import exposition
from karma.protocol import envelope, optable
from karma.protocol import requests as r
from karma.protocol.decode import decode
from karma.protocol.framing import LineBuffer
from karma.protocol.gate import Gate
from karma.server.accept import AcceptFailures, listen, serve_listeners
from karma.server.router_groups import (
    EXCHANGE_TIMEOUT_S,
    Directory,
    GroupUnavailableError,
    Pools,
    etcd_urls,
)

_generic = msgspec.json.Decoder()
#: decode errors a node gives before it looks at the token: the router answers them itself.
#: Later ones (a field's type or value) come after the node's token check, so the line goes to
#: a group, whose answer is the one a node gives.
_BEFORE_AUTH = frozenset(
    {ErrorCode.INVALID_JSON, ErrorCode.UNSUPPORTED_PROTOCOL, ErrorCode.UNKNOWN_COMMAND}
)
_EARLY_VALIDATION = frozenset({"Request must be a JSON object", "Field op is required"})
RECEIVE_BYTES = 65536
#: a node's default --max-request-bytes: a line too long for a node is too long here
_MAX_REQUEST_BYTES: int = Config.__attrs_attrs__.max_request_bytes.default or 4096


class _Sendable(Protocol):
    """A plan's part or a consume's hold part: a group and the object it gets."""

    @property
    def group(self) -> str: ...

    @property
    def request(self) -> JsonObject: ...


@attrs.define(eq=False)
class Metrics:
    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    requests: Counter = attrs.field(init=False)
    width: Histogram = attrs.field(init=False)
    moved: Counter = attrs.field(init=False)
    errors: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        reg = self.registry
        self.requests = Counter(
            "karma_router_requests",
            "Requests sent to groups, by op and group",
            ["op", "group"],
            registry=reg,
        )
        self.width = Histogram(
            "karma_router_fanout_width",
            "Groups one client request was sent to",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32),
            registry=reg,
        )
        self.moved = Counter(
            "karma_router_moved_refreshes", "Map refreshes after a moved answer", registry=reg
        )
        self.errors = Counter(
            "karma_router_errors", "Error answers sent to clients, by code", ["code"], registry=reg
        )


@attrs.define(eq=False)
class Router:
    directory: Directory
    pools: Pools
    metrics: Metrics
    cluster: str
    max_request_bytes: int
    #: the groups check every part's token; the router checks one only when given the tokens
    #: (--auth-token/--read-auth-token), so that what it answers itself (system.ping,
    #: cluster.topology, a bad line) is refused as a node would refuse it
    gate: Gate = attrs.field(factory=Gate)

    # --- one request ----------------------------------------------------------------------
    async def answer(self, line: bytes) -> bytes:
        try:
            request = decode(line, self.gate)
        except KarmaError as exc:
            data = await self._refused(line, exc)
        else:
            data = await self._routed(request, line)
        if not envelope.succeeded(data):
            code = Reply.decode(data.rstrip()).error_code or "internal_error"
            self.metrics.errors.labels(code).inc()
        return data

    async def _refused(self, line: bytes, exc: KarmaError) -> bytes:
        if exc.code in _BEFORE_AUTH or exc.message in _EARLY_VALIDATION:
            return envelope.encode_error(exc)
        # the node checks the token before the fields: its answer is the one to give
        shardmap = self.directory.shardmap
        if shardmap is not None:
            group = shardmap.groups()[0]
            reply = await self._send_raw(group, line, "-")
            if reply is not None:
                return reply
        return envelope.encode_error(exc)

    async def _routed(self, request: r.Request, line: bytes) -> bytes:
        if isinstance(request, r.Ping):
            return envelope.encode_ok("pong")
        if isinstance(request, r.ClusterTopology):
            return envelope.encode_ok(self.topology())
        shardmap = self.directory.shardmap
        if shardmap is None:
            return envelope.encode_error(_no_map(self.cluster))
        obj = _object(line)
        for attempt in range(2):
            plan = fanout.plan_request(request, obj, shardmap, nonce=uuid.uuid4().hex)
            self.metrics.width.observe(len(plan.parts))
            if isinstance(plan, ConsumePlan):
                return (await self._consume(plan)).encode()
            if len(plan.parts) == 1 and plan.parts[0].whole:
                data = await self._whole(plan, line)
                if attempt == 0 and data.find(b'"error_code":"moved"') != -1:
                    shardmap = await self._moved()
                    continue
                if data.find(b'"error_code":"not_found"') == -1:
                    return data  # as the group said it, byte for byte
                replies = [Reply.decode(data.rstrip())]  # the series may exist elsewhere
            else:
                tag = optable.TAG_BY_CLASS[type(request)]
                sent: dict[int, Reply] = {}
                waves = plan.waves
                for number, wave in enumerate(waves):
                    got = await self._parts(plan, tag, [plan.parts[i] for i in wave])
                    sent.update(zip(wave, got, strict=True))
                    early = plan.early_answer(got) if number < len(waves) - 1 else None
                    if early is not None:
                        return early.encode()
                replies = [sent[i] for i in range(len(plan.parts))]
            if attempt == 0 and replies and all(reply.error_code == "moved" for reply in replies):
                # every part was refused, nothing applied anywhere: plan again under the new
                # map (a part refused among parts applied is answered as it is: retriable)
                shardmap = await self._moved()
                continue
            merged = plan.merge(replies)
            if merged is fanout.NEED_SERIES:
                merged = plan.merge(replies, series=await self._series_lists(obj, plan.groups))
            assert isinstance(merged, Reply)
            return merged.encode()
        raise AssertionError("unreachable: the second attempt returns")

    async def _moved(self) -> ShardMap:
        self.metrics.moved.inc()
        await self.directory.moved()
        shardmap = self.directory.shardmap
        assert shardmap is not None  # it was loaded before, and a failed read keeps it
        return shardmap

    async def _whole(self, plan: fanout.Plan, line: bytes) -> bytes:
        group = plan.parts[0].group
        data = await self._send_raw(group, line, optable.TAG_BY_CLASS[type(plan.request)])
        if data is None:
            return unreachable(group, self._why(group)).encode()
        return data

    def _why(self, group: str) -> str:
        return "no leader known" if self.directory.leaders.get(group) is None else "unreachable"

    async def _send_raw(self, group: str, line: bytes, op: str) -> bytes | None:
        addr = self.directory.leaders.get(group)
        if addr is None:
            self.directory.leader_lost()
            return None
        self.metrics.requests.labels(op, group).inc()
        try:
            return await self.pools.exchange(addr, line)
        except GroupUnavailableError:
            self.directory.leader_lost()
            return None

    async def _send(self, group: str, obj: JsonObject, op: str) -> Reply:
        data = await self._send_raw(group, _encode(obj), op)
        if data is None:
            return unreachable(group, self._why(group))
        return Reply.decode(data.rstrip())

    async def _parts(
        self, plan: fanout.Plan | ConsumePlan, op: str, parts: Sequence[_Sendable] | None = None
    ) -> list[Reply]:
        chosen: list[_Sendable] = list(plan.parts if parts is None else parts)
        replies: list[Reply | None] = [None] * len(chosen)

        async def one(index: int, group: str, obj: JsonObject) -> None:
            replies[index] = await self._send(group, obj, op)

        async with trio.open_nursery() as nursery:
            for index, part in enumerate(chosen):
                nursery.start_soon(one, index, part.group, part.request)
        return [reply for reply in replies if reply is not None]

    async def _series_lists(self, obj: JsonObject, groups: Sequence[str]) -> dict[str, list[str]]:
        probe: JsonObject = {"v": 2, "op": "tree.list"}
        if "token" in obj:
            probe["token"] = obj["token"]
        lists: dict[str, list[str]] = {}
        for group in groups:
            reply = await self._send(group, probe, "tree.list")
            names = reply.response if reply.success else []
            lists[group] = [str(n) for n in names] if isinstance(names, list) else []
        return lists

    async def _consume(self, plan: ConsumePlan) -> Reply:
        held = await self._parts(plan, "limit.reserve")
        settlement = plan.settle(held)
        op = "limit.commit" if settlement.committing else "limit.void"
        settled = await self._parts(plan, op, settlement.parts)
        return plan.finish(settlement, settled)

    def topology(self) -> dict[str, object]:
        shardmap = self.directory.shardmap
        leaders = self.directory.leaders
        return {
            "ha": False,
            "role": "router",
            "cluster": self.cluster,
            "shardmap": None if shardmap is None else shardmap.to_wire(),
            "groups": {
                group: None if leaders.get(group) is None else {"addr": leaders[group]}
                for group in (shardmap.groups() if shardmap is not None else [])
            },
        }

    # --- one client connection ------------------------------------------------------------
    async def serve_client(self, stream: trio.SocketStream) -> None:
        buffer = LineBuffer(self.max_request_bytes)
        try:
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return
                out = [await self.answer(line) for line in buffer.feed(data)]
                if buffer.too_large:
                    error = KarmaError(
                        ErrorCode.REQUEST_TOO_LARGE,
                        f"Request exceeds {self.max_request_bytes} bytes",
                    )
                    self.metrics.errors.labels(str(error.code)).inc()
                    out.append(envelope.encode_error(error))
                if out:
                    await stream.send_all(b"".join(out))
                if buffer.too_large:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return


def _object(line: bytes) -> JsonObject:
    found = _generic.decode(line)
    assert isinstance(found, dict)  # decode() accepted the line: it is an object
    return found


_encode = msgspec.json.Encoder().encode


def _no_map(cluster: str) -> KarmaError:
    return KarmaError(
        ErrorCode.NOT_LEADER, f"The router has no shard map for cluster {cluster} yet; retry later"
    )


# --- /metrics and /healthz ------------------------------------------------------------------
async def _http(router: Router, stream: trio.SocketStream) -> None:
    head = b""
    with trio.move_on_after(5):
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    parts = head.split(b"\r\n", 1)[0].split()
    path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
    if path == b"/metrics":
        status, kind, body = (
            b"200 OK",
            CONTENT_TYPE_LATEST.encode(),
            exposition(router.metrics.registry),
        )
    elif path == b"/healthz":
        directory = router.directory
        if directory.shardmap is None:
            status, body = b"503 Service Unavailable", b"no shard map yet\n"
        else:
            missing = [g for g in directory.shardmap.groups() if directory.leaders.get(g) is None]
            text = "ok" if not missing else "ok; no leader for " + ", ".join(missing)
            status, body = b"200 OK", text.encode() + b"\n"
        kind = b"text/plain"
    else:
        status, kind, body = b"404 Not Found", b"text/plain", b"try /metrics /healthz\n"
    reply = (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + kind
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    try:
        with trio.move_on_after(5):
            await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# --- the process ----------------------------------------------------------------------------
@attrs.frozen
class Settings:
    etcd: tuple[str, ...]
    cluster: str
    bind: str = "127.0.0.1"
    port: int = 8080
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0
    timeout_s: float = EXCHANGE_TIMEOUT_S
    max_request_bytes: int = _MAX_REQUEST_BYTES
    auth_token: str | None = None
    read_auth_token: str | None = None
    log: bool = True


async def serve(
    settings: Settings,
    log: Logger,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    etcd = EtcdClient(settings.etcd)
    directory = Directory(etcd, settings.cluster, log)
    pools = Pools(settings.timeout_s)
    gate = Gate(settings.auth_token, settings.read_auth_token)
    router = Router(directory, pools, Metrics(), settings.cluster, settings.max_request_bytes, gate)
    failures = AcceptFailures(Counters(), log)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(directory.run)
            listeners = await listen(settings.bind, settings.port, "--bind/--port")
            port = listeners[0].socket.getsockname()[1]
            if settings.metrics_port:
                metric_listeners = await listen(
                    settings.metrics_bind, settings.metrics_port, "--metrics-port"
                )
                nursery.start_soon(
                    serve_listeners, partial(_http, router), metric_listeners, nursery, failures
                )
            log.info("router.started", bind=settings.bind, port=port, cluster=settings.cluster)
            task_status.started(port)
            await serve_listeners(router.serve_client, listeners, nursery, failures)
    finally:
        with trio.CancelScope(shield=True):
            await pools.aclose()
            await etcd.aclose()


def parse(argv: Sequence[str]) -> Settings:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="karma-trio router",
        description="Route the v2 protocol to the groups of a sharded cluster (docs/cluster.md).",
    )
    parser.add_argument(
        "--etcd", default=env.get("KARMA_ETCD", ""), help="etcd URLs, comma-separated"
    )
    parser.add_argument("--cluster", default=env.get("KARMA_CLUSTER", ""), help="the cluster name")
    parser.add_argument("--bind", default=env.get("KARMA_ROUTER_BIND", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("KARMA_ROUTER_PORT", "8080")))
    parser.add_argument("--metrics-bind", default="127.0.0.1")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics and /healthz here (0: off)"
    )
    parser.add_argument(
        "--group-timeout-s",
        type=float,
        default=EXCHANGE_TIMEOUT_S,
        help="how long a group may take to answer one part before it counts as unavailable",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=_MAX_REQUEST_BYTES,
        help="the longest request line, as the groups' own --max-request-bytes",
    )
    parser.add_argument(
        "--auth-token",
        default=env.get("KARMA_AUTH_TOKEN"),
        help="the groups' --auth-token, for what the router answers itself (optional)",
    )
    parser.add_argument(
        "--read-auth-token",
        default=env.get("KARMA_READ_AUTH_TOKEN"),
        help="the groups' --read-auth-token (optional)",
    )
    parser.add_argument("--log", default="true", choices=["true", "false"])
    args = parser.parse_args(list(argv))
    if not args.etcd or not args.cluster:
        parser.error("--etcd and --cluster are required")
    return Settings(
        etcd=tuple(etcd_urls(args.etcd)),
        cluster=args.cluster,
        bind=args.bind,
        port=args.port,
        metrics_bind=args.metrics_bind,
        metrics_port=args.metrics_port,
        timeout_s=args.group_timeout_s,
        max_request_bytes=args.max_request_bytes,
        auth_token=args.auth_token or None,
        read_auth_token=args.read_auth_token or None,
        log=args.log == "true",
    )


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    log = Logger(enabled=settings.log)
    try:
        trio.run(partial(serve, settings, log))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        sys.stderr.write(f"karma-trio router: cannot start: {exc}\n")
        return 3
    return 0
