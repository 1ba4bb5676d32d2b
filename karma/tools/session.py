"""A connection for the operator tools: one request at a time, each answer kept as the line the
server sent, and the tools' exit codes.

The tools print answers exactly as they came (`--json`) and name error codes the client library
may not know yet, so they exchange lines themselves; where to connect comes from the client's
own URL handling (`KARMA_URL`, `karma://[token@]host:port`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
from enum import IntEnum
from typing import Any

import attrs

from karma.client import Call, Client, KarmaError
from karma.cluster.reply import Reply


class Exit(IntEnum):
    """Exit codes of `cli`, `check` and `backup` (docs/operations.md)."""

    OK = 0
    REFUSED = 1  # the server answered an error, or the data directory has a problem
    USAGE = 2  # bad arguments: nothing was sent, nothing was read
    UNREACHABLE = 3  # cannot connect, the connection broke, or no answer in time


class UnreachableError(Exception):
    """No answer: the server cannot be reached, closed the connection or did not answer in
    time. A write sent just before may or may not have been applied."""


@attrs.frozen
class Address:
    host: str
    port: int
    token: str | None
    #: a cluster URL (`karma+etcd://…`, `karma+seeds://…`): requests go by the shard map
    cluster: str | None = None
    #: `karmas://`: the TLS context (the client's own), else None
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str | None) -> Address:
        """`url`, or `KARMA_URL`, or the client's default; ValueError for a bad URL."""
        client = Client.from_env() if url is None else Client.from_url(url)
        text = url if url is not None else os.environ.get("KARMA_URL", "")
        cluster = text if client.clustered else None
        return cls(client.host, client.port, client.token, cluster, client.tls)

    def __str__(self) -> str:
        return self.cluster or f"{self.host}:{self.port}"


@attrs.frozen
class Answer:
    line: str  # as the server sent it, without the line end
    success: bool
    response: object
    error_code: str | None
    idempotent: bool


def read_answer(line: bytes) -> Answer:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    try:
        envelope = json.loads(text)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("success"), bool):
        raise UnreachableError(f"not a karma answer: {text[:200]!r}")
    code = envelope.get("error_code")
    return Answer(
        text,
        envelope["success"],
        envelope.get("response"),
        code if isinstance(code, str) else None,
        envelope.get("idempotent") is True,
    )


@attrs.define
class Session:
    """Connects on first use and again after the server closed an idle connection (it does
    after `--read-timeout`); a request is never sent twice."""

    address: Address
    timeout: float
    _sock: socket.socket | None = None
    _buffer: bytes = b""
    _cluster: Client | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, fields: dict[str, Any]) -> Answer:
        """Send `fields` as one request (`v: 2` and the URL's token added unless given)."""
        request: dict[str, Any] = {"v": 2, **fields}
        if self.address.token is not None:
            request.setdefault("token", self.address.token)
        if self.address.cluster is not None:
            return self._routed(request)
        line = json.dumps(request, ensure_ascii=False).encode() + b"\n"
        try:
            sock = self._connected()
            sock.sendall(line)
            return read_answer(self._read_line(sock))
        except OSError as exc:
            self.close()
            reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise UnreachableError(f"{self.address}: {reason or type(exc).__name__}") from exc

    def _routed(self, request: dict[str, Any]) -> Answer:
        """By the shard map, through the client's cluster mode; the line shown is the merged
        answer as one node would have sent it."""
        if self._cluster is None:
            assert self.address.cluster is not None
            self._cluster = Client(self.address.cluster, timeout=self.timeout)
        fields = {k: v for k, v in request.items() if k not in ("v", "op", "token")}
        call: Call[object] = Call(str(request.get("op", "")), fields, lambda raw: raw)
        try:
            got = self._cluster.answer(call)
        except KarmaError as exc:
            raise UnreachableError(f"{self.address}: {exc.message}") from exc
        response = json.loads(bytes(got.response))
        reply = Reply(got.success, response, got.error_code, got.idempotent)
        return read_answer(reply.encode().rstrip())

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:  # nothing is owed to us, so this is the server closing an idle line
                self.close()
        if self._sock is None:
            sock = socket.create_connection(
                (self.address.host, self.address.port), timeout=self.timeout
            )
            if self.address.tls is not None:
                try:
                    sock = self.address.tls.wrap_socket(sock, server_hostname=self.address.host)
                except BaseException:
                    sock.close()
                    raise
            self._sock = sock
            self._buffer = b""
        return self._sock

    def _read_line(self, sock: socket.socket) -> bytes:
        while b"\n" not in self._buffer:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection without answering")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
