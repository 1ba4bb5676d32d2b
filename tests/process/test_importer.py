"""The CSV importer end to end against a real server: a crash mid-import, a default server's
request limit, Ctrl-C and a limit that changes before the rerun, copies of the file, bad input.
"""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process.proc import Client, Proc, free_port

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


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[Proc]:
    """A server with its default limits: --max-request-bytes=4096 (start() may add flags)."""
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--wal-fsync=false")
    yield proc
    proc.close()


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """20,000 rows: 2,000 keys x 10 days, values 1..7, under a header."""
    path = tmp_path / "usage.csv"
    with open(path, "w") as handle:
        handle.write("key,bucket,value\n")
        handle.writelines(f"{i % 2000},{20260501 + i // 2000},{i % 7 + 1}\n" for i in range(20_000))
    return path


SMALL_TOTAL = sum(i % 7 + 1 for i in range(20_000))
MEDIUM_ROWS = 200_000


@pytest.fixture(scope="module")
def medium_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 rows (20,000 keys x 10 days): a second or two to import, time for a Ctrl-C."""
    path = tmp_path_factory.mktemp("medium") / "usage.csv"
    with open(path, "w") as handle:
        handle.write("key,bucket,value\n")
        handle.writelines(
            f"{i % 20_000},{20260501 + i // 20_000},{i % 7 + 1}\n" for i in range(MEDIUM_ROWS)
        )
    return path


def check_medium_totals(port: int) -> None:
    """Every row of medium_csv counted exactly once."""
    client = Client(port)
    info = client.call("tree.info", series="usage")["response"]
    assert info["bucket_count"] == MEDIUM_ROWS
    assert info["total"] == sum(i % 7 + 1 for i in range(MEDIUM_ROWS))
    client.close()


def importer(csv: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`karma-trio ingest CSV --series usage --port PORT`, as the README shows it."""
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


def finish(run: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = run.communicate(timeout=300)
    return run.returncode, err.decode()


def total(client: Client, series: str = "usage") -> int:
    answer = client.call("tree.info", series=series)
    assert answer["success"], answer
    value: int = answer["response"]["total"]
    return value


def wait_for_series(port: int, deadline_s: float = 60) -> None:
    """Until the import has applied at least one chunk (an `add` chunk is live at once)."""
    client = Client(port)
    deadline = time.monotonic() + deadline_s
    while not client.call("tree.info", series="usage")["success"]:
        assert time.monotonic() < deadline, "no chunk arrived"
        time.sleep(0.01)
    client.close()


def interrupt(run: subprocess.Popen[bytes], port: int) -> str:
    """Ctrl-C the importer once the server holds some of the import; its stderr."""
    wait_for_series(port)
    run.send_signal(signal.SIGINT)
    code, err = finish(run)
    assert code == 130, err
    return err


def test_the_readme_command_imports_into_a_server_with_default_limits(
    small_csv: Path, default_server: Proc
) -> None:
    default_server.start()
    code, err = finish(importer(small_csv, default_server.port))
    assert code == 0, err
    assert "committed" in err
    client = Client(default_server.port)
    assert total(client) == SMALL_TOTAL
    client.close()


def test_a_copy_of_the_file_is_the_same_import(small_csv: Path, server: Proc) -> None:
    server.start()
    assert finish(importer(small_csv, server.port))[0] == 0
    copy = small_csv.parent / "copied" / "usage-again.csv"
    copy.parent.mkdir()
    shutil.copyfile(small_csv, copy)  # another path, another mtime, the same bytes
    code, err = finish(importer(copy, server.port))
    assert code == 0, err
    assert "already committed" in err
    client = Client(server.port)
    assert total(client) == SMALL_TOTAL  # counted once
    client.close()


def test_ctrl_c_says_how_to_resume_and_the_rerun_counts_every_row_once(
    medium_csv: Path, default_server: Proc
) -> None:
    default_server.start()
    err = interrupt(importer(medium_csv, default_server.port), default_server.port)
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert "interrupted" in line
    assert "run the same command again to resume" in line
    code, err = finish(importer(medium_csv, default_server.port))
    assert code == 0, err
    check_medium_totals(default_server.port)


def test_an_import_begun_under_a_small_limit_resumes_under_a_larger_one(
    medium_csv: Path, default_server: Proc
) -> None:
    default_server.start()
    interrupt(importer(medium_csv, default_server.port), default_server.port)
    default_server.start("--max-request-bytes=1048576")
    code, err = finish(importer(medium_csv, default_server.port))
    assert code == 0, err  # the stream's chunks keep the size they were begun with
    check_medium_totals(default_server.port)


def test_an_import_begun_under_a_large_limit_is_refused_under_a_smaller_one(
    medium_csv: Path, default_server: Proc
) -> None:
    default_server.start("--max-request-bytes=1048576")
    # 8 KiB chunks rather than 64 KiB: the import lasts long enough to be interrupted
    run = importer(medium_csv, default_server.port, "--max-chunk-bytes=8192")
    interrupt(run, default_server.port)
    default_server.start()  # back to 4096 bytes: the stream's chunks no longer fit
    code, err = finish(importer(medium_csv, default_server.port))
    assert code == 1
    [line] = err.strip().splitlines()
    assert "--max-request-bytes" in line
    default_server.start("--max-request-bytes=1048576")
    code, err = finish(importer(medium_csv, default_server.port))
    assert code == 0, err
    check_medium_totals(default_server.port)


def test_a_server_restarted_with_a_smaller_limit_mid_import_stops_it_with_the_limit_to_restore(
    medium_csv: Path, default_server: Proc
) -> None:
    default_server.start("--max-request-bytes=1048576")
    run = importer(medium_csv, default_server.port, "--max-chunk-bytes=8192", "--retries=50")
    wait_for_series(default_server.port)
    default_server.start(same_port=True)  # killed, and back with the default 4096 bytes
    code, err = finish(run)
    assert code == 1
    assert "start it with --max-request-bytes=" in err.strip().splitlines()[-1]
    default_server.start("--max-request-bytes=1048576")
    code, err = finish(importer(medium_csv, default_server.port))
    assert code == 0, err
    check_medium_totals(default_server.port)


def test_a_missing_file_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    code, err = finish(importer(tmp_path / "nosuch.csv", free_port()))
    assert code == 2
    [line] = err.strip().splitlines()
    assert "nosuch.csv" in line
    assert "No such file" in line


def test_a_bad_row_is_named_before_anything_is_sent(small_csv: Path, server: Proc) -> None:
    server.start()
    with open(small_csv, "a") as handle:
        handle.write("1,20260501,1\n2,tomorrow,1\n")
    code, err = finish(importer(small_csv, server.port))
    assert code == 2
    assert f"{small_csv}:20003" in err
    client = Client(server.port)
    assert client.call("tree.info", series="usage")["error_code"] == "not_found"
    client.close()


def _ingest(csv: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "karma",
        "ingest",
        str(csv),
        "--series",
        "api_requests",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def test_progress_is_a_bar_with_percent_and_eta_on_a_terminal(
    default_server: Proc, small_csv: Path
) -> None:
    default_server.start()
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            _ingest(small_csv, default_server.port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=120,
            check=False,
        )
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = output.decode(errors="replace")
    assert done.returncode == 0, text[-800:]
    assert "\r" in text  # redrawn in place
    assert "100.0%" in text
    assert "ETA" in text
    assert "rows/s" in text


def test_progress_without_a_terminal_is_a_plain_line_every_n_chunks(
    default_server: Proc, small_csv: Path
) -> None:
    default_server.start()
    done = subprocess.run(
        _ingest(small_csv, default_server.port, "--progress-every", "10"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-800:]
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "ETA" in line]
    assert len(lines) >= 2
    assert all("%" in line and "rows/s" in line for line in lines)
