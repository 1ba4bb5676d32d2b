"""The blocking client: thread-safe, a bounded pool of persistent connections."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from karma.client import calls, limit_calls, seeds
from karma.client.call import Call, backoff
from karma.client.cluster import ClusterUrl, parse_any_url
from karma.client.cluster_sync import ClusterRouting
from karma.client.errors import ConnectionFailed, KarmaError
from karma.client.reservations import Reservation
from karma.client.seeds import Address, Search, Seeds, SeedStatistics, Topology
from karma.client.verbs import Queues, Sends
from karma.client.wire import (
    Answer,
    decode_answers,
    encode_call,
    is_quiet,
    is_tls_quiet,
    read_answer,
    results,
    tls_context,
)
from karma.cluster.directory import View

T = TypeVar("T")


class _Connection:
    def __init__(
        self, address: Address, connect_timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.address = address
        sock = socket.create_connection(address, timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:  # the handshake, under connect_timeout: a refused certificate fails here
                sock = tls.wrap_socket(sock, server_hostname=address[0])
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buffer = b""
        #: Only a connection whose every answer was read, none of them one after which the
        #: server hangs up, may carry another request. False while an exchange is under way,
        #: so a timeout or an interrupt half-way leaves it False: the next answer read from it
        #: could belong to the call that gave up.
        self.reusable = True

    def quiet(self) -> bool:
        """An idle connection the server closed (restart, idle timeout) reads as EOF."""
        self.sock.settimeout(0)
        if isinstance(self.sock, ssl.SSLSocket):
            return is_tls_quiet(self.sock)
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

    `seeds=[(host, port), ...]` (several hosts in the URL) is an HA group: every call goes to
    the leader, found through `cluster.topology`; a retry-safe call that meets `not_leader` or a
    lost connection is sent once more to the leader found within `failover_timeout` seconds
    (see `karma.client.seeds`). `host` and `port` are then the first seed's.

    Cluster mode: `Client("karma+etcd://e1:2379,e2:2379/CLUSTER")` (or `karma+seeds://…`, or any
    URL as the first argument) routes each call by the shard map to the groups' leaders, one
    pool per leader, the parts of a fanned-out call sent concurrently (docs/client.md).
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
        #: TLS (`karmas://`, `tls=True`, or a CA or certificate file): the context connections
        #: are wrapped in; server names are checked
        self.tls = tls_context(tls, ca_file, cert_file, key_file)
        self.connect_timeout, self.timeout, self.retries = connect_timeout, timeout, retries
        self.failover_timeout = failover_timeout
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        #: one thread at a time looks for the leader; the others then use what it found
        self._searching = threading.Lock()
        self.pool_size = pool_size
        self._cluster = (
            None
            if cluster is None
            else ClusterRouting(cluster, token, self._group_client, timeout, self._ask_seed)
        )

    def _group_client(self, address: Address) -> Client:
        return Client(
            address[0],
            address[1],
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            pool_size=self.pool_size,
            tls=self.tls or False,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Client:
        return cls(**{**parse_any_url(url), **options})

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """From `KARMA_URL` (default `karma://127.0.0.1:8080`)."""
        return cls.from_url(os.environ.get("KARMA_URL", "karma://127.0.0.1:8080"), **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def statistics(self) -> SeedStatistics:
        """With seeds: the leader calls go to, the highest term seen, the failover retries."""
        if self._seeds is None:
            return SeedStatistics((self.host, self.port), 0, 0)
        return self._seeds.statistics()

    # --- the machinery -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self, address: Address) -> Iterator[_Connection]:
        if not self._slots.acquire(timeout=self.connect_timeout + self.timeout):
            raise ConnectionFailed("no free connection in the pool")
        try:
            connection = self._checkout(address)
            try:
                yield connection
            finally:
                if connection.reusable:
                    self._idle.put(connection)
                else:
                    connection.close()
        finally:
            self._slots.release()

    def _checkout(self, address: Address) -> _Connection:
        while True:
            try:
                candidate = self._idle.get_nowait()
            except queue.Empty:
                return self._connect(address)
            if candidate.address == address and candidate.quiet():
                return candidate
            candidate.close()  # closed by the server, or to a former leader

    def _connect(self, address: Address) -> _Connection:
        try:
            return _Connection(address, self.connect_timeout, self.tls)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {_text(address)}: {exc}") from exc

    def _exchange(self, queued: Sequence[Call[Any]]) -> list[Answer]:
        """Send `queued` in one write to the host (or leader), read their answers."""
        address, generation = self._target()
        data = b"".join(self._encode(call) for call in queued)  # after the target: its term
        try:
            with self._connection(address) as connection:
                try:
                    decoded = connection.exchange(data, len(queued), self.timeout)
                except OSError as exc:
                    reason = str(exc) or "timed out"
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

    def run(self, call: Call[T], *, retries: int | None = None) -> T:
        """Send one Call (see karma.client.call), retrying as configured."""
        budget = self.retries if retries is None else retries
        if self._cluster is not None:
            return self._run_in_cluster(self._cluster, call, budget)
        # with seeds there is always the failover retry: keyable writes get a key up front
        call = call.keyed_for(budget if self._seeds is None else max(budget, 1))
        attempt = 0
        failed_over = False
        while True:
            try:
                return read_answer(call, self._exchange([call])[0])
            except KarmaError as exc:
                if not failed_over and call.retry_safe and self._fail_over(exc):
                    failed_over = True
                    continue
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                time.sleep(backoff(attempt))

    def _run_in_cluster(self, routing: ClusterRouting, call: Call[T], budget: int) -> T:
        """As `run`, by the map: a call that met a lost or refusing group leader is sent once
        more when the leaders read again name another; keyable writes are always keyed, so a
        split write resent makes the same parts with the same keys."""
        call = call.keyed_for(max(budget, 1))
        attempt = 0
        failed_over = False
        while True:
            try:
                return routing.run(call)
            except KarmaError as exc:
                if not failed_over and call.retry_safe and seeds.fails_over(exc):
                    failed_over = True
                    before = routing.view().leaders
                    if routing.refresh().leaders != before:
                        continue
                if not exc.retriable or attempt >= budget or not call.retry_safe:
                    raise
                attempt += 1
                time.sleep(backoff(attempt))

    @property
    def clustered(self) -> bool:
        """True in cluster mode (a `karma+etcd://` or `karma+seeds://` URL)."""
        return self._cluster is not None

    def answer(self, call: Call[Any]) -> Answer:
        """One call's answer envelope, unread and not retried (in cluster mode: the answer
        merged as one node would give it). For tools that show answers as they came."""
        if self._cluster is not None:
            return self._cluster.answer(call)
        return self._exchange([call])[0]

    def cluster_view(self) -> View | None:
        """Cluster mode: the shard map and leaders calls are routed by (None otherwise)."""
        return None if self._cluster is None else self._cluster.view()

    def _ask_seed(self, address: Address) -> Answer | None:
        """`cluster.topology` from `address` on a connection of its own; None if no answer."""
        try:
            connection = _Connection(address, self.connect_timeout)
        except OSError:
            return None
        try:
            return connection.exchange(encode_call(calls.topology(), self.token), 1, self.timeout)[
                0
            ]
        except (OSError, KarmaError):
            return None
        finally:
            connection.close()

    # --- the leader of a seed list --------------------------------------------------------------
    def _target(self) -> tuple[Address, int]:
        """Where calls go: the one host, or the leader (looked for first when not known); and
        the generation of that choice."""
        if self._seeds is None:
            return (self.host, self.port), 0
        with self._searching:
            leader = self._seeds.leader
            if leader is None:
                search = self._search(self._seeds.candidates())
                # when no node says it is the master (a failover under way, or a group left
                # read-only), calls go to the first that answered: reads work, writes do not
                leader = search.found or search.answered
                if leader is None:
                    listed = ", ".join(map(_text, self._seeds.addresses))
                    raise ConnectionFailed(f"no seed answered cluster.topology: {listed}")
                self._seeds.elect(leader)
            return leader, self._seeds.generation

    def _fail_over(self, exc: KarmaError) -> bool:
        """After `exc` (the leader is forgotten by then): True when a leader was found within
        `failover_timeout` seconds, for the call to be sent there once more."""
        if self._seeds is None or not seeds.fails_over(exc):
            return False
        with self._searching:
            if self._seeds.leader is None:  # else another call found it since
                deadline = time.monotonic() + self.failover_timeout
                found = self._search(self._seeds.candidates(seeds.hint(exc))).found
                while found is None and time.monotonic() < deadline:
                    time.sleep(seeds.POLL_S)
                    found = self._search(self._seeds.candidates(seeds.hint(exc))).found
                if found is None:
                    return False
                self._seeds.elect(found)
            self._seeds.failovers += 1
            return True

    def _search(self, candidates: list[Address]) -> Search:
        search = Search(candidates)
        for address in search:
            search.heard(address, self._ask(address))
        return search

    def _ask(self, address: Address) -> Topology | None:
        """`cluster.topology` from `address` on a connection of its own; None if no answer."""
        try:
            connection = _Connection(address, self.connect_timeout, self.tls)
        except OSError:
            return None
        try:
            request = encode_call(calls.topology(), self.token)
            answers = connection.exchange(request, 1, self.timeout)
        except (OSError, KarmaError):
            return None
        finally:
            connection.close()
        topology = seeds.read_topology(answers[0])
        if topology is not None and self._seeds is not None:
            self._seeds.saw_term(topology.term)
        return topology

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
        routing = self.client._cluster
        if routing is not None:
            # by the map, one call after another (each may fan out); nothing is retried
            return results(queued, [routing.answer(call) for call in queued])
        return results(queued, self.client._exchange(queued))


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
