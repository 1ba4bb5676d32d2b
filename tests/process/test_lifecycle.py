"""karma-trio as a subprocess: configuration errors, signals, and restarts from the WAL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
S = "api_requests"
B1 = 20260501


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def run(tmp_path: Path, procs: list[Proc], *flags: str) -> Proc:
    proc = Proc(tmp_path, "--log=true", *flags)
    procs.append(proc)
    return proc.start()


@pytest.mark.parametrize("flag", ["--port=notaport", "--wal=maybe", "--role=leader"])
def test_a_bad_option_exits_2_with_one_line_naming_it(tmp_path: Path, flag: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "karma", f"--directory={tmp_path}", flag],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert flag.split("=")[0] in lines[0]


def test_sigterm_with_a_client_connected_exits_0(tmp_path: Path, procs: list[Proc]) -> None:
    proc = run(tmp_path, procs)
    client = Client(proc.port)
    assert client.call("system.ping")["response"] == "pong"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    client.close()


def test_sigusr1_does_not_stop_the_server(tmp_path: Path, procs: list[Proc]) -> None:
    proc = run(tmp_path, procs)
    proc.signal(signal.SIGUSR1)
    client = Client(proc.port)
    assert client.call("system.ping")["response"] == "pong"
    client.close()


def test_acknowledged_writes_survive_sigkill(tmp_path: Path, procs: list[Proc]) -> None:
    proc = run(tmp_path, procs, "--wal-fsync=true")
    client = Client(proc.port)
    for key in range(20):
        assert client.call("counter.increment", series=S, key=key, value=key + 1, bucket=B1)[
            "success"
        ]
    client.call("series.batch_set", series=S, items=[[100, B1, 7]])
    client.call("counter.reset", series=S, key=3)
    client.call("tree.create", series="empty")
    client.close()
    proc.kill()
    proc.start()
    client = Client(proc.port)
    sums = client.call("counter.batch_sum", series=S, keys=[0, 3, 19, 100])["response"]
    assert [item["value"] for item in sums] == [1, 0, 20, 7]
    assert client.call("tree.list")["response"] == [S, "empty"]
    assert client.call("system.stats")["response"]["wal_current_lsn"] == 23
    client.close()


def test_a_torn_last_line_is_dropped_and_the_rest_restored(
    tmp_path: Path, procs: list[Proc]
) -> None:
    proc = run(tmp_path, procs)
    client = Client(proc.port)
    client.call("counter.increment", series=S, key=1, value=5, bucket=B1)
    client.close()
    proc.kill()
    with open(tmp_path / "karma.wal", "ab") as wal:
        wal.write(b'{"v":2,"lsn":2,"entry":{"v":2,"op":"counter.incr')
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == 5
    assert client.call("counter.increment", series=S, key=1, value=1, bucket=B1)["success"]
    client.close()
    proc.kill()
    assert list(tmp_path.glob("karma.wal.torn-*")), "the dropped bytes are kept beside the WAL"
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series=S, key=1)["response"] == 6
    client.close()


def test_a_damaged_record_in_the_middle_stops_startup(tmp_path: Path, procs: list[Proc]) -> None:
    proc = run(tmp_path, procs)
    client = Client(proc.port)
    for _ in range(3):
        client.call("counter.increment", series=S, key=1, value=1, bucket=B1)
    client.close()
    proc.kill()
    wal = tmp_path / "karma.wal"
    lines = wal.read_bytes().splitlines(keepends=True)
    wal.write_bytes(lines[0] + b"garbage\n" + lines[1] + lines[2])
    proc.start(wait=False)
    assert proc.wait() == 1
    message = proc.stderr()
    assert "karma.wal" in message
    assert f"byte {len(lines[0])}" in message


def test_restore_false_starts_empty_and_keeps_numbering(tmp_path: Path, procs: list[Proc]) -> None:
    proc = run(tmp_path, procs)
    client = Client(proc.port)
    client.call("counter.increment", series=S, key=1, bucket=B1)
    client.close()
    proc.kill()
    proc.flags.append("--restore=false")
    proc.start()
    client = Client(proc.port)
    assert client.call("tree.list")["response"] == []
    assert client.call("counter.increment", series=S, key=2, bucket=B1)["success"]
    assert client.call("system.stats")["response"]["wal_current_lsn"] == 2
    client.close()


@pytest.mark.parametrize("which", ["port", "metrics-port", "bind"])
def test_an_address_that_cannot_be_used_is_one_line_and_exit_1(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        flags = {
            "port": ["--bind=127.0.0.1", f"--port={busy}"],
            "metrics-port": ["--bind=127.0.0.1", "--port=0", f"--metrics-port={busy}"],
            "bind": ["--bind=no-such-host.invalid", "--port=0"],
        }[which]
        done = subprocess.run(
            [sys.executable, "-m", "karma", f"--directory={tmp_path}", *flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if '"startup.failed"' in line]
    said = [line for line in done.stderr.splitlines() if line.startswith("karma-trio: cannot")]
    assert len(failed) == len(said) == 1, done.stderr
    where = "no-such-host.invalid:0" if which == "bind" else f"127.0.0.1:{busy}"
    assert f"cannot listen on {where}" in said[0]
