"""A replica's lag while its master takes writes at full speed.

Starts a master and a replica (WAL on, fsync off on both), drives the master with kbench
(increments, 4 clients x 32 in flight), samples the replica's `replication.status` every
100 ms, and prints the lag in entries and in seconds (entries / the master's write rate),
then the time the replica needs to catch up once the writes stop. Prints a table and JSON.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_kbench, free_port, start_karma


def ask(port: int, op: str) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(json.dumps({"v": 2, "op": op}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(1 << 16)
    answer: dict[str, object] = json.loads(data)["response"]
    return answer


def main() -> None:
    kbench = build_kbench()
    work = Path(tempfile.mkdtemp(prefix="repl-lag-"))
    master_port, replica_port = free_port(), free_port()
    common = ["--wal-fsync=false", "--read-timeout=0"]
    master = start_karma(master_port, work / "m", *common)
    replica = start_karma(
        replica_port,
        work / "s",
        *common,
        "--role=slave",
        "--replication-source-host=127.0.0.1",
        f"--replication-source-port={master_port}",
        "--replication-poll-interval-ms=100",
        "--replication-batch-size=5000",
    )
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            status = ask(replica_port, "replication.status")
            lag = status["replication_lag_entries"]
            assert isinstance(lag, int)
            samples.append(lag)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        done = subprocess.run(
            [
                str(kbench),
                f"--port={master_port}",
                "--op=increment",
                "--clients=4",
                "--requests=25000",
                "--pipeline=32",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        load = json.loads(done.stdout.strip().splitlines()[-1])
        stop.set()
        sampler.join()
        target = ask(master_port, "system.stats")["wal_current_lsn"]
        assert isinstance(target, int)
        started = time.monotonic()
        while ask(replica_port, "replication.status")["wal_current_lsn"] != target:
            time.sleep(0.01)
        catch_up = time.monotonic() - started
    finally:
        for proc in (replica, master):
            proc.terminate()
            proc.wait(timeout=60)
    rate = float(load["ops_per_sec"])
    steady = samples[len(samples) // 4 :] or samples
    result = {
        "master_writes_per_s": round(rate),
        "entries": target,
        "lag_entries_mean": round(statistics.fmean(steady)),
        "lag_entries_max": max(steady),
        "lag_seconds_mean": round(statistics.fmean(steady) / rate, 3),
        "catch_up_after_stop_s": round(catch_up, 3),
        "samples": len(samples),
    }
    print(f"{'master writes/s':28}{result['master_writes_per_s']:>12,}")
    print(f"{'replica lag, mean entries':28}{result['lag_entries_mean']:>12,}")
    print(f"{'replica lag, max entries':28}{result['lag_entries_max']:>12,}")
    print(f"{'replica lag, mean seconds':28}{result['lag_seconds_mean']:>12}")
    print(f"{'catch-up after writes stop':28}{result['catch_up_after_stop_s']:>11}s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
