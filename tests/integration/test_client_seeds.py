"""The client's seed list against scripted nodes on loopback: which node gets each call, the one
failover retry, and the terms on the wire. (Real HA groups: tests/process/test_client_failover.py.)
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from karma import client as k
from karma.client.call import READ_OPS


@attrs.define(eq=False)
class Node:
    """Answers `cluster.topology` with `role`, `leader` and `term`; takes writes only when
    `accepts`, else answers not_leader naming `leader`; records every request."""

    role: str = "replica"
    accepts: bool = False
    leader: str | None = None
    term: int = 1
    #: the top-level `term` on successful answers (None: a server that does not send it)
    answer_term: int | None = None
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    server: socketserver.ThreadingTCPServer | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["op"] not in READ_OPS]

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if request["op"] == "cluster.topology":
            leader = None if self.leader is None else {"node": "n", "addr": self.leader}
            topology = {"ha": True, "role": self.role, "leader": leader, "term": self.term}
            return {"success": True, "response": topology}
        if request["op"] in READ_OPS or self.accepts:
            answer: dict[str, Any] = {"success": True, "response": 1}
            if self.answer_term is not None and "term" in request:
                answer["term"] = self.answer_term
            return answer
        where = f"the leader is {self.leader}" if self.leader else "no leader is known yet"
        return {
            "success": False,
            "error_code": "not_leader",
            "response": f"Not the leader: {where}; retry there",
        }

    def start(self) -> Node:
        node = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    answer = node.answer(json.loads(line))
                    self.wfile.write(json.dumps({"protocol_version": 2, **answer}).encode())
                    self.wfile.write(b"\r\n")

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started = [Node().start() for _ in range(3)]
    yield started
    for node in started:
        node.stop()


def client(nodes: list[Node], **options: Any) -> k.Client:
    return k.Client(seeds=[("127.0.0.1", n.port) for n in nodes], **options)


def test_calls_go_to_the_node_that_says_it_is_the_master(nodes: list[Node]) -> None:
    replica, master, other = nodes
    master.role, master.accepts = "master", True
    with client(nodes) as karma:
        assert karma.increment("s", 1) == 1
        assert karma.sum("s", 1) == 1
        assert karma.statistics().leader == ("127.0.0.1", master.port)
    assert [r["op"] for r in replica.requests] == ["cluster.topology"]
    assert [r["op"] for r in master.requests] == [
        "cluster.topology",
        "counter.increment",
        "counter.sum",
    ]
    assert other.requests == []  # the search stops at the master


def test_a_replica_that_names_a_leader_outside_the_seeds_leads_there(nodes: list[Node]) -> None:
    replica, _, outside = nodes
    replica.leader = outside.addr
    outside.role, outside.accepts = "master", True
    with k.Client.from_url(f"karma://127.0.0.1:{replica.port},127.0.0.1:1") as karma:
        assert karma.increment("s", 1) == 1
    assert len(outside.writes()) == 1


def test_a_write_refused_with_not_leader_is_sent_once_more_with_its_key(
    nodes: list[Node],
) -> None:
    stale, new, _ = nodes
    stale.role, stale.leader = "master", new.addr  # said master, then lost the lease
    new.role, new.accepts = "master", True
    with client(nodes) as karma:
        assert karma.increment("s", 1) == 1  # no key given, no retries asked: one generated
        stats = karma.statistics()
    [refused], [taken] = stale.writes(), new.writes()
    assert refused["idempotency_key"] == taken["idempotency_key"]
    assert stats.failovers == 1
    assert stats.leader == ("127.0.0.1", new.port)


def test_a_second_not_leader_is_raised_the_retry_is_only_one(nodes: list[Node]) -> None:
    for node in nodes:
        node.role = "master"  # every node claims it, none takes writes
    nodes[0].leader = nodes[0].addr
    with client(nodes) as karma, pytest.raises(k.NotLeader):
        karma.increment("s", 1, idempotency_key="once")
    assert sum(len(n.writes()) for n in nodes) == 2


def test_a_write_that_takes_no_key_is_not_retried(nodes: list[Node]) -> None:
    stale, new, _ = nodes
    stale.role, stale.leader = "master", new.addr
    new.role, new.accepts = "master", True
    with client(nodes) as karma:
        with pytest.raises(k.NotLeader):
            karma.tree_create("s")
        assert karma.statistics().leader is None  # the next call looks again
        stale.role = "replica"
        assert karma.tree_create("s") == 1
    assert (len(stale.writes()), len(new.writes())) == (1, 1)


def test_no_leader_within_the_failover_timeout_raises_the_refusal(nodes: list[Node]) -> None:
    nodes[0].role = "master"  # refuses writes; then no node says it is the master
    with client(nodes, failover_timeout=0.5) as karma:
        karma.ping()
        nodes[0].role = "replica"
        started = time.monotonic()
        with pytest.raises(k.NotLeader):
            karma.increment("s", 1)
        assert 0.5 <= time.monotonic() - started < 3
        nodes[2].role, nodes[2].accepts = "master", True
        assert karma.increment("s", 1) == 1  # the next call finds it


def test_writes_carry_the_highest_term_seen_and_only_with_seeds(nodes: list[Node]) -> None:
    master = nodes[0]
    master.role, master.accepts, master.term, master.answer_term = "master", True, 5, 7
    with client(nodes) as karma:
        karma.increment("s", 1)
        karma.increment("s", 1)
        karma.sum("s", 1)
        assert karma.statistics().term == 7
    first, second, read = master.requests[1:]
    assert (first["term"], second["term"], "term" in read) == (5, 7, False)
    with k.Client(port=master.port) as single:
        single.increment("s", 1)  # karma 1.0 compatible: no term, no generated key
    assert "term" not in master.requests[-1]
    assert "idempotency_key" not in master.requests[-1]


def test_a_pipeline_goes_to_the_leader_and_carries_the_term(nodes: list[Node]) -> None:
    master = nodes[1]
    master.role, master.accepts, master.term = "master", True, 3
    with client(nodes) as karma, karma.pipeline() as pipe:
        assert pipe.increment("s", 1).sum("s", 1).execute() == [1, 1]
    assert [r.get("term") for r in master.requests[1:]] == [3, None]


async def test_the_async_client_fails_over_the_same_way(nodes: list[Node]) -> None:
    stale, new, _ = nodes
    stale.role, stale.leader = "master", new.addr
    new.role, new.accepts, new.term = "master", True, 2
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    async with k.AsyncClient.from_url(f"karma://tok@{seeds}") as karma:
        assert await karma.increment("s", 1) == 1
        stats = karma.statistics()
    [refused], [taken] = stale.writes(), new.writes()
    assert refused["idempotency_key"] == taken["idempotency_key"]
    assert (taken["token"], taken["term"]) == ("tok", 2)
    assert (stats.failovers, stats.term) == (1, 2)
