"""The CSV importer end to end against a real server, including a server crash mid-import."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
ROWS = 1_000_000
KEYS = 100_000


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000,000 rows: 100,000 keys x 10 days, values 1..7."""
    path = tmp_path_factory.mktemp("csv") / "usage.csv"
    with open(path, "w") as handle:
        handle.write("key,bucket,value\n")
        handle.writelines(f"{i % KEYS},{20260501 + i // KEYS},{i % 7 + 1}\n" for i in range(ROWS))
    return path


def expected_total(key: int) -> int:
    return sum((key + KEYS * day) % 7 + 1 for day in range(ROWS // KEYS))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--max-request-bytes=1048576", "--wal-fsync=false")
    yield proc
    proc.close()


def importer(csv: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "karma",
            "ingest",
            str(csv),
            "--series",
            "usage",
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def check_totals(client: Client) -> None:
    sample = [0, 1, 6, 12_345, 99_999]
    answer = client.call("counter.batch_sum", series="usage", keys=sample)["response"]
    assert [item["value"] for item in answer] == [expected_total(key) for key in sample]
    info = client.call("tree.info", series="usage")["response"]
    assert info["key_count"] == KEYS
    assert info["bucket_count"] == ROWS
    assert info["total"] == sum(i % 7 + 1 for i in range(ROWS))


def test_a_million_rows_import_and_a_rerun_changes_nothing(csv_file: Path, server: Proc) -> None:
    server.start()
    run = importer(csv_file, server.port)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()
    assert b"committed" in err
    client = Client(server.port)
    check_totals(client)
    again = importer(csv_file, server.port)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0
    assert b"already committed" in err
    check_totals(client)
    client.close()


def test_an_import_survives_a_server_crash_and_a_snapshot(csv_file: Path, server: Proc) -> None:
    server.start()
    run = importer(csv_file, server.port, "--retries", "50")
    time.sleep(2.0)
    server.signal(signal.SIGUSR1)  # the open stream must survive the WAL truncation
    time.sleep(1.0)
    server.kill()
    time.sleep(0.5)
    server.start(same_port=True)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()
    client = Client(server.port)
    check_totals(client)
    client.close()
