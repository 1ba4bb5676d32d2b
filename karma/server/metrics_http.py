"""The metrics port: `GET /metrics` for Prometheus, and probes for orchestrators and proxies.

- `/healthz`: 200 while the process runs (a liveness probe: restart me if this fails);
- `/readyz`: 200 once restored and listening, while the data directory takes writes, and on a
  replica while it is caught up within --ready-max-lag-entries; else 503 with the reason;
- `/primary`: 200 only on a writable master (HAProxy's `option httpchk GET /primary` sends
  writes, and unchanged karma 1.0 clients, to the right node).

Scrapes run on the event-loop thread, between requests, so counters are read while nothing
changes them. A tiny HTTP/1.1 responder is enough: Prometheus sends one GET per connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from karma.core import report
from karma.core.counters import NodeStatus
from karma.ha.fence import Fence
from karma.observability.logs import Logger
from karma.observability.metrics import exposition
from karma.server.accept import AcceptFailures, listen, serve_listeners
from karma.tls import Reloadable

MAX_HEADER_BYTES = 16384


@attrs.frozen
class Probes:
    status: NodeStatus
    max_lag_entries: int
    #: HA: /primary also needs the leader lease, before its deadline
    fence: Fence | None = None

    def not_ready(self) -> str | None:
        return report.readiness(self.status, self.max_lag_entries)

    def primary(self) -> bool:
        if self.fence is not None and not self.fence.may_ack():
            return False
        return report.writable_primary(self.status, self.max_lag_entries)


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    log: Logger,
    failures: AcceptFailures,
    probes: Probes,
    contexts: Reloadable | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await listen(host, port, "--metrics-bind/--metrics-port")
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics.started", bind=host, port=bound)
    task_status.started(bound)
    answer = partial(_answer, registry, probes)
    handler = answer if contexts is None else partial(_answer_tls, contexts, answer)
    async with trio.open_nursery() as scrapes:
        await serve_listeners(handler, listeners, scrapes, failures)


async def _answer_tls(
    contexts: Reloadable,
    answer: Callable[[trio.abc.Stream], Awaitable[None]],
    stream: trio.SocketStream,
) -> None:
    """With --tls-cert the probes and /metrics are https, with the client port's certificate
    but no client certificate asked even with --tls-ca: kubelet's https probes cannot send
    one. Keep the port on a private address (--metrics-bind) or behind a network policy."""
    tls = trio.SSLStream(stream, contexts.without_client_certs, server_side=True)
    try:
        with trio.fail_after(5):
            await tls.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError):
        return  # not TLS, a refused certificate, or too slow: nothing to answer on
    await answer(tls)


async def _answer(registry: CollectorRegistry, probes: Probes, stream: trio.abc.Stream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in head and len(head) < MAX_HEADER_BYTES:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        request_line = head.split(b"\r\n", 1)[0].split()
        path = request_line[1].split(b"?", 1)[0] if len(request_line) >= 2 else b""
        if len(request_line) < 2 or request_line[0] not in (b"GET", b"HEAD"):
            await _send(stream, b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n")
        elif path in _PROBES:
            ok, text = _PROBES[path](probes)
            status = b"200 OK" if ok else b"503 Service Unavailable"
            await _send(stream, status, b"text/plain", text.encode() + b"\n")
        elif path != b"/metrics":
            await _send(
                stream, b"404 Not Found", b"text/plain", b"try /metrics /healthz /readyz /primary\n"
            )
        else:
            body = exposition(registry)
            await _send(
                stream,
                b"200 OK",
                CONTENT_TYPE_LATEST.encode(),
                b"" if request_line[0] == b"HEAD" else body,
                len(body),
            )


async def _send(
    stream: trio.abc.Stream,
    status: bytes,
    content_type: bytes,
    body: bytes,
    length: int | None = None,
) -> None:
    head = (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body) if length is None else length).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    try:
        with trio.move_on_after(5):
            await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _healthz(probes: Probes) -> tuple[bool, str]:
    return True, "ok"


def _readyz(probes: Probes) -> tuple[bool, str]:
    reason = probes.not_ready()
    return reason is None, reason or "ready"


def _primary(probes: Probes) -> tuple[bool, str]:
    if probes.primary():
        return True, "primary"
    fenced = " or fenced" if probes.fence is not None else ""
    return False, f"not a writable primary (role {probes.status.role}{fenced})"


_PROBES = {b"/healthz": _healthz, b"/readyz": _readyz, b"/primary": _primary}
