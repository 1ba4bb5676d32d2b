"""Import throughput of `karma-trio ingest`, and live `counter.sum` latency while it runs.

Generates a CSV (default 1,000,000 rows), starts karma-trio (WAL + fsync on), measures sum
latency with no import, then imports the CSV while a probe keeps asking `counter.sum`.
Prints a table and JSON.

    .venv/bin/python benchmarks/ingest_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, start_karma


class Probe(threading.Thread):
    """`counter.sum` every `interval` seconds on its own connection; latencies in ms."""

    def __init__(self, port: int, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        request = b'{"v":2,"op":"counter.sum","series":"live","key":1}\n'
        while not self.stop.is_set():
            started = time.perf_counter()
            sock.sendall(request)
            reader.readline()
            self.latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(self.interval)
        sock.close()


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
    return {
        "count": len(ordered),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    csv_path = work / "rows.csv"
    with open(csv_path, "w") as handle:
        handle.write("key,bucket,value\n")
        handle.writelines(
            f"{i % 100_000},{20260501 + (i // 100_000) % 28},{i % 7 + 1}\n"
            for i in range(args.rows)
        )
    port = free_port()
    server = start_karma(port, work / "data", "--max-request-bytes=1048576")
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b'{"v":2,"op":"counter.increment","series":"live","key":1}\n')
            sock.recv(1024)
        idle = Probe(port)
        idle.start()
        time.sleep(3)
        idle.stop.set()
        idle.join()
        busy = Probe(port)
        busy.start()
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "karma",
                "ingest",
                str(csv_path),
                "--series",
                "usage",
                "--port",
                str(port),
                "--quiet",
            ],
            check=True,
        )
        elapsed = time.perf_counter() - started
        busy.stop.set()
        busy.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    result = {
        "rows": args.rows,
        "import_seconds": round(elapsed, 2),
        "rows_per_s": round(args.rows / elapsed),
        "sum_idle": summary(idle.latencies),
        "sum_during_import": summary(busy.latencies),
    }
    print(
        f"rows {args.rows:,} imported in {elapsed:.1f} s = {result['rows_per_s']:,} rows/s "
        "(WAL + fsync on, 1000-row chunks)"
    )
    print(f"{'counter.sum latency':24}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'n':>8}")
    for label, key in (("idle", "sum_idle"), ("during import", "sum_during_import")):
        s = result[key]
        assert isinstance(s, dict)
        print(f"{label:24}{s['p50_ms']:>10}{s['p95_ms']:>10}{s['p99_ms']:>10}{s['count']:>8}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
