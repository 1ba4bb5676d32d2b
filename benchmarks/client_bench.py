"""Client-side throughput of `karma.client.Client.increment`, next to kbench on the same server.

1, 8 and 32 threads (one request in flight each), a 32-deep pipeline, and kbench with 4
clients, against one karma-trio (WAL on, fsync off). The gap between kbench and the client is
the client's own overhead. Then (issue 25) keyed increments (a unique idempotency key each)
beside plain ones through the sync and the async client, 32 in flight, against a server with
WAL + fsync. Prints tables and JSON.

`--cluster` (issue 27): keyed increments through the sync client, 32 threads, against one node
(a `karma://` URL), against one such node through a map of one group, and against 2 such
nodes as 2 groups (a `karma+etcd://` URL: one etcd member, the map splitting the slots evenly,
each node published as its group's leader by hand), WAL on, fsync off, alternating rounds;
with the client process's CPU per request, whose inverse is one client process's ceiling.

    .venv/bin/python benchmarks/client_bench.py [--keyed-only | --cluster]
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


def _cluster_threads(url: str, threads: int = 32) -> tuple[float, float]:
    """Keyed increments over many keys (so both groups get their share); requests/s and the
    client process's CPU seconds per request."""
    client = Client(url, pool_size=threads, timeout=10)
    client.increment("bench", 0)  # the map and leaders are read before the clock starts
    counts = [0] * threads
    stop = time.monotonic() + SECONDS

    def work(index: int) -> None:
        key = index
        while time.monotonic() < stop:
            client.increment("bench", key, idempotency_key=_key(True))
            key += threads
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    cpu = time.process_time()
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    client.close()
    total = sum(counts)
    return total / elapsed, cpu / max(total, 1)


def _etcd_put(url: str, key: str, value: bytes) -> None:
    body = json.dumps(
        {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}
    ).encode()
    request = urllib.request.Request(
        url + "/v3/kv/put", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


def cluster_rows(rounds: int = 2) -> dict[str, float]:
    from karma.cluster.directory import leader_key
    from karma.cluster.shardmap import even_split, map_key
    from tests.process.etcd import ETCD, Etcd

    if ETCD is None:
        raise SystemExit("--cluster needs an etcd binary (Debian: apt-get install etcd-server)")
    work = Path(tempfile.mkdtemp(prefix="client-bench-cluster-"))
    etcd = Etcd(work / "etcd").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        single_port = free_port()
        procs.append(start_karma(single_port, work / "single", "--wal-fsync=false"))
        group_ports = {}
        for group in ("g1", "g2"):
            # plain nodes (no HA: the same options as the single node), each published as its
            # group's leader by hand, so the rows compare routing and not HA's own cost
            port = free_port()
            group_ports[group] = port
            procs.append(start_karma(port, work / group, "--wal-fsync=false"))
            leader = {"node": f"{group}-n1", "addr": f"127.0.0.1:{port}", "start_lsn": 0}
            _etcd_put(etcd.url, leader_key(group), json.dumps(leader).encode())
        _etcd_put(etcd.url, map_key("bench"), even_split(["g1", "g2"]).to_json())
        _etcd_put(etcd.url, map_key("one"), even_split(["g1"]).to_json())
        urls = {
            "1 node (karma://)": f"karma://127.0.0.1:{single_port}",
            "group g1's node (karma://)": f"karma://127.0.0.1:{group_ports['g1']}",
            "1 group (karma+etcd://)": f"karma+etcd://{etcd.url.removeprefix('http://')}/one",
            "2 groups (karma+etcd://)": f"karma+etcd://{etcd.url.removeprefix('http://')}/bench",
        }
        rates: dict[str, list[float]] = {label: [] for label in urls}
        cpus: dict[str, list[float]] = {label: [] for label in urls}
        for _ in range(rounds):
            for label, url in urls.items():
                rate, cpu = _cluster_threads(url)
                rates[label].append(rate)
                cpus[label].append(cpu)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        etcd.stop()
    rows: dict[str, float] = {}
    for label in urls:
        rows[f"keyed, 32 threads, {label}"] = max(rates[label])
        cpu = min(cpus[label])
        rows[f"client CPU us/request, {label}"] = cpu * 1e6
        rows[f"client ceiling req/s (1/CPU), {label}"] = 1 / cpu if cpu else 0.0
    print(f"{'cluster mode, WAL on, fsync off':52}{'value':>12}")
    for label, value in rows.items():
        print(f"{label:52}{value:>12,.0f}")
    print(json.dumps({label: round(value) for label, value in rows.items()}))
    return rows


def main() -> None:
    if "--cluster" in sys.argv:
        cluster_rows()
        return
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
