"""The async client, for trio and asyncio alike (through anyio): the Client API as coroutines."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute

from karma.client import calls, limit_calls, seeds
from karma.client.call import Call, backoff
from karma.client.cluster import ClusterUrl, parse_any_url
from karma.client.cluster_aio import AsyncClusterRouting
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.reservations import AsyncReservation
from karma.client.seeds import Address, Search, Seeds, SeedStatistics, Topology
from karma.client.verbs import Queues, SendsAsync
from karma.client.wire import (
    Answer,
    decode_answers,
    encode_call,
    is_quiet,
    read_answer,
    results,
    tls_context,
)
from karma.cluster.directory import View

T = TypeVar("T")
#: What a broken or closed stream raises, under either backend.
BROKEN = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Connection:
    def __init__(self, address: Address, stream: anyio.abc.ByteStream) -> None:
        self.address = address
        self.stream = stream
        self.buffer = b""
        #: As in the sync client: False while an exchange is under way, so a timeout or a
        #: cancellation half-way (or an answer after which the server hangs up) retires it.
        self.reusable = True

    def quiet(self) -> bool:
        """An idle connection the server closed reads as EOF; peeked without awaiting, since a
        zero timeout would cancel a trio read before it even looked."""
        tls = self.stream.extra(TLSAttribute.ssl_object, None)
        if tls is not None and tls.pending():
            return False  # decrypted bytes nobody asked for
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
    """karma-trio from trio or asyncio tasks; the same methods as `Client`, awaited (seed
    lists, the failover retry and cluster mode included)."""

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
        seeds: Sequence[tuple[str, int]] | None = None,
        failover_timeout: float = 15.0,
        cluster: ClusterUrl | None = None,
        tls: bool | ssl.SSLContext = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        if "://" in host:
            parsed = parse_any_url(host)
            host, port = parsed.get("host", "127.0.0.1"), parsed.get("port", port)
            token = token if token is not None else parsed.get("token")
            seeds = parsed.get("seeds", seeds)
            cluster = parsed.get("cluster", cluster)
            tls = parsed.get("tls", tls)
            ca_file = parsed.get("ca_file", ca_file)
            cert_file = parsed.get("cert_file", cert_file)
            key_file = parsed.get("key_file", key_file)
        self._seeds = None if seeds is None else Seeds.of(seeds)
        if self._seeds is not None:
            host, port = self._seeds.addresses[0]
        self.host, self.port, self.token = host, port, token
        #: as in `Client`: the TLS context connections are wrapped in, or None
        self.tls = tls_context(tls, ca_file, cert_file, key_file)
        self.connect_timeout, self.timeout, self.retries = connect_timeout, timeout, retries
        self.failover_timeout = failover_timeout
        self._idle: list[_Connection] = []
        self._slots = anyio.Semaphore(pool_size)
        #: one task at a time looks for the leader; the others then use what it found
        self._searching = anyio.Lock()
        self.pool_size = pool_size
        self._cluster = (
            None
            if cluster is None
            else AsyncClusterRouting(cluster, token, self._group_client, timeout, self._ask_seed)
        )

    def _group_client(self, address: Address) -> AsyncClient:
        return AsyncClient(
            address[0],
            address[1],
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            pool_size=self.pool_size,
            tls=self.tls or False,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncClient:
        return cls(**{**parse_any_url(url), **options})

    @classmethod
    def from_env(cls, **options: Any) -> AsyncClient:
        """From `KARMA_URL` (default `karma://127.0.0.1:8080`)."""
        return cls.from_url(os.environ.get("KARMA_URL", "karma://127.0.0.1:8080"), **options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    def statistics(self) -> SeedStatistics:
        """With seeds: the leader calls go to, the highest term seen, the failover retries."""
        if self._seeds is None:
            return SeedStatistics((self.host, self.port), 0, 0)
        return self._seeds.statistics()

    @contextlib.asynccontextmanager
    async def _connection(self, address: Address) -> AsyncIterator[_Connection]:
        async with self._slots:
            connection = await self._checkout(address)
            try:
                yield connection
            finally:
                if connection.reusable:
                    self._idle.append(connection)
                else:
                    await connection.aclose()

    async def _checkout(self, address: Address) -> _Connection:
        while self._idle:
            candidate = self._idle.pop()
            if candidate.address == address and candidate.quiet():
                return candidate
            await candidate.aclose()  # closed by the server, or to a former leader
        return await self._connect(address)

    async def _connect(self, address: Address) -> _Connection:
        try:
            with anyio.fail_after(self.connect_timeout):
                stream: anyio.abc.ByteStream
                if self.tls is None:
                    stream = await anyio.connect_tcp(*address)
                else:  # the handshake too, under connect_timeout
                    stream = await anyio.connect_tcp(
                        *address,
                        ssl_context=self.tls,
                        tls_hostname=address[0],
                        tls_standard_compatible=False,
                    )
        except (OSError, TimeoutError, anyio.BrokenResourceError) as exc:
            raise ConnectionFailed(f"cannot connect to {_text(address)}: {exc}") from exc
        return _Connection(address, stream)

    async def exchange(self, queued: Sequence[Call[Any]]) -> list[Answer]:
        """Send `queued` in one write to the host (or leader), read their answers."""
        address, generation = await self._target()
        data = b"".join(self._encode(call) for call in queued)  # after the target: its term
        try:
            async with self._connection(address) as connection:
                try:
                    with anyio.fail_after(self.timeout):
                        decoded = await connection.exchange(data, len(queued))
                except (*BROKEN, TimeoutError) as exc:
                    reason = str(exc) or type(exc).__name__
                    raise ConnectionFailed(f"{_text(address)}: {reason}") from exc
        except ConnectionFailed:
            if self._seeds is not None:
                self._seeds.forget(generation)
            raise
        if self._seeds is not None:
            self._seeds.heard(generation, decoded)
        return decoded

    def _encode(self, call: Call[Any]) -> bytes:
        term = None if self._seeds is None else self._seeds.term_for(call)
        return encode_call(call, self.token, term)

    async def run(self, call: Call[T], *, retries: int | None = None) -> T:
        """Send one Call (see karma.client.call), retrying as configured."""
        budget = self.retries if retries is None else retries
        if self._cluster is not None:
            return await self._run_in_cluster(self._cluster, call, budget)
        # with seeds there is always the failover retry: keyable writes get a key up front
        call = call.keyed_for(budget if self._seeds is None else max(budget, 1))
        attempt = 0
        failed_over = False
        while True:
            try:
                answers = await self.exchange([call])
                return read_answer(call, answers[0])
            except KarmaError as exc:
                if not failed_over and call.retry_safe and await self._fail_over(exc):
                    failed_over = True
                    continue
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                await anyio.sleep(backoff(attempt))

    async def _run_in_cluster(self, routing: AsyncClusterRouting, call: Call[T], budget: int) -> T:
        """As `Client._run_in_cluster`."""
        call = call.keyed_for(max(budget, 1))
        attempt = 0
        failed_over = False
        while True:
            try:
                return await routing.run(call)
            except KarmaError as exc:
                if not failed_over and call.retry_safe and seeds.fails_over(exc):
                    failed_over = True
                    before = (await routing.view()).leaders
                    if (await routing.refresh()).leaders != before:
                        continue
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                await anyio.sleep(backoff(attempt))

    async def cluster_view(self) -> View | None:
        """Cluster mode: the shard map and leaders calls are routed by (None otherwise)."""
        return None if self._cluster is None else await self._cluster.view()

    async def _ask_seed(self, address: Address) -> Answer | None:
        try:
            connection = await self._connect(address)
        except ConnectionFailed:
            return None
        try:
            with anyio.fail_after(self.timeout):
                request = encode_call(calls.topology(), self.token)
                return (await connection.exchange(request, 1))[0]
        except (*BROKEN, TimeoutError, KarmaError):
            return None
        finally:
            await connection.aclose()

    # --- the leader of a seed list (as in Client) ----------------------------------------------
    async def _target(self) -> tuple[Address, int]:
        if self._seeds is None:
            return (self.host, self.port), 0
        async with self._searching:
            leader = self._seeds.leader
            if leader is None:
                search = await self._search(self._seeds.candidates())
                leader = search.found or search.answered
                if leader is None:
                    listed = ", ".join(map(_text, self._seeds.addresses))
                    raise ConnectionFailed(f"no seed answered cluster.topology: {listed}")
                self._seeds.elect(leader)
            return leader, self._seeds.generation

    async def _fail_over(self, exc: KarmaError) -> bool:
        if self._seeds is None or not seeds.fails_over(exc):
            return False
        async with self._searching:
            if self._seeds.leader is None:  # else another task found it since
                with anyio.move_on_after(self.failover_timeout):
                    while True:
                        found = (await self._search(self._seeds.candidates(seeds.hint(exc)))).found
                        if found is not None:
                            self._seeds.elect(found)
                            break
                        await anyio.sleep(seeds.POLL_S)
                if self._seeds.leader is None:
                    return False
            self._seeds.failovers += 1
            return True

    async def _search(self, candidates: list[Address]) -> Search:
        search = Search(candidates)
        for address in search:
            search.heard(address, await self._ask(address))
        return search

    async def _ask(self, address: Address) -> Topology | None:
        try:
            connection = await self._connect(address)
        except ConnectionFailed:
            return None
        try:
            with anyio.fail_after(self.timeout):
                answers = await connection.exchange(encode_call(calls.topology(), self.token), 1)
        except (*BROKEN, TimeoutError, KarmaError):
            return None
        finally:
            await connection.aclose()
        topology = seeds.read_topology(answers[0])
        if topology is not None and self._seeds is not None:
            self._seeds.saw_term(topology.term)
        return topology

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
        routing = self.client._cluster
        if routing is not None:
            return results(queued, [await routing.answer(call) for call in queued])
        return results(queued, await self.client.exchange(queued))


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
