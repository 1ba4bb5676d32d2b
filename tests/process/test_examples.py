"""examples/csv_backfill.py run as a user would run it, against a server with default limits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc

pytestmark = pytest.mark.process
BACKFILL = Path(__file__).resolve().parents[2] / "examples" / "csv_backfill.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--wal-fsync=false")
    proc.start()
    yield proc
    proc.close()


def backfill(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BACKFILL), *args],
        env={"KARMA_URL": f"karma://127.0.0.1:{port}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_csv_backfill_without_arguments_prints_its_usage_and_exits_2() -> None:
    done = backfill(1)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: csv_backfill.py FILE.csv SERIES")
    assert "Traceback" not in done.stderr


def test_csv_backfill_loads_a_file_with_a_header_into_a_default_server(
    tmp_path: Path, server: Proc
) -> None:
    path = tmp_path / "usage.csv"
    rows = [(key, 20260501 + key % 3, key % 5 + 1) for key in range(5000)]  # ~100 KB of rows
    path.write_text("key,bucket,value\n" + "".join(f"{k},{b},{v}\n" for k, b, v in rows))
    done = backfill(server.port, str(path), "api_requests", "backfill-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("committed 5000 rows")
    client = Client(server.port)
    expected = (5000, sum(v for _, _, v in rows))
    info = client.call("tree.info", series="api_requests")["response"]
    assert (info["key_count"], info["total"]) == expected
    again = backfill(server.port, str(path), "api_requests", "backfill-1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already committed")
    # without a stream id, one is made from the file's content: a new stream that replaces
    # the series with the same rows
    derived = backfill(server.port, str(path), "api_requests")
    assert derived.returncode == 0, derived.stderr
    assert "stream backfill-api_requests-" in derived.stdout
    info = client.call("tree.info", series="api_requests")["response"]
    assert (info["key_count"], info["total"]) == expected
    client.close()
