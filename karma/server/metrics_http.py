"""`GET /metrics` for Prometheus, served by a task of the main nursery.

Scrapes run on the event-loop thread, between requests, so counters are read while nothing
changes them. A tiny HTTP/1.1 responder is enough: Prometheus sends one GET per connection.
"""

from __future__ import annotations

from functools import partial

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from karma.observability.logs import Logger
from karma.observability.metrics import exposition
from karma.server.accept import AcceptFailures, listen, serve_listeners

MAX_HEADER_BYTES = 16384


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    log: Logger,
    failures: AcceptFailures,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await listen(host, port, "--metrics-bind/--metrics-port")
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics.started", bind=host, port=bound)
    task_status.started(bound)
    async with trio.open_nursery() as scrapes:
        await serve_listeners(partial(_answer, registry), listeners, scrapes, failures)


async def _answer(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in head and len(head) < MAX_HEADER_BYTES:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        request_line = head.split(b"\r\n", 1)[0].split()
        if len(request_line) < 2 or request_line[0] not in (b"GET", b"HEAD"):
            await _send(stream, b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n")
        elif request_line[1].split(b"?", 1)[0] != b"/metrics":
            await _send(stream, b"404 Not Found", b"text/plain", b"try /metrics\n")
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
    stream: trio.SocketStream,
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
