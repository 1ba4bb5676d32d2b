"""Many connections racing for the last units of a limit, against a real server process.

Decisions are made one at a time, each counting the effects decided before it that are still
on their way to disk (spec/limits.md §5): however the requests interleave, the limit holds.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "race"
KEY = 1
MAX = 100
DAY = {"calendar": "day"}
CONNECTIONS = 32
DENIALS_TO_STOP = 3  # each connection stops after this many denials


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=true")
    yield server
    server.close()


class Racer(threading.Thread):
    """One connection: runs `step` until it has been denied DENIALS_TO_STOP times.

    Every answer is kept; a failure (an error answer, an assertion) is kept in `error` and
    ends the thread, so the test can report it."""

    def __init__(self, port: int, name: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.tag = port, name
        self.rng = random.Random(seed)
        self.answers: list[dict[str, Any]] = []
        self.committed = 0  # units recorded by this connection's commits
        self.denials = 0
        self.error: BaseException | None = None
        self.go = threading.Event()

    def run(self) -> None:
        client = Client(self.port)
        try:
            self.go.wait(timeout=10)
            n = 0
            while self.denials < DENIALS_TO_STOP:
                self.step(client, f"{self.tag}-{n}")
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            client.close()

    def step(self, client: Client, ident: str) -> None:
        raise NotImplementedError

    def decided(self, answer: dict[str, Any]) -> dict[str, Any]:
        assert answer["success"], answer
        response: dict[str, Any] = answer["response"]
        assert response["used"] + response["held"] <= MAX, response
        self.answers.append(response)
        if not response["allowed"]:
            self.denials += 1
        return response


class Consumer(Racer):
    """Consumes 1 at a time; every other request carries an idempotency key."""

    def step(self, client: Client, ident: str) -> None:
        keyed = {"idempotency_key": ident} if self.rng.random() < 0.5 else {}
        answer = client.call("limit.consume", series=S, key=KEY, max=MAX, window=DAY, **keyed)
        self.decided(answer)


class Reserver(Racer):
    """Holds 3 for 60 s, then commits 1 to 3 or voids, at random."""

    def step(self, client: Client, ident: str) -> None:
        answer = client.call(
            "limit.reserve", id=ident, series=S, key=KEY, value=3, max=MAX, window=DAY, ttl_s=60
        )
        if not self.decided(answer)["allowed"]:
            return
        if self.rng.random() < 0.25:
            settled = client.call("limit.void", id=ident)
            assert settled["response"] == {"id": ident, "status": "voided", "released": 3}
            return
        value = self.rng.randint(1, 3)
        settled = client.call("limit.commit", id=ident, value=value)
        assert settled["response"]["status"] == "committed", settled
        self.committed += value


class Checker(threading.Thread):
    """Reads the limit with value 0 until stopped: used + held never passes max."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.seen: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        client = Client(self.port)
        try:
            while not self.stop.is_set():
                answer = check(client)
                if answer["error_code"] == "not_found":
                    continue  # nothing decided yet
                response = answer["response"]
                self.seen.append((response["used"], response["held"]))
                assert response["used"] + response["held"] <= MAX, response
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            client.close()


def check(client: Client) -> dict[str, Any]:
    return client.call("limit.check", series=S, key=KEY, value=0, max=MAX, window=DAY)


def race(racers: list[Racer], checker: Checker) -> None:
    checker.start()
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.go.set()
    for racer in racers:
        racer.join(timeout=60)
    checker.stop.set()
    checker.join(timeout=10)
    for thread in racers:
        assert not thread.is_alive()
        if thread.error is not None:
            raise thread.error
    assert not checker.is_alive()
    if checker.error is not None:
        raise checker.error


@pytest.mark.parametrize("fsync", ["true", "false"])  # group commit / page-cache writes
def test_racing_consumes_allow_exactly_max(proc: Proc, fsync: str) -> None:
    proc.start(f"--wal-fsync={fsync}")
    seed = random.randrange(1 << 30)
    racers: list[Racer] = [Consumer(proc.port, f"c{i}", seed + i) for i in range(CONNECTIONS)]
    checker = Checker(proc.port)
    race(racers, checker)
    allowed = [a for racer in racers for a in racer.answers if a["allowed"]]
    denied = [a for racer in racers for a in racer.answers if not a["allowed"]]
    assert len(denied) == CONNECTIONS * DENIALS_TO_STOP, seed
    assert len(allowed) == MAX, seed
    # decided one at a time: the allowed answers saw every usage count from 1 to max once
    assert sorted(a["used"] for a in allowed) == list(range(1, MAX + 1)), seed
    assert all(a["used"] == MAX and a["retry_after_s"] is not None for a in denied), seed
    client = Client(proc.port)
    try:
        assert client.call("counter.sum", series=S, key=KEY)["response"] == MAX
        assert check(client)["response"]["used"] == MAX
    finally:
        client.close()
    print(f"race (fsync={fsync}): {len(allowed)} allowed, {len(denied)} denied, seed {seed}")


@pytest.mark.parametrize("fsync", ["true", "false"])
def test_racing_reservations_commits_and_consumes_never_pass_max(proc: Proc, fsync: str) -> None:
    """12 connections reserve 3 and commit 1-3 or void; 20 consume 1; one more reads. Usage is
    exactly the allowed consumes plus the committed amounts, and nothing stays held."""
    proc.start(f"--wal-fsync={fsync}")
    seed = random.randrange(1 << 30)
    racers: list[Racer] = [
        Reserver(proc.port, f"r{i}", seed + i) if i < 12 else Consumer(proc.port, f"c{i}", seed + i)
        for i in range(CONNECTIONS)
    ]
    checker = Checker(proc.port)
    race(racers, checker)
    consumed = sum(
        1 for racer in racers if isinstance(racer, Consumer) for a in racer.answers if a["allowed"]
    )
    committed = sum(racer.committed for racer in racers)
    holds = sum(
        1 for racer in racers if isinstance(racer, Reserver) for a in racer.answers if a["allowed"]
    )
    assert holds > 0, seed
    assert consumed > 0, seed
    client = Client(proc.port)
    try:
        total = client.call("counter.sum", series=S, key=KEY)["response"]
        assert total == consumed + committed <= MAX, seed
        final = check(client)["response"]
        assert (final["used"], final["held"]) == (total, 0), seed
        status = client.call("limit.status")["response"]
        assert status["open_reservations"] == 0, seed
    finally:
        client.close()
    print(
        f"race with holds (fsync={fsync}): {consumed} consumed, {holds} holds,"
        f" {committed} committed, {len(checker.seen)} checks, seed {seed}"
    )


@pytest.mark.parametrize("fsync", ["true", "false"])
def test_the_sweeper_never_expires_a_hold_that_a_commit_settled_first(
    proc: Proc, fsync: str
) -> None:
    """100 holds fall due together while the server is paused; on resuming, the sweeper works
    through them while their commits arrive from the last to the first. Each hold is settled
    once: a commit that met it overdue records committed_late, and no expiry is written over
    it afterwards (a retried commit would then count its usage again)."""
    proc.start(f"--wal-fsync={fsync}")
    holds = 100
    client = Client(proc.port)
    committers = [Client(proc.port) for _ in range(holds)]
    try:
        burst = b"".join(
            json.dumps(
                {
                    "v": 2,
                    "op": "limit.reserve",
                    "id": f"h{i}",
                    "series": S,
                    "key": KEY,
                    "value": 5,
                    "max": 10 * holds,
                    "window": DAY,
                    "ttl_s": 1,
                }
            ).encode()
            + b"\n"
            for i in range(holds)
        )
        client.sock.sendall(burst)
        assert all(client.reply()["response"]["status"] == "held" for _ in range(holds))
        proc.signal(signal.SIGSTOP)
        time.sleep(1.2)  # every hold falls due while the server cannot run its sweeper
        proc.signal(signal.SIGCONT)
        for i in reversed(range(holds)):
            line = json.dumps({"v": 2, "op": "limit.commit", "id": f"h{i}", "value": 2})
            committers[i].sock.sendall(line.encode() + b"\n")
            time.sleep(0.0005)  # spread over the sweeper's round
        answers = [committer.reply()["response"] for committer in committers]
        assert {a["status"] for a in answers} == {"committed_late"}
        time.sleep(1.2)  # the sweeper's next round: nothing is left to expire
        statuses = Counter(
            client.call("limit.reservation", id=f"h{i}")["response"]["status"] for i in range(holds)
        )
        assert statuses == {"committed_late": holds}
        for i in range(holds):
            again = client.call("limit.commit", id=f"h{i}", value=2)
            assert again["idempotent"] is True
        assert client.call("counter.sum", series=S, key=KEY)["response"] == 2 * holds
    finally:
        for each in (client, *committers):
            each.close()
