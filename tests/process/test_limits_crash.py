"""SIGKILL the real server while limits are being consumed, reserved, settled and snapshotted:
no acknowledged decision is lost or counted twice, and every retry replays its first answer."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.process.proc import Client, Proc

pytestmark = [pytest.mark.process, pytest.mark.crash]
CYCLES = int(os.environ.get("KARMA_LIMIT_CRASH_CYCLES", "10"))
CONSUMED = "api_requests"  # limit.consume only
RESERVED = "llm_tokens"  # limit.reserve, commit and void only
MONTH = {"calendar": "month"}
#: key 1 never fills; key 2 fills after 40, so keyed denials are logged and replayed too
CONSUME_MAX = {1: 10**9, 2: 40}
#: key 1 holds for 60 s and is committed, voided or left open; key 2 holds for 1 s and expires
HOLD_KEY, SHORT_KEY = 1, 2
SETTLED = {"committed", "committed_late", "voided", "expired"}


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=true")
    yield server
    server.close()


@attrs.define
class Sent:
    """A request as sent, and its first answer (None: the server died before answering)."""

    fields: dict[str, Any]
    answer: dict[str, Any] | None = None


@attrs.define
class Reservation:
    reserve: Sent
    settle: Sent | None = None  # a commit (with "value") or a void

    @property
    def id(self) -> str:
        hold_id: str = self.reserve.fields["id"]
        return hold_id

    @property
    def key(self) -> int:
        key: int = self.reserve.fields["key"]
        return key


@attrs.define
class History:
    consumes: dict[str, Sent] = attrs.field(factory=dict)
    reservations: dict[str, Reservation] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: requests whose first answer was lost to a kill, by op
    unanswered: dict[str, int] = attrs.field(factory=dict)


def call(client: Client, sent: Sent, op: str) -> dict[str, Any]:
    """Send, then keep the first answer; a refusal is a failure of the server."""
    answer = client.call(op, **sent.fields)
    assert answer["success"], (op, sent.fields, answer)
    sent.answer = answer
    return answer


class Worker(threading.Thread):
    def __init__(self, port: int, prefix: str, history: History, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.history = port, prefix, history
        self.rng = random.Random(rng.randrange(1 << 30))
        self.error: AssertionError | None = None

    def run(self) -> None:
        try:
            client = Client(self.port)
        except OSError:
            return
        try:
            for n in range(1_000_000):
                self.step(client, f"{self.prefix}-{n}")
        except (OSError, ConnectionError, ValueError):
            pass  # killed
        except AssertionError as exc:
            self.error = exc
        finally:
            client.close()

    def step(self, client: Client, ident: str) -> None:
        raise NotImplementedError


class Consumer(Worker):
    def step(self, client: Client, ident: str) -> None:
        key = self.rng.choice((1, 2))
        fields = {
            "series": CONSUMED,
            "key": key,
            "max": CONSUME_MAX[key],
            "window": MONTH,
            "idempotency_key": ident,
        }
        sent = Sent(fields)
        with self.history.lock:
            self.history.consumes[ident] = sent
        call(client, sent, "limit.consume")


class Reserver(Worker):
    """Reserves 3; a long hold is then committed (1-3), voided or left open, a short one is
    left to expire."""

    def step(self, client: Client, ident: str) -> None:
        short = self.rng.random() < 0.25
        fields = {
            "id": ident,
            "series": RESERVED,
            "key": SHORT_KEY if short else HOLD_KEY,
            "value": 3,
            "max": 10**9,
            "window": MONTH,
            "ttl_s": 1 if short else 60,
        }
        reservation = Reservation(Sent(fields))
        with self.history.lock:
            self.history.reservations[ident] = reservation
        answer = call(client, reservation.reserve, "limit.reserve")
        assert answer["response"]["status"] == "held", answer
        roll = self.rng.random()
        if short or roll < 0.2:
            return  # left open
        if roll < 0.7:
            reservation.settle = Sent({"id": ident, "value": self.rng.randint(1, 3)})
            call(client, reservation.settle, "limit.commit")
        else:
            reservation.settle = Sent({"id": ident})
            call(client, reservation.settle, "limit.void")


class Snapshots(threading.Thread):
    """`snapshot.create_all` back to back."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = 0

    def run(self) -> None:
        try:
            client = Client(self.port)
        except OSError:
            return
        try:
            while True:
                if client.call("snapshot.create_all")["success"]:
                    self.done += 1
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            client.close()


def pipelined(client: Client, requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Many requests on one connection, 200 lines per write, answers in order."""
    answers: list[dict[str, Any]] = []
    for start in range(0, len(requests), 200):
        part = requests[start : start + 200]
        data = b"".join(
            json.dumps({"v": 2, "op": op, **fields}).encode() + b"\n" for op, fields in part
        )
        client.sock.sendall(data)
        answers.extend(client.reply() for _ in part)
    return answers


def usage(client: Client, series: str, key: int) -> int:
    answer = client.call("counter.sum", series=series, key=key)
    if answer["error_code"] == "not_found":
        return 0  # nothing was ever added to this series
    total: int = answer["response"]
    return total


def allowed(sent: Sent) -> bool:
    assert sent.answer is not None
    return bool(sent.answer["response"]["allowed"])


def retry_all(client: Client, history: History, requests: list[tuple[str, Sent]]) -> None:
    """Send each again with its same payload: a known answer replays exactly (idempotent);
    an unknown one is the decision the server holds (or makes now), and becomes the answer."""
    answers = pipelined(client, [(op, sent.fields) for op, sent in requests])
    for (op, sent), again in zip(requests, answers, strict=True):
        assert again["success"], (op, sent.fields, again)
        if sent.answer is None:
            history.unanswered[op] = history.unanswered.get(op, 0) + 1
            sent.answer = again
        else:
            assert again == {**sent.answer, "idempotent": True}, (op, sent, again)


def check_consumes(client: Client, history: History, fresh: list[Sent]) -> None:
    """(a) Usage lies between the acknowledged allowed consumes and those plus every consume
    left unanswered; after retrying those sent last cycle, it is exactly the allowed ones."""
    for key in CONSUME_MAX:
        mine = [s for s in history.consumes.values() if s.fields["key"] == key]
        acked = sum(1 for s in mine if s.answer is not None and allowed(s))
        unanswered = sum(1 for s in mine if s.answer is None)
        assert acked <= usage(client, CONSUMED, key) <= acked + unanswered, key
    retry_all(client, history, [("limit.consume", sent) for sent in fresh])
    for key, maximum in CONSUME_MAX.items():
        mine = [s for s in history.consumes.values() if s.fields["key"] == key]
        assert usage(client, CONSUMED, key) == sum(1 for s in mine if allowed(s)) <= maximum


def status_of(client: Client, reservations: list[Reservation]) -> dict[str, dict[str, Any]]:
    answers = pipelined(client, [("limit.reservation", {"id": r.id}) for r in reservations])
    return {r.id: a["response"] for r, a in zip(reservations, answers, strict=True)}


def check_reservations(client: Client, history: History, fresh: list[Reservation]) -> None:
    """(b) An acknowledged hold is held, expired, committed or voided, never lost; an
    acknowledged settlement is what the server says; retries replay; usage is exactly the
    committed amounts (an expired hold adds nothing, a late commit adds once)."""
    statuses = status_of(client, fresh)
    for reservation in fresh:
        status = statuses[reservation.id]
        if reservation.reserve.answer is not None:
            assert isinstance(status, dict), (reservation, status)  # never not_found
            assert status["status"] in {"held", "overdue", *SETTLED}, (reservation, status)
        settle = reservation.settle
        if settle is None or settle.answer is None:
            continue
        told = settle.answer["response"]["status"]
        if told.startswith("committed"):
            assert status["status"].startswith("committed"), (reservation, status)
            assert status["answer"]["value"] == settle.fields["value"], (reservation, status)
        else:
            assert status["status"] == told, (reservation, status)
    retry_all(client, history, [("limit.reserve", r.reserve) for r in fresh])
    settles = [
        ("limit.commit" if "value" in r.settle.fields else "limit.void", r.settle)
        for r in fresh
        if r.settle is not None
    ]
    retry_all(client, history, settles)
    everything = list(history.reservations.values())
    statuses = status_of(client, everything)
    committed = {HOLD_KEY: 0, SHORT_KEY: 0}
    held = 0
    for reservation in everything:
        status = statuses[reservation.id]
        settle = reservation.settle
        if settle is not None:
            assert settle.answer is not None
            # every settlement sent is now known, and is the reservation's state
            told = settle.answer["response"]["status"]
            assert status["status"] == told, (reservation, status)
            if told.startswith("committed"):
                committed[reservation.key] += settle.fields["value"]
        else:
            assert status["status"] in {"held", "overdue", "expired"}, (reservation, status)
            held += 3 if status["status"] == "held" and reservation.key == HOLD_KEY else 0
    for key, amount in committed.items():
        assert usage(client, RESERVED, key) == amount, key
    check = client.call(
        "limit.check", series=RESERVED, key=HOLD_KEY, value=0, max=10**9, window=MONTH
    )
    if check["error_code"] == "not_found":  # no usage and no open hold names the series
        assert held == 0
    else:
        assert check["response"]["held"] == held


@pytest.mark.parametrize("fsync", ["true", "false"])  # group commit / page-cache writes
def test_limit_decisions_survive_sigkill_exactly_once(proc: Proc, fsync: str) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    history = History()
    fresh_consumes: list[Sent] = []
    fresh_reservations: list[Reservation] = []
    snapshots = 0
    for cycle in range(CYCLES + 1):
        proc.start(f"--wal-fsync={fsync}")
        client = Client(proc.port)
        try:
            check_consumes(client, history, fresh_consumes)
            check_reservations(client, history, fresh_reservations)
        finally:
            client.close()
        if cycle == CYCLES:
            break
        consumes_before = set(history.consumes)
        reservations_before = set(history.reservations)
        workers: list[Worker] = [
            *(Consumer(proc.port, f"c{cycle}.{i}", history, rng) for i in range(2)),
            *(Reserver(proc.port, f"r{cycle}.{i}", history, rng) for i in range(2)),
        ]
        looper = Snapshots(proc.port)
        for thread in (*workers, looper):
            thread.start()
        time.sleep(rng.uniform(0.05, 0.25))
        proc.signal(signal.SIGUSR1)  # a second source of snapshots, racing the first
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        for thread in (*workers, looper):
            thread.join(timeout=10)
        for worker in workers:
            assert worker.error is None, (seed, worker.error)
        snapshots += looper.done
        fresh_consumes = [s for i, s in history.consumes.items() if i not in consumes_before]
        fresh_reservations = [
            r for i, r in history.reservations.items() if i not in reservations_before
        ]

    # the last start: everything sent, ever, replays its one answer; short holds have expired
    client = Client(proc.port)
    try:
        retry_all(client, history, [("limit.consume", s) for s in history.consumes.values()])
        reservations = list(history.reservations.values())
        retry_all(client, history, [("limit.reserve", r.reserve) for r in reservations])
        short = [r for r in reservations if r.key == SHORT_KEY]
        deadline = time.monotonic() + 5  # a TTL of 1 s, and the sweeper's round
        while {s["status"] for s in status_of(client, short).values()} - {"expired"}:
            assert time.monotonic() < deadline, status_of(client, short)
            time.sleep(0.1)
        assert usage(client, RESERVED, SHORT_KEY) == 0
        # half of the expired holds are committed late: their usage counts once, after a
        # kill too
        for reservation in short[::2]:
            reservation.settle = Sent({"id": reservation.id, "value": 1})
            answer = call(client, reservation.settle, "limit.commit")
            assert answer["response"]["status"] == "committed_late", answer
    finally:
        client.close()
    proc.kill()
    proc.start(f"--wal-fsync={fsync}")
    client = Client(proc.port)
    try:
        assert usage(client, RESERVED, SHORT_KEY) == len(short[::2])
        check_consumes(client, history, [])
        check_reservations(client, history, short[::2])
    finally:
        client.close()
    consumes = list(history.consumes.values())
    first_allowed = sum(1 for s in consumes if allowed(s))
    print(
        f"limit crash test (fsync={fsync}): {CYCLES} kill cycles, {snapshots} snapshots,"
        f" {len(consumes)} consumes ({first_allowed} allowed), {len(reservations)} reservations"
        f" ({sum(1 for r in reservations if r.settle is not None)} settled by the client,"
        f" {len(short)} left to expire), answers lost to kills: {history.unanswered},"
        f" 0 lost, 0 doubled, seed {seed}"
    )
    assert consumes, seed
    assert reservations, seed
