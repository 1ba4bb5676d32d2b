"""The link to a master: one persistent connection speaking protocol v2, and its errors.

A replica's follower polls and bootstraps through it (karma.server.follower_task); HA asks
members their role and LSN through it (karma.server.roles). An error answer becomes an
exception: a gap (`GapError`), any other refusal (`RejectedError`, with its code).
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import attrs
import trio

from karma.errors import ErrorCode


class ReplicationError(Exception):
    """The master could not be reached, refused, or answered something unusable."""


class RejectedError(ReplicationError):
    """The master answered with an error code (other than a gap)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class GapError(ReplicationError):
    """The master no longer has the entries after our LSN: bootstrap again."""


@attrs.define(eq=False)
class MasterLink:
    """One persistent connection to the master, reopened after any failure."""

    host: str
    port: int
    token: str | None
    timeout_s: float
    #: set: the link speaks TLS (karma.tls.link_context), checking the master's name
    tls: ssl.SSLContext | None = None
    _stream: trio.abc.Stream | None = None
    _buffer: bytes = b""

    async def call(self, op: str, **fields: Any) -> Any:
        request: dict[str, Any] = {"v": 2, "op": op, **fields}
        if self.token is not None:
            request["token"] = self.token
        try:
            with trio.fail_after(self.timeout_s):
                if self._stream is None:
                    self._stream = await self._open()
                    self._buffer = b""
                await self._stream.send_all(json.dumps(request).encode() + b"\n")
                line = await self._line()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            await self.close()
            cause = exc.__cause__  # a refused handshake: the ssl error says what was refused
            reason = str(cause if isinstance(cause, ssl.SSLError) else exc) or type(exc).__name__
            raise ReplicationError(f"master {self.host}:{self.port}: {reason}") from exc
        answer = json.loads(line)
        if not answer.get("success"):
            if answer.get("error_code") == ErrorCode.REPLICATION_GAP:
                raise GapError(str(answer.get("response")))
            raise RejectedError(
                f"Master rejected {op}: {answer.get('response')}", str(answer.get("error_code"))
            )
        return answer["response"]

    async def _open(self) -> trio.abc.Stream:
        if self.tls is None:
            return await trio.open_tcp_stream(self.host, self.port)
        stream = await trio.open_ssl_over_tcp_stream(self.host, self.port, ssl_context=self.tls)
        await stream.do_handshake()  # a refused certificate fails here, named, not mid-request
        return stream

    async def _line(self) -> bytes:
        assert self._stream is not None
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(1 << 20)
            if not chunk:
                raise OSError("Master closed connection without response")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def close(self) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
