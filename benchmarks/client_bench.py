"""Client-side throughput of `karma.client.Client.increment`, next to kbench on the same server.

1, 8 and 32 threads (one request in flight each), a 32-deep pipeline, and kbench with 4
clients, against one karma-trio (WAL on, fsync off). The gap between kbench and the client is
the client's own overhead. Prints a table and JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_kbench, free_port, start_karma

from karma.client import Client

SECONDS = 3.0


def threads_run(port: int, threads: int) -> float:
    client = Client(port=port, pool_size=threads, timeout=10)
    counts = [0] * threads
    stop = time.monotonic() + SECONDS

    def work(index: int) -> None:
        while time.monotonic() < stop:
            client.increment("bench", index)
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    client.close()
    return sum(counts) / elapsed


def pipeline_run(port: int, depth: int = 32) -> float:
    client = Client(port=port, timeout=10)
    done = 0
    stop = time.monotonic() + SECONDS
    started = time.monotonic()
    while time.monotonic() < stop:
        with client.pipeline() as pipe:
            for _ in range(depth):
                pipe.increment("bench", 1)
            done += len(pipe.execute())
    elapsed = time.monotonic() - started
    client.close()
    return done / elapsed


def main() -> None:
    kbench = build_kbench()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="client-bench-"))
    server = start_karma(port, work, "--wal-fsync=false", "--read-timeout=0")
    try:
        rows = {
            f"client, {n} thread{'s' if n > 1 else ''}": threads_run(port, n) for n in (1, 8, 32)
        }
        rows["client pipeline, 32 deep"] = pipeline_run(port)
        for label, args in (
            ("kbench, 4 clients", []),
            ("kbench, 4 clients x 32 pipelined", ["--pipeline=32"]),
        ):
            done = subprocess.run(
                [
                    str(kbench),
                    f"--port={port}",
                    "--op=increment",
                    "--clients=4",
                    "--requests=10000",
                    *args,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[label] = float(json.loads(done.stdout.strip().splitlines()[-1])["ops_per_sec"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"{'increment, WAL on':36}{'ops/s':>12}")
    for label, rate in rows.items():
        print(f"{label:36}{rate:>12,.0f}")
    print(json.dumps({label: round(rate) for label, rate in rows.items()}))


if __name__ == "__main__":
    main()
