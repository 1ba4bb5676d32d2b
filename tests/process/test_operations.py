"""What operators touch: /metrics over HTTP, systemd readiness, the unit file, alert rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from karma.tools import unit as unit_file
from tests.helpers import GOLDEN
from tests.process.proc import Client, Proc, free_port

pytestmark = pytest.mark.process
OPS = Path(__file__).resolve().parents[2] / "ops"


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    server = Proc(tmp_path / "data")
    yield server
    server.close()


def karma_1_0_metric_names() -> set[str]:
    golden = GOLDEN / "stats_shape.json"
    if not golden.exists():
        from karma.core.report import METRICS

        return {name for name, *_ in METRICS}
    answers = json.loads(golden.read_text())["expect"]
    return set(answers[-1]["response"]["metric_names"])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def test_metrics_are_scraped_over_http_during_load(proc: Proc) -> None:
    metrics_port = free_port()
    proc.start(f"--metrics-port={metrics_port}")
    stop = threading.Event()

    def load() -> None:
        client = Client(proc.port)
        while not stop.is_set():
            client.call("counter.increment", series="s", key=1)
            client.call("counter.sum", series="s", key=1)
        client.close()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        first = scrape(metrics_port)
        deadline = time.monotonic() + 10
        while first["karma_commands_total"] == 0 and time.monotonic() < deadline:
            first = scrape(metrics_port)
        second = scrape(metrics_port)
    finally:
        stop.set()
        worker.join(timeout=10)
    # karma_errors_total is split by {code,op} here: no series until the first error
    assert karma_1_0_metric_names() - {"karma_errors_total"} <= set(second)
    assert second["karma_commands_total"] >= first["karma_commands_total"] > 0
    assert second["karma_command_duration_seconds_count"] > 0
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/other", timeout=10)


def test_metrics_show_how_many_writes_share_each_fdatasync(proc: Proc) -> None:
    metrics_port = free_port()
    proc.start("--wal=true", "--wal-fsync=true", f"--metrics-port={metrics_port}")

    def write(key: int) -> None:  # one write in flight, each waiting for its fsynced answer
        client = Client(proc.port)
        for _ in range(50):
            assert client.call("counter.increment", series="s", key=key)["success"] is True
        client.close()

    writers = [threading.Thread(target=write, args=(key,)) for key in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    metrics = scrape(metrics_port)
    fsyncs = metrics["karma_wal_batch_entries_count"]
    assert metrics["karma_wal_batch_entries_sum"] == 200  # every write in exactly one batch
    assert 1 <= fsyncs <= 200
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    (entries,) = [
        f for f in text_string_to_metric_families(text) if f.name == "karma_wal_batch_entries"
    ]
    assert entries.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in entries.samples if s.name.endswith("_bucket")}
    assert buckets["1.0"] <= buckets["4.0"] <= buckets["+Inf"] == fsyncs
    for family in ("sync", "thread_handoff"):
        assert metrics[f"karma_wal_{family}_seconds_count"] == fsyncs
        assert metrics[f"karma_wal_{family}_seconds_sum"] > 0
    assert metrics["karma_wal_batch_wait_seconds_count"] >= fsyncs  # one per batch handed over
    print(f"{200 / fsyncs:.2f} writes per fdatasync")


def test_system_metrics_has_exactly_karma_1_0_names(proc: Proc) -> None:
    proc.start()
    client = Client(proc.port)
    text = client.call("system.metrics")["response"]
    client.close()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names == karma_1_0_metric_names()


def test_systemd_hears_ready_after_the_port_opens_and_stopping_on_sigterm(
    tmp_path: Path, proc: Proc
) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(20)
        os.environ["NOTIFY_SOCKET"] = address
        try:
            proc.start(wait=False)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert listener.recv(256) == b"READY=1"
        socket.create_connection(("127.0.0.1", proc.port), timeout=5).close()  # already open
        proc.signal(signal.SIGTERM)
        assert listener.recv(256) == b"STOPPING=1"
    assert proc.wait() == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_file_verifies(tmp_path: Path) -> None:
    unit = unit_file.read("karma-trio.service")
    binary = str(Path(sys.executable).with_name("karma-trio"))
    installed = tmp_path / "karma-trio.service"
    installed.write_text(unit.replace("/opt/karma-trio/bin/karma-trio", binary))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line for line in (done.stdout + done.stderr).splitlines() if "karma-trio.service" in line
    ]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not problems, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_the_alert_rules_check() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(OPS / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_alert_fires_when_it_should_and_stays_quiet_otherwise() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", str(OPS / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_rule_test() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", (OPS / "alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (OPS / "alerts_test.yml").read_text()))
    assert alerts
    assert alerts == tested


def test_the_dashboard_is_valid_json_over_karma_metrics() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert all("karma_" in t["expr"] for t in targets)
    # a legend may only name labels the query keeps
    for target in targets:
        if "{{op}}" in target.get("legendFormat", ""):
            assert "karma_command_duration_seconds" in target["expr"], target
        if "histogram_quantile" in target["expr"]:
            assert "instance" in target["expr"], target
