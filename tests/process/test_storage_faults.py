"""A data directory that refuses writes — full, read-only, immutable — on a real server.

Every refusal is the retriable `storage_unavailable` naming the cause (never internal_error),
reads keep working, system.health and /metrics say so, nothing acknowledged is lost across
SIGKILL, and writes succeed again once the cause is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from karma import client as k
from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process
S = "usage"
B1 = 20260501
KEYS = 5
#: room left beside the filler file: a few hundred WAL records, so the disk fills in a second
LEAVE_BYTES = 64 * 1024


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted at tmp_path/data (needs root or CAP_SYS_ADMIN; skips otherwise)."""
    data = tmp_path / "data"
    data.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(data))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here: {done.stderr.strip()}")
    try:
        yield data
    finally:
        # the server fixture below is torn down first, so nothing holds the mount
        done = run("umount", str(data))
        assert done.returncode == 0, done.stderr


@attrs.frozen
class ReadOnly:
    """A way to make a directory refuse new files while the server keeps it open."""

    name: str
    lock: tuple[tuple[str, ...], ...]
    unlock: tuple[tuple[str, ...], ...]
    cause: str  # the OS's words for the refusal


READ_ONLY = [
    # the immutable flag: no file may be created, renamed or removed in the directory
    ReadOnly(
        "chattr", (("chattr", "+i", "{}"),), (("chattr", "-i", "{}"),), "Operation not permitted"
    ),
    # a read-only bind mount over the directory: new path lookups land on it (EROFS), while
    # descriptors opened before keep the writable mount under it
    ReadOnly(
        "ro-bind",
        (("mount", "--bind", "{}", "{}"), ("mount", "-o", "remount,bind,ro", "{}")),
        (("umount", "{}"),),
        "Read-only file system",
    ),
]


def run_all(commands: tuple[tuple[str, ...], ...], directory: Path) -> str | None:
    """Run each command with `{}` as `directory`; the first failure's message, or None."""
    for command in commands:
        if shutil.which(command[0]) is None:
            return f"no {command[0]} command here"
        done = run(*(part.replace("{}", str(directory)) for part in command))
        if done.returncode != 0:
            return done.stderr.strip()
    return None


@pytest.fixture(params=READ_ONLY, ids=lambda way: way.name)
def read_only(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadOnly]:
    """tmp_path/data, where this way of refusing new files is possible (skips where not)."""
    way: ReadOnly = request.param
    data = tmp_path / "data"
    data.mkdir()
    refused = run_all(way.lock, data)
    if refused is not None:
        pytest.skip(f"{way.name} is not possible here (tmpfs/overlay, no root?): {refused}")
    assert run_all(way.unlock, data) is None
    try:
        yield way
    finally:
        run_all(way.unlock, data)  # may already be undone; or pytest could not remove tmp_path


def server(data: Path, *flags: str) -> Proc:
    return Proc(data, "--log=true", f"--metrics-port={free_port()}", *flags)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def metrics_port(proc: Proc) -> int:
    return int(next(f for f in proc.flags if f.startswith("--metrics-port=")).split("=")[1])


def scrape(proc: Proc) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port(proc)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def fill(directory: Path, leave: int) -> Path:
    """A filler file taking all the free space of `directory`'s file system but `leave` bytes."""
    stat = os.statvfs(directory)
    filler = directory / "filler"
    filler.write_bytes(b"\xff" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def increment(client: Client, key: int) -> dict[str, Any]:
    return client.call("counter.increment", series=S, key=key, value=1, bucket=B1)


def write_until_refused(client: Client, acked: list[int], limit: int) -> dict[str, Any]:
    """Increments of 1 round the keys until one is refused; counts the acknowledged ones."""
    for n in range(limit):
        answer = increment(client, n % KEYS)
        if not answer["success"]:
            return answer
        acked[n % KEYS] += 1
    raise AssertionError(f"{limit} writes and none refused")


def assert_refused(answer: dict[str, Any], cause: str) -> None:
    assert answer["success"] is False, answer
    assert answer["error_code"] == "storage_unavailable", answer
    assert cause in answer["response"], answer
    assert "retry later" in answer["response"], answer


def sums(client: Client) -> list[int]:
    answer = client.call("counter.batch_sum", series=S, keys=list(range(KEYS)))
    assert answer["success"], answer
    return [item["value"] for item in answer["response"]]


@pytest.mark.parametrize("fsync", ["true", "false"])  # batched writes / synchronous writes
def test_a_full_disk_refuses_writes_as_storage_unavailable_and_loses_nothing(
    tmpfs: Path, procs: list[Proc], fsync: str
) -> None:
    proc = server(tmpfs, f"--wal-fsync={fsync}")
    procs.append(proc)
    proc.start()
    client = Client(proc.port)
    acked = [0] * KEYS
    assert increment(client, 0)["success"]
    acked[0] += 1
    filler = fill(tmpfs, LEAVE_BYTES)

    refused = write_until_refused(client, acked, 10_000)
    assert_refused(refused, "WAL write failed: No space left on device")
    assert sum(acked) > 100  # the records fitted in LEAVE_BYTES really were acknowledged
    assert sums(client) == acked  # reads keep working, and nothing refused was applied
    assert_refused(client.call("snapshot.create_all"), "No space left on device")
    assert_refused(client.call("snapshot.create", series=S), "No space left on device")
    assert_refused(
        client.call("recovery.checkpoint", source="importer", offset=7), "No space left on device"
    )
    health = client.call("system.health")["response"]
    assert health["status"] == "unhealthy"
    assert "No space left on device" in health["storage_error"]
    metrics = scrape(proc)
    assert metrics["karma_storage_unavailable"] == 1
    assert metrics["karma_storage_errors_total"] >= 4
    with k.Client(port=proc.port, timeout=5) as karma:  # the client sees it typed, retriable
        assert karma.health().storage_error == health["storage_error"]
        with pytest.raises(k.StorageUnavailable, match="No space left on device"):
            karma.increment(S, 1)
    assert not list(tmpfs.glob(".*.tmp")), "a refused snapshot leaves no temp file"
    client.close()

    proc.kill()  # SIGKILL on a full disk, and a restart on it: the WAL is read, not written
    proc.start()
    client = Client(proc.port)
    assert sums(client) == acked
    assert_refused(increment(client, 1), "No space left on device")
    filler.unlink()  # space returns
    assert increment(client, 1)["success"]
    acked[1] += 1
    assert client.call("system.health")["response"]["status"] == "ok"
    assert client.call("snapshot.create_all")["success"]
    assert scrape(proc)["karma_storage_unavailable"] == 0
    client.close()

    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert sums(client) == acked
    client.close()
    print(f"full disk, fsync={fsync}: {sum(acked)} writes acknowledged, all restored")


def test_a_directory_refusing_new_files_answers_storage_unavailable(
    read_only: ReadOnly, tmp_path: Path, procs: list[Proc]
) -> None:
    data = tmp_path / "data"
    # small segments: a rotation (a rename and a new karma.wal) is due every ~25 writes
    proc = server(data, "--wal-segment-bytes=2048")
    procs.append(proc)
    proc.start()
    client = Client(proc.port)
    acked = [0] * KEYS
    assert increment(client, 0)["success"]
    acked[0] += 1
    assert run_all(read_only.lock, data) is None
    cause = read_only.cause
    try:
        assert_refused(client.call("snapshot.create_all"), cause)
        assert_refused(
            client.call("recovery.checkpoint", source="importer", offset=7),
            cause,
        )
        # appending to the open karma.wal still works; the rotation that needs a new file not
        refused = write_until_refused(client, acked, 1000)
        assert_refused(refused, f"WAL write failed: {cause}")
        # a refused rotation must leave the WAL's file handle alone: a connection accepted
        # now may get a recycled descriptor number, and the next write must not reach it
        bystander = Client(proc.port)
        assert_refused(increment(client, 2), cause)
        assert bystander.call("system.ping")["response"] == "pong"
        bystander.close()
        assert sums(client) == acked
        health = client.call("system.health")["response"]
        assert health["status"] == "unhealthy"
        assert cause in health["storage_error"]
        assert scrape(proc)["karma_storage_unavailable"] == 1
    finally:
        assert run_all(read_only.unlock, data) is None
    assert increment(client, 3)["success"]
    acked[3] += 1
    assert client.call("snapshot.create_all")["success"]
    assert client.call("system.health")["response"]["status"] == "ok"
    client.close()
    proc.kill()
    proc.start()
    client = Client(proc.port)
    assert sums(client) == acked
    client.close()
