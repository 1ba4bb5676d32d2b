"""The async client, for trio and asyncio alike (through anyio): the Client API as coroutines."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
import anyio.abc

from karma.client import calls, limit_calls
from karma.client.calls import Call
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.reservations import AsyncReservation
from karma.client.verbs import Queues, SendsAsync
from karma.client.wire import (
    Answer,
    decode_answers,
    encode_call,
    is_quiet,
    parse_url,
    read_answer,
    results,
)

T = TypeVar("T")
#: What a broken or closed stream raises, under either backend.
BROKEN = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Connection:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        #: As in the sync client: False while an exchange is under way, so a timeout or a
        #: cancellation half-way (or an answer after which the server hangs up) retires it.
        self.reusable = True

    def quiet(self) -> bool:
        """An idle connection the server closed reads as EOF; peeked without awaiting, since a
        zero timeout would cancel a trio read before it even looked."""
        raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        # asyncio hands out a TransportSocket, which has no recv: peek through a socket object
        # borrowed on the same descriptor (detached after, so the descriptor stays open)
        borrowed = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.fileno())
        try:
            borrowed.setblocking(False)  # as it is already; and no socket.setdefaulttimeout wait
            return is_quiet(borrowed)
        finally:
            borrowed.detach()

    async def exchange(self, data: bytes, answers: int) -> list[Answer]:
        """Send `data`, read up to `answers` answers; fewer only when the server hung up."""
        self.reusable = False
        failed: BaseException | None = None
        try:
            await self.stream.send(data)
        except BROKEN as exc:
            # refused and closed before reading all of it (request_too_large): read the answer
            failed = exc
        lines = await self._read_lines(answers)
        if not lines:
            raise failed or anyio.EndOfStream()
        decoded = decode_answers(lines)
        self.reusable = len(decoded) == answers and not any(
            answer.closes_connection for answer in decoded
        )
        return decoded

    async def _read_lines(self, wanted: int) -> list[bytes]:
        lines: list[bytes] = []
        while len(lines) < wanted:
            while b"\n" not in self.buffer:
                try:
                    self.buffer += await self.stream.receive(1 << 16)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                    return lines  # closed: no more answers will come
            line, self.buffer = self.buffer.split(b"\n", 1)
            lines.append(line)
        return lines

    async def aclose(self) -> None:
        # shielded: a cancelled task must still let go of its socket
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()


class AsyncClient(SendsAsync):
    """karma-trio from trio or asyncio tasks; the same methods as `Client`, awaited."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        pool_size: int = 8,
        retries: int = 0,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.connect_timeout, self.timeout, self.retries = connect_timeout, timeout, retries
        self._idle: list[_Connection] = []
        self._slots = anyio.Semaphore(pool_size)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncClient:
        return cls(**{**parse_url(url), **options})

    @classmethod
    def from_env(cls, **options: Any) -> AsyncClient:
        """From `KARMA_URL` (default `karma://127.0.0.1:8080`)."""
        return cls.from_url(os.environ.get("KARMA_URL", "karma://127.0.0.1:8080"), **options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        async with self._slots:
            connection = await self._checkout()
            try:
                yield connection
            finally:
                if connection.reusable:
                    self._idle.append(connection)
                else:
                    await connection.aclose()

    async def _checkout(self) -> _Connection:
        while self._idle:
            candidate = self._idle.pop()
            if candidate.quiet():
                return candidate
            await candidate.aclose()
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _Connection(stream)

    async def exchange(self, data: bytes, answers: int) -> list[Answer]:
        async with self._connection() as connection:
            try:
                with anyio.fail_after(self.timeout):
                    return await connection.exchange(data, answers)
            except (*BROKEN, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise ConnectionFailed(f"{self.host}:{self.port}: {reason}") from exc

    async def run(self, call: Call[T], *, retries: int | None = None) -> T:
        """Send one Call (see karma.client.calls), retrying as configured."""
        budget = self.retries if retries is None else retries
        call = call.keyed_for(budget)
        attempt = 0
        while True:
            try:
                answers = await self.exchange(encode_call(call, self.token), 1)
                return read_answer(call, answers[0])
            except KarmaError as exc:
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                await anyio.sleep(calls.backoff(attempt))

    _take = run

    async def reserve(self, *args: Any, **kwargs: Any) -> AsyncReservation:
        """`limit.reserve` as an async context manager: commits `actual` when the block ends,
        voids the hold if it raises."""
        return AsyncReservation(await self.run(limit_calls.reserve(*args, **kwargs)), self)

    def pipeline(self) -> AsyncPipeline:
        return AsyncPipeline(self)


class AsyncPipeline(Queues):
    """`async with client.pipeline() as p:` queue calls, then `await p.execute()`.

    Every method of `AsyncClient` is here too, not awaited: it queues its call and returns
    the pipeline.
    """

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.calls.clear()

    async def execute(self) -> list[Any]:
        """One result per queued call, in order; a refused call's place holds its KarmaError."""
        queued, self.calls = self.calls, []
        if not queued:
            return []
        data = b"".join(encode_call(call, self.client.token) for call in queued)
        return results(queued, await self.client.exchange(data, len(queued)))
