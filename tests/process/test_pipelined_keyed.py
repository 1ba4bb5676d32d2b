"""Issue 25: keyed writes and limit decisions pipelined on many connections, WAL + fsync.

A connection keeps reading while its keyed writes and decisions wait to be durable, so these
tests send every request of a connection in one write, on many connections at once: a key is
still applied once, a limit is never passed, a failed flush acknowledges nothing decided on the
effects it rolled back, and SIGKILL loses or doubles nothing.
"""

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

import pytest

from tests.process.proc import Client, Proc

pytestmark = [pytest.mark.process]
MONTH = {"calendar": "month"}
B1 = 20260501


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data", "--log=true", env={"KARMA_FAILPOINTS": str(tmp_path / "fp")})
    yield server
    server.close()


def line(op: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"v": 2, "op": op, **fields}).encode() + b"\n"


def at_once(port: int, pipelines: list[list[bytes]]) -> list[list[dict[str, Any]]]:
    """Each pipeline on its own connection, sent in one write, all connections together; the
    answers of each, in order."""
    clients = [Client(port) for _ in pipelines]
    answers: list[list[dict[str, Any]]] = [[] for _ in pipelines]
    ready = threading.Barrier(len(pipelines))

    def run(index: int) -> None:
        client = clients[index]
        ready.wait()
        client.sock.sendall(b"".join(pipelines[index]))
        answers[index] = [client.reply() for _ in pipelines[index]]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pipelines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.close()
    assert all(len(a) == len(p) for a, p in zip(answers, pipelines, strict=True))
    return answers


def write_failpoints(path: Path, document: dict[str, Any]) -> None:
    """Atomically, as the server may read it at any moment."""
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(document))
    os.replace(temp, path)


def increment(key: int, value: int) -> bytes:
    body = {"tree": "keyed", "key": key, "bucket": B1, "value": value}
    return line("counter.increment", {**body, "idempotency_key": f"k-{key}"})


def test_colliding_keys_on_16_pipelining_connections_apply_each_key_once(proc: Proc) -> None:
    proc.start("--wal-fsync=true")
    keys = 40
    rng = random.Random(25)
    pipelines: list[list[bytes]] = []
    for connection in range(16):
        # every fourth connection sends another value: same key, another fingerprint
        value = 2 if connection % 4 == 3 else 1
        order = list(range(keys))
        rng.shuffle(order)
        pipelines.append([increment(k, value) for k in order])
    answers = at_once(proc.port, pipelines)
    by_key: dict[int, list[tuple[int, dict[str, Any]]]] = {k: [] for k in range(keys)}
    for connection, pipeline in enumerate(pipelines):
        for sent, answer in zip(pipeline, answers[connection], strict=True):
            key = json.loads(sent)["key"]
            by_key[key].append((json.loads(sent)["value"], answer))
    client = Client(proc.port)
    for key, copies in by_key.items():
        first = [(v, a) for v, a in copies if a["success"] and a["idempotent"] is False]
        assert len(first) == 1, (key, copies)  # applied once
        value, answer = first[0]
        for sent_value, copy in copies:
            if copy is answer:
                continue
            if sent_value == value:
                assert copy == {**answer, "idempotent": True}, (key, answer, copy)
            else:
                assert copy["error_code"] == "idempotency_conflict", (key, copy)
        assert client.call("counter.sum", tree="keyed", key=key)["response"] == value
    client.close()


def consume(key: int, maximum: int, idem: str | None = None) -> bytes:
    fields: dict[str, Any] = {
        "series": "calls",
        "key": key,
        "value": 1,
        "max": maximum,
        "window": MONTH,
    }
    if idem is not None:
        fields["idempotency_key"] = idem
    return line("limit.consume", fields)


def test_32_pipelining_connections_consume_exactly_the_maximum(proc: Proc) -> None:
    proc.start("--wal-fsync=true")
    pipelines = [
        # half the connections keyed, half not
        [consume(7, 100, f"c{c}-{n}" if c % 2 else None) for n in range(10)]
        for c in range(32)
    ]
    answers = [a for per in at_once(proc.port, pipelines) for a in per]
    assert all(a["success"] for a in answers), answers
    allowed = sorted(a["response"]["used"] for a in answers if a["response"]["allowed"])
    assert allowed == list(range(1, 101))  # exactly 100 allowed, each saw the ones before it
    denied = [a["response"]["used"] for a in answers if not a["response"]["allowed"]]
    assert len(denied) == 220
    assert set(denied) == {100}  # never above the maximum
    client = Client(proc.port)
    assert client.call("counter.sum", series="calls", key=7)["response"] == 100
    client.close()


def test_a_failed_flush_amid_pipelined_decisions_acknowledges_none_that_counted_it(
    proc: Proc, tmp_path: Path
) -> None:
    failpoints = tmp_path / "fp"
    write_failpoints(failpoints, {"wal.write": {"delay_ms": 20}})  # batches pile up behind
    proc.start("--wal-fsync=true")
    maximum = 150
    sent = {c: [f"f{c}-{n}" for n in range(25)] for c in range(8)}
    clients = {c: Client(proc.port) for c in sent}
    answers: dict[str, dict[str, Any]] = {}

    def run(c: int) -> None:
        client = clients[c]
        client.sock.sendall(b"".join(consume(3, maximum, idem) for idem in sent[c]))
        for idem in sent[c]:
            answers[idem] = client.reply()

    threads = [threading.Thread(target=run, args=(c,)) for c in sent]
    for thread in threads[:4]:
        thread.start()
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.005)
    # decisions are queued behind the flush being written now: the next one fails
    write_failpoints(failpoints, {"wal.write": {"delay_ms": 20, "error": "EIO", "count": 1}})
    for thread in threads[4:]:
        thread.start()
    for thread in threads:
        thread.join(60)
    write_failpoints(failpoints, {})
    for client in clients.values():
        client.close()
    assert len(answers) == 200
    failed = [i for i, a in answers.items() if not a["success"]]
    acked = {i: a for i, a in answers.items() if a["success"]}
    assert failed, answers
    assert acked, answers
    assert {answers[i]["error_code"] for i in failed} == {"storage_unavailable"}
    allowed = sorted(a["response"]["used"] for a in acked.values() if a["response"]["allowed"])
    # no acknowledged decision counted a rolled-back effect: the allowed ones are 1..A, each
    # once (one that counted failed consumes would leave a gap, or repeat a later number)
    assert allowed == list(range(1, len(allowed) + 1)), allowed
    proc.kill()  # a restart shows exactly the acknowledged effects
    proc.start("--wal-fsync=true")
    client = Client(proc.port)
    assert client.call("counter.sum", series="calls", key=3)["response"] == len(allowed)
    # a retry of each replays the acknowledged answers; the failed ones are decided now
    client.sock.sendall(b"".join(consume(3, maximum, idem) for idem in answers))
    again = [client.reply() for _ in answers]
    for idem, answer in zip(answers, again, strict=True):
        assert answer["success"], answer
        if idem in acked:
            assert answer == {**acked[idem], "idempotent": True}, (idem, answer)
    assert client.call("counter.sum", series="calls", key=3)["response"] == 150
    client.close()


def keyed_request(key: str) -> bytes:
    """`i...`: a keyed increment of 1; `c...`: a keyed consume of 1 that always fits."""
    if key.startswith("i"):
        body = {"tree": "inc", "key": 1, "bucket": B1, "value": 1}
        return line("counter.increment", {**body, "idempotency_key": key})
    return consume(9, 10**9, key)


def test_pipelined_keyed_writes_and_decisions_survive_sigkill_exactly_once(proc: Proc) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    requests: dict[str, bytes] = {}  # idempotency key -> the request line
    first: dict[str, dict[str, Any]] = {}  # the first answer of each, when one came
    lock = threading.Lock()
    errors: list[dict[str, Any]] = []
    for cycle in range(6):
        proc.start("--wal-fsync=true")
        client = Client(proc.port)
        # everything sent so far, again: an acknowledged answer replays exactly, an unanswered
        # request is applied now or was applied once before the kill
        keys = list(requests)
        if keys:
            client.sock.sendall(b"".join(requests[k] for k in keys))
            for key in keys:
                answer = client.reply()
                assert answer["success"], (seed, key, answer)
                if key in first:
                    assert answer == {**first[key], "idempotent": True}, (seed, key, answer)
                else:
                    first[key] = answer
        increments = sum(1 for k in requests if k.startswith("i"))
        consumes = sum(1 for k in requests if k.startswith("c"))
        total = client.call("counter.sum", tree="inc", key=1)
        assert (total["response"] if total["success"] else 0) == increments, seed  # 0 lost/doubled
        used = client.call("counter.sum", series="calls", key=9)
        assert (used["response"] if used["success"] else 0) == consumes, seed
        client.close()
        if cycle == 5:
            break

        def work(worker: int, cycle: int = cycle) -> None:
            try:
                client = Client(proc.port)
            except OSError:
                return
            try:
                for round_ in range(1000):
                    batch = []
                    for n in range(50):
                        ident = f"{cycle}.{worker}.{round_}.{n}"
                        key = f"{'ic'[n % 2]}{ident}"
                        with lock:
                            requests[key] = keyed_request(key)
                        batch.append(key)
                    client.sock.sendall(b"".join(requests[k] for k in batch))
                    for key in batch:
                        answer = client.reply()
                        with lock:
                            first[key] = answer
                        if not answer["success"]:
                            errors.append(answer)
            except (OSError, ConnectionError, ValueError):
                pass  # killed
            finally:
                client.close()

        workers = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(4)]
        for thread in workers:
            thread.start()
        time.sleep(rng.uniform(0.2, 0.8))
        proc.signal(signal.SIGKILL)
        proc.kill()
        for thread in workers:
            thread.join(10)
        assert not errors, (seed, errors[:3])
