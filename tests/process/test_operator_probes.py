"""What an operator reaches for first: probes on the metrics port, errors by code, slow requests,
process metrics and a log line per import step (issue 15)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from karma.core import report
from karma.core.counters import NodeStatus
from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process
B1 = 20260501


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _server(tmp_path: Path, name: str, procs: list[Proc], *flags: str) -> tuple[Proc, int]:
    (tmp_path / name).mkdir()
    metrics_port = free_port()
    proc = Proc(tmp_path / name, f"--metrics-port={metrics_port}", "--log=true", *flags)
    procs.append(proc)
    return proc, metrics_port


def test_three_error_codes_are_counted_by_code_and_op(tmp_path: Path, procs: list[Proc]) -> None:
    proc, metrics_port = _server(tmp_path, "m", procs)
    proc.start()
    client = Client(proc.port)
    assert client.call("counter.sum", series="nosuch", key=1)["error_code"] == "not_found"
    assert client.call("counter.sum", series="a", key=-1)["error_code"] == "validation_error"
    assert client.call("nope.nothing")["error_code"] == "unknown_command"
    assert client.call("counter.sum", series="nosuch", key=2)["error_code"] == "not_found"
    client.close()
    status, text = _get(metrics_port, "/metrics")
    assert status == 200
    errors = {
        (s.labels["code"], s.labels["op"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "karma_errors"
        for s in family.samples
        if s.name == "karma_errors_total"
    }
    assert errors == {
        ("not_found", "counter.sum"): 2,
        ("validation_error", "counter.sum"): 1,
        ("unknown_command", "-"): 1,
    }
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= names


def test_a_master_is_alive_ready_and_primary(tmp_path: Path, procs: list[Proc]) -> None:
    proc, metrics_port = _server(tmp_path, "m", procs)
    proc.start()
    assert _get(metrics_port, "/healthz") == (200, "ok\n")
    assert _get(metrics_port, "/readyz") == (200, "ready\n")
    assert _get(metrics_port, "/primary") == (200, "primary\n")


def test_a_replica_is_ready_once_caught_up_and_never_primary(
    tmp_path: Path, procs: list[Proc]
) -> None:
    master, _ = _server(tmp_path, "m", procs)
    replica, metrics_port = _server(
        tmp_path, "r", procs, "--role=slave", "--replication-poll-interval-ms=50"
    )
    # first its master is unreachable: alive, but not ready and not primary
    replica.start("--replication-source-host=127.0.0.1", f"--replication-source-port={free_port()}")
    assert _get(metrics_port, "/healthz")[0] == 200
    status, reason = _get(metrics_port, "/readyz")
    assert (status, "not bootstrapped" in reason) == (503, True)
    assert _get(metrics_port, "/primary")[0] == 503
    replica.close()

    master.start()
    client = Client(master.port)
    for key in range(50):
        assert client.call("counter.increment", series="s", key=key, bucket=B1)["success"]
    client.close()
    replica.start("--replication-source-host=127.0.0.1", f"--replication-source-port={master.port}")
    deadline = time.monotonic() + 20
    while _get(metrics_port, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, _get(metrics_port, "/readyz")
        time.sleep(0.1)
    assert _get(metrics_port, "/primary") == (503, "not a writable primary (role slave)\n")


def test_a_replica_too_far_behind_is_not_ready() -> None:
    status = NodeStatus(role="slave", listening=True)
    status.replication.poll.successes = 1
    status.replication.source_lsn = 500
    status.wal_current_lsn = 100
    assert report.readiness(status, 1000) is None
    assert report.readiness(status, 399) == "replica: 400 entries behind its master (bound 399)"
    status.storage_refused("wal", "WAL write failed: No space left on device")
    assert report.readiness(status, 1000) == "storage: WAL write failed: No space left on device"


def test_slow_requests_are_logged_and_kept_in_the_slowlog(
    tmp_path: Path, procs: list[Proc]
) -> None:
    proc, _ = _server(tmp_path, "m", procs, "--slow-request-ms=1", "--max-request-bytes=1048576")
    proc.start()
    client = Client(proc.port)
    items = [[key, B1, 1] for key in range(10_000)]  # the most one batch takes: milliseconds
    assert client.call("series.batch_add", series="s", items=items)["success"]
    assert client.call("system.ping")["success"]
    slow = client.call("system.slowlog")["response"]
    client.close()
    ops = [entry["op"] for entry in slow["entries"]]
    assert "series.batch_add" in ops
    assert slow["total"] >= 1
    lines = [json.loads(x) for x in proc.stderr().splitlines() if '"request.slow"' in x]
    assert any(line["op"] == "series.batch_add" for line in lines)


def test_a_long_poll_that_waits_as_asked_is_not_a_slow_request(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A replica's idle `replication.entries` waits up to `wait_ms` for entries by design:
    that wait is no slowness (issue 22 saw every idle poll logged as request.slow)."""
    proc, _ = _server(tmp_path, "m", procs, "--slow-request-ms=50")
    proc.start()
    client = Client(proc.port)
    polled = client.call("replication.entries", after_lsn=0, wait_ms=300)
    assert polled["success"], polled
    slow = client.call("system.slowlog")["response"]
    client.close()
    assert slow["entries"] == [], slow
    assert '"request.slow"' not in proc.stderr()


def test_each_import_step_is_one_log_line(tmp_path: Path, procs: list[Proc]) -> None:
    proc, _ = _server(tmp_path, "m", procs)
    proc.start()
    client = Client(proc.port)
    assert client.call("ingest.begin", stream_id="load-7", mode="add")["success"]
    chunk = {"stream_id": "load-7", "series": "s", "chunk_seq": 1, "items": [[1, B1, 2]]}
    assert client.call("ingest.chunk", **chunk)["success"]
    assert client.call("ingest.commit", stream_id="load-7")["success"]
    client.close()
    events = [json.loads(x) for x in proc.stderr().splitlines() if '"ingest.' in x]
    steps = [(e["event"], e.get("stream_id")) for e in events]
    assert ("ingest.begin", "load-7") in steps
    assert ("ingest.commit", "load-7") in steps
