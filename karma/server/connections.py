"""One task per client connection: stream ⇄ LineBuffer ⇄ Node (through TLS on the TLS port).

All the lines of one read are handled in order and their answers leave in one write. Writes
are queued on the WAL writer without waiting — keyed writes and limit decisions too — so a
pipelined burst of writes shares one WAL batch (and one fsync); a read that follows them waits
for them first, so it sees them. The wait belongs to the answer, not to the reading.

Backpressure: nothing more is read from a client while its answers wait to be sent, and the
answers of one read are sent in slices of about `flush_bytes`, each sent before the next is
built. A client that pipelines large reads and never reads its answers holds at most about two
slices (plus the kernel's socket buffer), not one answer per request it sent.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from karma.config import Config
from karma.core.engine import WRITES
from karma.errors import ErrorCode, KarmaError
from karma.protocol import envelope
from karma.protocol.framing import LineBuffer
from karma.server.answers import Acknowledgement, Busy, Waiting
from karma.server.node import Node
from karma.server.tls_channel import TlsChannel
from karma.tls import Reloadable

RECEIVE_BYTES = 65536

Send = Callable[[bytes], Awaitable[None]]


def flush_bytes(config: Config) -> int:
    """Answers built for one read are sent once they pass this size, before more are built.

    One answer may be as large as --max-response-bytes (1 MiB unless disabled), so a slice
    smaller than that would not bound anything; a slice smaller than a read would split the
    common pipelined burst of small answers into several sends.
    """
    return max(config.max_response_bytes or 1 << 20, RECEIVE_BYTES)


@attrs.define(eq=False)
class Connection:
    scope: trio.CancelScope
    idle: bool = True


@attrs.define(eq=False)
class Drain:
    """Open connections, so a shutdown can close idle ones at once and let busy ones finish."""

    open: set[Connection] = attrs.field(factory=set)
    closing: bool = False

    def close_idle(self) -> None:
        self.closing = True
        for connection in self.open:
            if connection.idle:
                connection.scope.cancel()


async def serve_connection(
    node: Node, drain: Drain, stream: trio.SocketStream, tls: ssl.SSLContext | None = None
) -> None:
    # The plain socket under the stream, driven with wait_readable/wait_writable: trio's
    # socket methods cost a scheduler round trip after every successful send and two context
    # managers per call, more than the rest of a small request (cProfile under kbench). Here
    # a request costs one trip: the wait for its bytes. With `tls`, the same loop reads and
    # sends through a TlsChannel on that socket (every byte on the wire is a TLS record).
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)
    config = node.context.config
    if not config.nodelay:  # trio turns TCP_NODELAY on by default
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, False)
    channel = None if tls is None else TlsChannel(raw, tls)
    recv = raw.recv if channel is None else channel.recv
    buffer = LineBuffer(config.max_request_bytes)
    read_timeout = config.read_timeout or math.inf
    write_timeout = config.write_timeout or math.inf
    line_timeout = config.request_line_timeout or math.inf
    limit = flush_bytes(config)
    # One cancel scope for the connection's life; its deadline is aimed only before a wait
    # (for a request, or for room to send), and moved only when it has fallen behind by more
    # than a tenth of the timeout: idle clients go after 90-100 % of --read-timeout.
    with trio.CancelScope() as deadline:
        if channel is None:
            send = partial(_send, raw, deadline, write_timeout)
        else:
            send = partial(_send_tls, channel, deadline, write_timeout)
        connection = Connection(deadline)
        drain.open.add(connection)
        try:
            if channel is not None:
                # under --read-timeout: a client that never completes it goes like an idle one
                _extend(deadline, trio.current_time(), read_timeout)
                await channel.handshake()
            waited = True
            # Reads that held exactly one request, in a row: from the second on, the client is
            # taken to wait for each answer (one request in flight), and the next read goes
            # straight to waiting instead of trying a `recv` that would almost surely fail
            # (EAGAIN: a syscall and an exception, ~10 % of a small request). A pipelining
            # client rarely sends lone requests twice running, so it keeps the eager `recv`.
            singles = 0
            # When the request line begun in `buffer` must be complete. Every byte restarts
            # the read timeout, so a client trickling one byte at a time (slowloris) would
            # never be cut without a deadline for the whole line. Its clock starts at the
            # first wait for the rest of the line: time spent answering earlier lines, or
            # waiting for the client to read them, is not held against it.
            line_due = math.inf
            while not drain.closing:
                data: bytes | None = None
                if singles < 2 or (channel is not None and channel.buffered()):
                    try:
                        data = recv(RECEIVE_BYTES)
                    except BlockingIOError:
                        pass
                if data is None:
                    now = trio.current_time()
                    if buffer.pending:
                        if line_due == math.inf:
                            line_due = now + line_timeout
                        deadline.deadline = min(line_due, now + read_timeout)
                    else:
                        _extend(deadline, now, read_timeout)
                    connection.idle = True
                    await trio.lowlevel.wait_readable(raw)
                    connection.idle = False
                    waited = True
                    try:
                        data = recv(RECEIVE_BYTES)
                    except BlockingIOError:
                        continue  # woken without bytes after all (or part of a TLS record)
                if not data:
                    return
                if not waited:
                    # bytes were already there: a pipelining client must not starve the others
                    await trio.lowlevel.checkpoint()
                waited = False
                lines = buffer.feed(data)
                if lines or not buffer.pending:
                    line_due = math.inf  # that line is complete; the next one's clock is not
                singles = singles + 1 if len(lines) == 1 else 0
                out = await answer_all(node, lines, deadline, send, limit)
                if buffer.too_large:
                    out.append(_too_large(node))
                if out:
                    # inline rather than `await send(...)`: most answers leave in this one call
                    payload = out[0] if len(out) == 1 else b"".join(out)
                    if channel is not None:
                        if not channel.send(payload):
                            _extend(deadline, trio.current_time(), write_timeout)
                            await channel.flush()
                            waited = True
                    else:
                        sent = _send_some(raw, payload)
                        if sent < len(payload):
                            _extend(deadline, trio.current_time(), write_timeout)
                            await _send_rest(raw, payload, sent)
                            waited = True
                if buffer.too_large:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            drain.open.discard(connection)
            trio.lowlevel.notify_closing(raw)
            raw.close()


def _too_large(node: Node) -> bytes:
    """The answer to a request line longer than --max-request-bytes (the connection closes)."""
    config = node.context.config
    error = KarmaError(
        ErrorCode.REQUEST_TOO_LARGE, f"Request exceeds {config.max_request_bytes} bytes"
    )
    counters = node.context.engine.counters
    counters.record(0.0, failed=True)
    counters.record_error(str(ErrorCode.REQUEST_TOO_LARGE), "-")
    return envelope.encode_error(error)


async def serve_tls_connection(
    node: Node, drain: Drain, contexts: Reloadable, stream: trio.SocketStream
) -> None:
    """A client of the TLS port: served with the server context of the moment (a SIGHUP
    reload changes what the next connection gets, never an open one's). A client that speaks
    plaintext, or fails the certificate check, is closed without an answer: there is no channel
    to answer on (a refused handshake's alert is sent when the socket takes it)."""
    await serve_connection(node, drain, stream, contexts.current)


async def _send_tls(
    channel: TlsChannel, deadline: trio.CancelScope, write_timeout: float, payload: bytes
) -> None:
    """`_send` through TLS."""
    if not channel.send(payload):
        _extend(deadline, trio.current_time(), write_timeout)
        await channel.flush()


async def _send(
    raw: socket.socket, deadline: trio.CancelScope, write_timeout: float, payload: bytes
) -> None:
    """Send all of `payload`, waiting for room if need be (under --write-timeout)."""
    sent = _send_some(raw, payload)
    if sent < len(payload):
        _extend(deadline, trio.current_time(), write_timeout)
        await _send_rest(raw, payload, sent)


def _send_some(raw: socket.socket, payload: bytes) -> int:
    try:
        return raw.send(payload)
    except BlockingIOError:
        return 0


async def _send_rest(raw: socket.socket, payload: bytes, sent: int) -> None:
    """The client reads slower than we answer: wait for room (under --write-timeout)."""
    view = memoryview(payload)[sent:]
    while view:
        await trio.lowlevel.wait_writable(raw)
        try:
            view = view[raw.send(view) :]
        except BlockingIOError:
            continue


def _extend(scope: trio.CancelScope, now: float, timeout: float) -> None:
    """Aim the deadline at now + timeout, unless it is already within a tenth of that."""
    wanted = now + timeout
    current = scope.deadline
    if current == wanted or abs(current - wanted) <= min(1.0, timeout / 10):
        return  # close enough (inf == inf lands here too)
    scope.deadline = wanted


async def answer_all(
    node: Node,
    lines: list[bytes],
    deadline: trio.CancelScope | None = None,
    send: Send | None = None,
    limit: int = 0,
) -> list[bytes]:
    """Answers to `lines`, in order; writes in between reads share WAL batches.

    Before anything that waits for a write (its WAL batch, an fsync), the connection's deadline
    is lifted: a client waiting for durability is not idle. With `send`, answers are sent as
    soon as they pass `limit` bytes, and the rest are built only once those have left: the
    answers of one read (a 64 KiB read can ask for a thousand 1 MB answers) are never all in
    memory at once. The answers not sent yet are returned.
    """
    answers: list[bytes | Waiting | Acknowledgement] = []
    built = 0  # bytes in `answers` (queued writes' answers are small and not counted)
    last_write: Waiting | None = None
    # a store write of this connection is among those waiting: a limit decision, which counts
    # pending limit effects by itself, waits for it as a read would
    stored = False
    fenced = node.context.fence is not None  # HA: write answers are checked again as they leave
    for line in lines:
        request = node.decode(line)
        answer: bytes | Waiting
        if isinstance(request, bytes):
            answer = request
        elif node.needs_await(request):
            _unbound(deadline)
            if last_write is not None:
                await last_write.pending.done.wait()
                last_write, stored = None, False
            answer = await node.handle_async(request)
        else:
            write = type(request) in WRITES
            if last_write is not None and not write and (stored or not node.decides(request)):
                # read-your-writes: the writer finishes batches in queue order, so the last
                # queued write being done means every earlier one is
                _unbound(deadline)
                await last_write.pending.done.wait()
                last_write, stored = None, False
            answer = node.handle(request)
            if isinstance(answer, Waiting):
                if not answer.behind:
                    last_write = answer  # the newest write submitted, or a later one
                    stored = stored or write
                elif isinstance(answer, Busy):
                    # its reservation id is being settled: decided again after it, in order
                    _unbound(deadline)
                    if last_write is not None:
                        await last_write.pending.done.wait()
                        last_write, stored = None, False
                    answer = await node.settle(request)
                elif last_write is None:
                    # a copy of a key in flight answers from an older write; any later write
                    # of this connection is the one to wait for
                    last_write = answer
                if isinstance(answer, Waiting):
                    answers.append(answer)
                    continue
        built += len(answer)
        if fenced and not isinstance(request, bytes) and node.acknowledges(request):
            answers.append(Acknowledgement(node.books, answer))
        else:
            answers.append(answer)
        if send is not None and built > limit:
            if last_write is not None:
                _unbound(deadline)
                await last_write.pending.done.wait()
                last_write = None
            await send(b"".join(_resolved(answers)))
            answers, built = [], 0
    if last_write is not None:
        _unbound(deadline)
        await last_write.pending.done.wait()
    return _resolved(answers)


def _resolved(answers: list[bytes | Waiting | Acknowledgement]) -> list[bytes]:
    """The answers as they leave now. Every Waiting among them must be done (the last queued
    write is); a write's answer is checked against the HA fence here, right before the send."""
    return [a if isinstance(a, bytes) else a.answer() for a in answers]


def _unbound(scope: trio.CancelScope | None) -> None:
    if scope is not None and scope.deadline != math.inf:
        scope.deadline = math.inf
