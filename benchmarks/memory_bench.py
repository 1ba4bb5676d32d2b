"""Memory per stored point, and restore time of a data directory (snapshot + WAL); or, with
`--mode reservations`, memory per settled reservation (issue 23).

    .venv/bin/python benchmarks/memory_bench.py [--points 1000000] [--wal-records 100000]
    .venv/bin/python benchmarks/memory_bench.py --mode reservations [--reservations 200000]
        [--seconds 90] [--cap 20000 --steady-seconds 180]

Points are spread as karma 1.0's table assumes: 10 days per key. Memory is the growth of the
process's resident set while the points are loaded (through the same apply path as writes).
Restore writes a snapshot of those points plus a WAL tail, then times a cold `karma-trio`
start until its port answers. Prints a table and JSON.

Reservations (reservation_bench.py): the growth of this process's resident set while
`limit.hold` + `limit.settle` effects with unique ids are applied (the apply path of the WAL
writer, replay and replicas); then a real server (WAL on, no fsync) under four clients doing
reserve + commit with unique ids for `--seconds`, its RSS sampled; with `--cap`, the server runs
with `--max-settled-reservations=CAP`, is filled past the cap, and the slope of its RSS over
`--steady-seconds` more is reported in MB/min.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reservation_bench
from bench import free_port, start_karma

from karma.core import mutations as m
from karma.core.engine import Engine
from karma.storage import snapshot_codec, snapshot_files, wal_codec

DAYS = 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load(engine: Engine, points: int) -> None:
    keys = points // DAYS
    for start in range(0, keys, 1000):
        items = [
            (key, 20260501 + day, key % 97 + 1)
            for key in range(start, min(keys, start + 1000))
            for day in range(DAYS)
        ]
        engine.apply(m.BatchAdd(series="usage", granularity="day", items=items))


def range_sum_p95(port: int, keys: int, samples: int = 2000) -> float:
    """p95 latency (ms) of `counter.sum` over a 10-day range for random keys, over TCP."""
    rng = random.Random(7)
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        for _ in range(samples):
            request = json.dumps(
                {
                    "v": 2,
                    "op": "counter.sum",
                    "series": "usage",
                    "key": rng.randrange(keys),
                    "range": {"from": 20260501, "to": 20260510},
                }
            )
            started = time.perf_counter()
            sock.sendall(request.encode() + b"\n")
            reader.readline()
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return round(latencies[int(0.95 * len(latencies))], 3)


def _unused(series: object) -> bytes:
    raise AssertionError("no open ingest stream to encode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--wal-records", type=int, default=100_000)
    parser.add_argument("--mode", choices=("points", "reservations"), default="points")
    reservation_bench.add_arguments(parser)
    args = parser.parse_args()
    if args.mode == "reservations":
        reservation_bench.main(args)
        return
    gc.collect()
    before = rss_bytes()
    engine = Engine()
    load(engine, args.points)
    gc.collect()
    per_point = (rss_bytes() - before) / args.points
    directory = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    data = snapshot_codec.encode_series(engine.store.series["usage"])
    snapshot_files.write_snapshot(directory, "usage", data, int(time.time()), 1)
    with open(directory / "karma.wal", "wb") as wal:
        for lsn in range(2, args.wal_records + 2):
            entry = m.encode(m.Increment(series="usage", key=lsn % 1000, bucket=20260511, value=1))
            wal.write(wal_codec.encode_line(lsn, entry))
    # the continuity check at start wants every LSN in some file: the idempotency snapshot
    # covers LSN 1 (the tree's) like the one snapshot.create_all would have written
    snapshot_files.write_idempotency(directory, engine.idempotency_document(_unused), 0, 1)
    started = time.monotonic()
    port = free_port()
    server = start_karma(port, directory)  # returns once the port answers
    try:
        restore_s = time.monotonic() - started
        range_p95 = range_sum_p95(port, args.points // DAYS)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "points": args.points,
        "bytes_per_point": round(per_point, 1),
        "snapshot_bytes": len(data),
        "wal_records": args.wal_records,
        "restore_seconds": round(restore_s, 2),
        "range_sum_p95_ms": range_p95,
    }
    print(f"{'points':28}{args.points:>14,}")
    print(f"{'memory per point (RSS)':28}{per_point:>14.1f} bytes")
    print(f"{'snapshot size':28}{len(data):>14,} bytes")
    label = f"restore ({args.wal_records:,} WAL records)"
    print(f"{label:28}{restore_s:>14.2f} s")
    print(f"{'range sum p95 after restore':28}{range_p95:>14.3f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
