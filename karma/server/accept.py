"""The accept loop: `trio.serve_listeners`' shape, with running out of resources handled here.

When accept(2) fails for lack of descriptors or memory, trio's own loop logs a traceback on the
`trio.serve_listeners` logger every 0.1 s while it retries: ~270 plain-text lines on stderr in
3 s, next to our JSON lines. Here each failure is counted (karma_accept_errors_total) and logged
as one JSON line at most every LOG_EVERY_SECONDS; the loop retries just as trio's does, so
clients waiting in the kernel's backlog are accepted as soon as descriptors free up.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import attrs
import trio

from karma.core.counters import Counters
from karma.observability.logs import Logger

#: accept(2) errors that mean "the process or system is out of something", not "this client":
#: trio's list (ACCEPT_CAPACITY_ERRNOS); other errors still end the server loudly.
OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: trio's retry pause: short enough that clients barely notice once descriptors free up.
RETRY_SECONDS: Final = 0.1
#: At most one log line this often, however accepts fail (each failure is still counted): not
#: reset by a successful accept, so a server at its limit, where accepts fail and succeed in
#: turn as clients come and go, still writes one line per period.
LOG_EVERY_SECONDS: Final = 5.0

Handler = Callable[[trio.SocketStream], Awaitable[object]]


async def listen(host: str, port: int, flag: str) -> list[trio.SocketListener]:
    """Listeners on host:port; an OSError that names the address and the option to change.

    Startup failures (a port in use, a name that does not resolve) reach the operator as this
    one line, not as the nursery's exception group.
    """
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({flag}): {reason}") from exc


@attrs.define(eq=False)
class AcceptFailures:
    """Counts failed accepts and decides when they are worth a log line."""

    counters: Counters
    log: Logger
    _unlogged: int = 0  # failures since the last line
    _logged_at: float = -math.inf

    def failed(self, exc: OSError, now: float) -> None:
        self.counters.accept_error_count += 1
        self._unlogged += 1
        if now - self._logged_at < LOG_EVERY_SECONDS:
            return
        code = exc.errno or 0
        self.log.error(
            "accept.failed",
            errno=errno.errorcode.get(code, str(code)),
            reason=os.strerror(code),
            failures=self._unlogged,
            retry_seconds=RETRY_SECONDS,
        )
        self._unlogged = 0
        self._logged_at = now


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.SocketListener],
    handler_nursery: trio.Nursery,
    failures: AcceptFailures,
) -> NoReturn:
    """Accept on every listener until cancelled; each client runs in `handler_nursery`."""
    async with trio.open_nursery() as accepting:
        for listener in listeners:
            accepting.start_soon(_accept_forever, handler, listener, handler_nursery, failures)
    raise AssertionError("accept loops end only by cancellation")  # pragma: no cover


async def _accept_forever(
    handler: Handler,
    listener: trio.SocketListener,
    handler_nursery: trio.Nursery,
    failures: AcceptFailures,
) -> NoReturn:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                failures.failed(exc, trio.current_time())
                await trio.sleep(RETRY_SECONDS)
                continue
            handler_nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(handler: Handler, stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)
