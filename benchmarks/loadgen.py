"""A closed-loop TCP load generator for the karma v2 protocol, in Python (one process per client).

    .venv/bin/python benchmarks/loadgen.py --port=8080 --op=increment --clients=4
        --requests=10000 [--batch=1000] [--pipeline=32]

Prints one JSON line like kbench: ops_per_sec, items_per_sec, p50/p95/p99 ms, errors. The C
`kbench` (../shared/bench) has less client overhead and is what `bench.py` prefers; this one
needs nothing but Python and is what `bench.py` falls back to.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import ssl
import time
from typing import Any

BUCKET = 20260505


def build(op: str, client: int, n: int, keys: int, batch: int, series: str) -> bytes:
    key = (client * 7919 + n * 104729) % keys
    if op == "increment":
        request: dict[str, Any] = {
            "v": 2,
            "op": "counter.increment",
            "series": series,
            "key": key,
            "bucket": BUCKET,
            "value": 1,
        }
    elif op == "sum":
        request = {"v": 2, "op": "counter.sum", "series": series, "key": key}
    elif op == "batch_add":
        request = {
            "v": 2,
            "op": "series.batch_add",
            "series": series,
            "items": [[(key + i) % keys, BUCKET, 1] for i in range(batch)],
        }
    elif op == "batch_sum":
        request = {
            "v": 2,
            "op": "counter.batch_sum",
            "series": series,
            "keys": [(key + i) % keys for i in range(batch)],
        }
    else:
        raise SystemExit(f"unknown op {op}")
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def worker(args: argparse.Namespace, client: int, out: Any) -> None:
    try:
        out.put(_drive(args, client))
    except OSError as exc:  # report, never leave the parent waiting for us
        out.put(([], args.requests, str(exc)))


def _drive(args: argparse.Namespace, client: int) -> tuple[list[float], int, str]:
    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.tls_ca:  # the server speaks TLS (--tls-cert): trust this CA for its certificate
        context = ssl.create_default_context(cafile=args.tls_ca)
        sock = context.wrap_socket(sock, server_hostname=args.host)
    reader = sock.makefile("rb")
    latencies: list[float] = []
    errors = sent = 0
    while sent < args.requests:
        burst = min(args.pipeline, args.requests - sent)
        data = b"".join(
            build(args.op, client, sent + i, args.keys, args.batch, args.series)
            for i in range(burst)
        )
        started = time.perf_counter()
        sock.sendall(data)
        for _ in range(burst):
            if b'"success":true' not in reader.readline():
                errors += 1
        if burst == 1:
            latencies.append((time.perf_counter() - started) * 1000)
        sent += burst
    sock.close()
    return latencies, errors, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--op", default="increment", choices=("increment", "sum", "batch_add", "batch_sum")
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10000, help="per client")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--keys", type=int, default=10000)
    parser.add_argument("--series", default="links")
    parser.add_argument("--tls-ca", default="", help="speak TLS, trusting this CA file")
    args = parser.parse_args()
    queue: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=worker, args=(args, c, queue)) for c in range(args.clients)
    ]
    started = time.perf_counter()
    for process in workers:
        process.start()
    results = [queue.get() for _ in workers]
    for process in workers:
        process.join()
    seconds = time.perf_counter() - started
    failures = [reason for _, _, reason in results if reason]
    if failures:
        raise SystemExit(f"loadgen: {failures[0]}")
    latencies = sorted(lat for lats, _, _ in results for lat in lats)
    total = args.requests * args.clients
    items = total * (args.batch if args.op in ("batch_add", "batch_sum") else 1)

    def pick(q: float) -> float:
        if not latencies:
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 4)

    print(
        json.dumps(
            {
                "op": args.op,
                "clients": args.clients,
                "pipeline": args.pipeline,
                "requests": total,
                "seconds": round(seconds, 4),
                "ops_per_sec": round(total / seconds, 1),
                "items_per_sec": round(items / seconds, 1),
                "p50_ms": pick(0.5),
                "p95_ms": pick(0.95),
                "p99_ms": pick(0.99),
                "errors": sum(e for _, e, _ in results),
            }
        )
    )


if __name__ == "__main__":
    main()
