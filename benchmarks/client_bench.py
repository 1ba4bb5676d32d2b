"""Client-side throughput of `karma.client.Client.increment`, next to kbench on the same server.

1, 8 and 32 threads (one request in flight each), a 32-deep pipeline, and kbench with 4
clients, against one karma-trio (WAL on, fsync off). The gap between kbench and the client is
the client's own overhead. Then (issue 25) keyed increments (a unique idempotency key each)
beside plain ones through the sync and the async client, 32 in flight, against a server with
WAL + fsync. Prints tables and JSON.

    .venv/bin/python benchmarks/client_bench.py [--keyed-only]
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import trio
from bench import build_kbench, free_port, start_karma

from karma.client import AsyncClient, Client

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


_keys = itertools.count()


def _key(keyed: bool) -> str | None:
    return f"cb-{next(_keys)}" if keyed else None


def keyed_threads_run(port: int, keyed: bool, threads: int = 32) -> float:
    client = Client(port=port, pool_size=threads, timeout=10)
    counts = [0] * threads
    stop = time.monotonic() + SECONDS

    def work(index: int) -> None:
        while time.monotonic() < stop:
            client.increment("bench", index, idempotency_key=_key(keyed))
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


def keyed_pipeline_run(port: int, keyed: bool, depth: int = 32) -> float:
    client = Client(port=port, timeout=10)
    done = 0
    stop = time.monotonic() + SECONDS
    started = time.monotonic()
    while time.monotonic() < stop:
        with client.pipeline() as pipe:
            for n in range(depth):
                pipe.increment("bench", n, idempotency_key=_key(keyed))
            done += len(pipe.execute())
    elapsed = time.monotonic() - started
    client.close()
    return done / elapsed


async def _async_tasks(port: int, keyed: bool, tasks: int) -> float:
    done = 0
    async with AsyncClient(port=port, pool_size=tasks, timeout=10) as client:
        stop = time.monotonic() + SECONDS

        async def work(index: int) -> None:
            nonlocal done
            while time.monotonic() < stop:
                await client.increment("bench", index, idempotency_key=_key(keyed))
                done += 1

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(work, index)
        return done / (time.monotonic() - started)


async def _async_pipeline(port: int, keyed: bool, depth: int) -> float:
    done = 0
    async with AsyncClient(port=port, timeout=10) as client:
        stop = time.monotonic() + SECONDS
        started = time.monotonic()
        while time.monotonic() < stop:
            async with client.pipeline() as pipe:
                for n in range(depth):
                    pipe.increment("bench", n, idempotency_key=_key(keyed))
                done += len(await pipe.execute())
        return done / (time.monotonic() - started)


def keyed_rows() -> dict[str, float]:
    """Plain and keyed increments through the clients, 32 in flight, WAL + fsync."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="client-bench-keyed-"))
    server = start_karma(port, work, "--wal-fsync=true", "--read-timeout=0")
    rows: dict[str, float] = {}
    try:
        for keyed in (False, True):
            kind = "keyed" if keyed else "plain"
            rows[f"{kind}, sync client, 32 threads"] = keyed_threads_run(port, keyed)
            rows[f"{kind}, sync pipeline, 32 deep"] = keyed_pipeline_run(port, keyed)
            rows[f"{kind}, async client, 32 tasks"] = trio.run(_async_tasks, port, keyed, 32)
            rows[f"{kind}, async pipeline, 32 deep"] = trio.run(_async_pipeline, port, keyed, 32)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def main() -> None:
    if "--keyed-only" not in sys.argv:
        plain_rows()
    rows = keyed_rows()
    print(f"{'increment, WAL + fsync':36}{'ops/s':>12}{'x plain':>10}")
    for label, rate in rows.items():
        plain = rows.get(label.replace("keyed, ", "plain, "), 0.0)
        ratio = f"{rate / plain:.2f}" if label.startswith("keyed") and plain else ""
        print(f"{label:36}{rate:>12,.0f}{ratio:>10}")
    print(json.dumps({label: round(rate) for label, rate in rows.items()}))


def plain_rows() -> None:
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
