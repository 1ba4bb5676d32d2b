"""The blocking client: thread-safe, a bounded pool of persistent connections."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from karma.client import calls, limit_calls
from karma.client.calls import Call
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.reservations import Reservation
from karma.client.verbs import Queues, Sends
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


class _Connection:
    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        #: Only a connection whose every answer was read, none of them one after which the
        #: server hangs up, may carry another request. False while an exchange is under way,
        #: so a timeout or an interrupt half-way leaves it False: the next answer read from it
        #: could belong to the call that gave up.
        self.reusable = True

    def quiet(self) -> bool:
        """An idle connection the server closed (restart, idle timeout) reads as EOF."""
        self.sock.settimeout(0)
        return is_quiet(self.sock)

    def exchange(self, data: bytes, answers: int, timeout: float) -> list[Answer]:
        """Send `data`, read up to `answers` answers.

        Fewer come back only when the server closed the connection after answering them.
        Raises OSError when no answer came at all, or when the time ran out.
        """
        self.reusable = False
        self.sock.settimeout(timeout)
        failed: OSError | None = None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            # The server may have refused the request and hung up before reading all of it
            # (request_too_large); its answer is still there to read.
            failed = exc
        lines = self._read_lines(answers)
        if not lines:
            raise failed or ConnectionError("the server closed the connection")
        decoded = decode_answers(lines)
        self.reusable = len(decoded) == answers and not any(
            answer.closes_connection for answer in decoded
        )
        return decoded

    def _read_lines(self, wanted: int) -> list[bytes]:
        lines: list[bytes] = []
        while len(lines) < wanted:
            while b"\n" not in self.buffer:
                try:
                    chunk = self.sock.recv(1 << 16)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return lines  # closed: no more answers will come
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            lines.append(line)
        return lines

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Client(Sends):
    """A karma-trio client for threads. Every method is one request, answered or raised.

    `retries=N` retries calls that are safe to repeat (reads, and writes carrying an
    idempotency key) after a connection failure; an eligible write made with retries gets an
    idempotency key generated *before* its first attempt, so a retry after a lost answer is
    never counted twice. The methods (one per op, plus the domain verbs) are listed once in
    `karma.client.verbs`.
    """

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
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Client:
        return cls(**{**parse_url(url), **options})

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """From `KARMA_URL` (default `karma://127.0.0.1:8080`)."""
        return cls.from_url(os.environ.get("KARMA_URL", "karma://127.0.0.1:8080"), **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    # --- the machinery -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self) -> Iterator[_Connection]:
        if not self._slots.acquire(timeout=self.connect_timeout + self.timeout):
            raise ConnectionFailed("no free connection in the pool")
        try:
            connection = self._checkout()
            try:
                yield connection
            finally:
                if connection.reusable:
                    self._idle.put(connection)
                else:
                    connection.close()
        finally:
            self._slots.release()

    def _checkout(self) -> _Connection:
        while True:
            try:
                candidate = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if candidate.quiet():
                return candidate
            candidate.close()

    def _connect(self) -> _Connection:
        try:
            return _Connection(self.host, self.port, self.connect_timeout)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    def _exchange(self, data: bytes, answers: int) -> list[Answer]:
        with self._connection() as connection:
            try:
                return connection.exchange(data, answers, self.timeout)
            except OSError as exc:
                reason = str(exc) or "timed out"
                raise ConnectionFailed(f"{self.host}:{self.port}: {reason}") from exc

    def run(self, call: Call[T], *, retries: int | None = None) -> T:
        """Send one Call (see karma.client.calls), retrying as configured."""
        budget = self.retries if retries is None else retries
        call = call.keyed_for(budget)
        attempt = 0
        while True:
            try:
                return read_answer(call, self._exchange(encode_call(call, self.token), 1)[0])
            except KarmaError as exc:
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                time.sleep(calls.backoff(attempt))

    _take = run

    def reserve(self, *args: Any, **kwargs: Any) -> Reservation:
        """`limit.reserve` (see `karma.client.limit_calls.reserve`), as a context manager that
        commits `actual` when its block ends and voids the hold if the block raises."""
        return Reservation(self.run(limit_calls.reserve(*args, **kwargs)), self)

    def pipeline(self) -> Pipeline:
        return Pipeline(self)


class Pipeline(Queues):
    """Many calls in one write, answers read in order: `with client.pipeline() as p: ...`.

    Every method of `Client` is here too; it queues its call and returns the pipeline.
    """

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def execute(self) -> list[Any]:
        """One result per queued call, in order; a refused call's place holds its KarmaError."""
        queued, self.calls = self.calls, []
        if not queued:
            return []
        data = b"".join(encode_call(call, self.client.token) for call in queued)
        return results(queued, self.client._exchange(data, len(queued)))
