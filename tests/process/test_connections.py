"""Clients that misbehave on purpose cannot hurt the server or the other clients.

One that pipelines large answers and never reads, one that trickles its request line a byte at a
time, and enough idle ones to use up the server's file descriptors. Bounds are generous (a
loaded 2-core machine): they separate "bounded" from "grows without limit", not fast from slow.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process

MiB = 1 << 20


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def start(procs: list[Proc], tmp_path: Path, *flags: str, max_files: int | None = None) -> Proc:
    directory = tmp_path / f"data{len(procs)}"
    directory.mkdir()
    proc = Proc(directory, *flags, max_files=max_files)
    procs.append(proc)
    return proc.start()


def timed_ping(port: int) -> float:
    """Seconds from connect to pong on a fresh connection."""
    started = time.monotonic()
    client = Client(port)
    try:
        client.sock.settimeout(60)
        assert client.call("system.ping")["response"] == "pong"
    finally:
        client.close()
    return time.monotonic() - started


# --- item 7: a client that never reads its answers ------------------------------------------------


def snapshot_of_about_900_kb_answers(client: Client) -> str:
    """One series whose .tree file is ~650 KB, so snapshot.fetch answers ~0.87 MB of base64."""
    for start_key in range(0, 24_000, 1000):
        items = [[k, 20260101 + k % 28, 1 + k % 1000] for k in range(start_key, start_key + 1000)]
        assert client.call("series.batch_add", series="big", items=items)["success"]
    assert client.call("snapshot.create_all")["success"]
    (path,) = client.call("snapshot.list")["response"]
    return os.path.basename(str(path))


def test_a_client_that_pipelines_large_answers_and_never_reads_stays_bounded(
    procs: list[Proc], tmp_path: Path, sockets: list[socket.socket]
) -> None:
    # --write-timeout=0: the greedy client is never cut, so only backpressure can bound memory
    proc = start(procs, tmp_path, "--max-request-bytes=1048576", "--write-timeout=0")
    setup = Client(proc.port)
    name = snapshot_of_about_900_kb_answers(setup)
    answer_bytes = len(json.dumps(setup.call("snapshot.fetch", file=name)))
    setup.close()
    assert 800_000 < answer_bytes < MiB  # each answer fits --max-response-bytes (1 MiB)
    request = json.dumps({"v": 2, "op": "snapshot.fetch", "file": name}).encode() + b"\n"

    greedy = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
    sockets.append(greedy)
    greedy.sendall(request * 1000)  # ~58 KB asking for ~870 MB of answers; never read
    slowest_ping = 0.0
    until = time.monotonic() + 4
    while time.monotonic() < until:
        slowest_ping = max(slowest_ping, timed_ping(proc.port))
        time.sleep(0.1)
    peak = proc.status("VmHWM")
    print(f"peak RSS {peak / MiB:.0f} MiB, slowest ping {slowest_ping * 1000:.0f} ms")
    assert peak < 300 * MiB  # unbounded, it grew to 1.75 GB
    assert slowest_ping < 1.0  # unbounded, other clients waited 3.5-4.1 s
    assert proc.status("VmRSS") < 300 * MiB
    greedy.close()  # the server's send fails; the connection ends, the server goes on
    assert timed_ping(proc.port) < 1.0


# --- item 8: request lines trickled a byte at a time (slowloris) ----------------------------------

PING = b'{"v":2,"op":"system.ping"}\n'


def is_closed(sock: socket.socket) -> bool:
    """Has the server closed `sock`? (It never answers an incomplete line.)"""
    try:
        return sock.recv(1 << 16, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_request_lines_trickled_a_byte_at_a_time_are_cut_at_the_line_deadline(
    procs: list[Proc], tmp_path: Path, sockets: list[socket.socket]
) -> None:
    # one byte every 0.5 s: each byte restarts --read-timeout (5 s), so only the whole-line
    # deadline can end these connections; a 27-byte line would take 13 s
    proc = start(procs, tmp_path, "--request-line-timeout=3")
    trickling = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(20)]
    sockets.extend(trickling)
    normal = Client(proc.port)
    sockets.append(normal.sock)
    started = time.monotonic()
    closed_after: dict[int, float] = {}
    for sent in range(60):  # 30 s at most
        for i, sock in enumerate(trickling):
            if i in closed_after:
                continue
            if is_closed(sock):
                closed_after[i] = time.monotonic() - started
                continue
            try:
                sock.send(PING[sent % len(PING) :][:1])
            except OSError:
                closed_after[i] = time.monotonic() - started
        if len(closed_after) == len(trickling):
            break
        assert normal.call("system.ping")["response"] == "pong"  # the others are served
        time.sleep(0.5)
    print(
        f"closed after {min(closed_after.values(), default=0):.1f}-"
        f"{max(closed_after.values(), default=0):.1f} s"
    )
    assert len(closed_after) == len(trickling)
    assert min(closed_after.values()) > 2  # not before the deadline (3 s from the first wait)
    assert max(closed_after.values()) < 20
    assert normal.call("system.ping")["response"] == "pong"


def test_request_lines_sent_slowly_within_the_line_deadline_are_answered(
    procs: list[Proc], tmp_path: Path
) -> None:
    proc = start(procs, tmp_path, "--request-line-timeout=4")
    client = Client(proc.port)
    try:
        # each line takes ~1.2 s, all four ~5 s: the deadline is per line, not per connection
        for _ in range(4):
            for piece in (PING[:9], PING[9:18], PING[18:]):
                client.sock.sendall(piece)
                time.sleep(0.6)
            assert client.reply()["response"] == "pong"
    finally:
        client.close()


# --- item 9: idle connections use up the server's file descriptors --------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_running_out_of_descriptors_logs_a_json_line_counts_and_recovers(
    procs: list[Proc], tmp_path: Path, sockets: list[socket.socket]
) -> None:
    metrics_port = free_port()
    # --read-timeout=0: idle connections stay until the test closes them
    proc = start(
        procs, tmp_path, "--read-timeout=0", f"--metrics-port={metrics_port}", max_files=64
    )
    # the kernel queues the connections that the server cannot accept
    sockets.extend(
        socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(100)
    )
    time.sleep(3)  # out of descriptors all along: accept fails ~10 times a second
    mentions = [line for line in proc.stderr().splitlines() if "EMFILE" in line]
    print(f"{len(mentions)} of {len(proc.stderr().splitlines())} stderr lines name EMFILE in 3 s")
    assert 1 <= len(mentions) <= 2
    logged = json.loads(mentions[0])
    assert logged["event"] == "accept.failed"
    assert logged["errno"] == "EMFILE"
    for sock in sockets:
        sock.close()
    sockets.clear()
    assert timed_ping(proc.port) < 30  # descriptors are free again: new clients are served
    failed_accepts = scrape(metrics_port)["karma_accept_errors_total"]
    print(f"karma_accept_errors_total {failed_accepts:.0f}")
    assert failed_accepts >= 10  # ~10 a second for 3 s, each counted though logged once
