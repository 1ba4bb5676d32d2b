"""`memory_bench.py --mode reservations`: memory per settled reservation (issue 23).

Two measures, both printed as a table and JSON:

- in process: the growth of this process's RSS while `limit.hold` + `limit.settle` effects with
  unique ids (and answers shaped as the server builds them) go through `Engine.apply`, the path
  of the WAL writer, of replay and of replicas;
- a real server: `karma-trio` with the WAL on (no fsync) under four clients that reserve and
  commit at once with unique ids (`ttl_s` 60), as an LLM-budget workload does; its RSS is read
  from /proc every few seconds. Without `--cap` the growth per settled reservation is reported;
  with `--cap N` the server runs with `--max-settled-reservations=N`, is filled past N, and the
  slope of its RSS over `--steady-seconds` more is reported (MB/min; flat is the goal).

Only effects and ops that existed before issue 23 are used, so the same file measures an older
tree too (run it from that tree's root, without `--cap`).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import free_port, start_karma

from karma import days
from karma.core import mutations as m
from karma.core.engine import Engine

SERIES = "llm_tokens"
PAGE = os.sysconf("SC_PAGE_SIZE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--mode reservations")
    group.add_argument("--reservations", type=int, default=200_000, help="in-process count")
    group.add_argument("--seconds", type=float, default=90, help="server run (0: none)")
    group.add_argument("--clients", type=int, default=4)
    group.add_argument("--cap", type=int, default=0, help="--max-settled-reservations")
    group.add_argument("--steady-seconds", type=float, default=180)
    group.add_argument("--sample-seconds", type=float, default=5)
    group.add_argument(
        "--server-flag", action="append", default=[], help="more server flags (repeatable)"
    )


def rss_of(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


# --- in process --------------------------------------------------------------------------------
def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _reserve_answer(ident: str, n: int, now_ms: int, today: int) -> dict[str, Any]:
    used = 30_000 + n * 612
    return {
        "allowed": True,
        "id": ident,
        "status": "held",
        "expires_at_unix_ms": now_ms + 60_000,
        "max": 10**12,
        "used": used,
        "held": 4000,
        "remaining": 10**12 - used - 4000,
        "value": 4000,
        "window": {"from": today // 100 * 100 + 1, "to": today // 100 * 100 + 28},
        "reset_at_unix": 1_900_000_000,
        "retry_after_s": None,
    }


def in_process(count: int) -> dict[str, float]:
    now = int(time.time())
    today = days.today_from_unix(now)
    engine = Engine()
    gc.collect()
    before = rss_of()
    started = time.perf_counter()
    for n in range(count):
        ident = uuid.uuid4().hex
        key = n % 1000
        engine.apply(
            m.LimitHold(
                id=ident,
                items=[(SERIES, key, today, 4000)],
                expires_at_unix_ms=now * 1000 + 60_000,
                created_at_unix=now,
                fingerprint=_digest("limit.reserve", ident, key),
                answer=_reserve_answer(ident, n, now * 1000, today),
            )
        )
        answer = {"id": ident, "status": "committed", "value": 612, "released": 3388}
        engine.apply(
            m.LimitSettle(
                id=ident,
                outcome="committed",
                add=[(SERIES, key, today, 612)],
                settled_at_unix=now,
                fingerprint=_digest("limit.commit", 612, None),
                answer={**answer, "over_reserved": 0},
            )
        )
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = rss_of() - before
    kept = len(engine.limits.settled)
    return {
        "reservations": count,
        "settled_kept": kept,
        "bytes_per_settled": round(grown / max(1, kept), 1),
        "apply_us_per_cycle": round(elapsed / count * 1e6, 1),
    }


# --- a real server -----------------------------------------------------------------------------
class Cycles(threading.Thread):
    """One client: reserve, then commit at once, with a fresh id each time."""

    def __init__(self, port: int, number: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.number, self.stop = port, number, stop
        self.done = self.failed = 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            reader = sock.makefile("rb")
            while not self.stop.is_set():
                ident = uuid.uuid4().hex
                reserve = {
                    "v": 2,
                    "op": "limit.reserve",
                    "id": ident,
                    "series": SERIES,
                    "key": self.number,
                    "value": 4000,
                    "max": 10**15,
                    "window": {"calendar": "month"},
                    "ttl_s": 60,
                }
                commit = {"v": 2, "op": "limit.commit", "id": ident, "value": 612}
                ok = True
                for request in (reserve, commit):
                    sock.sendall(json.dumps(request).encode() + b"\n")
                    ok = json.loads(reader.readline()).get("success") is True and ok
                if ok:
                    self.done += 1
                else:
                    self.failed += 1


def _slope_mb_per_min(samples: list[tuple[float, int, int]]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return 0.0
    ts = [t for t, _, _ in samples]
    rs = [r for _, _, r in samples]
    mean_t, mean_r = sum(ts) / len(ts), sum(rs) / len(rs)
    var = sum((t - mean_t) ** 2 for t in ts)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in zip(ts, rs, strict=True))
    return cov / var * 60 / 1e6 if var else 0.0


def server_run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="reservation-bench-"))
    flags = ["--wal=true", "--wal-fsync=false", "--idempotency-max-records=20000"]
    if args.cap:
        flags.append(f"--max-settled-reservations={args.cap}")
    flags.extend(args.server_flag)
    port = free_port()
    server = start_karma(port, directory, *flags)
    stop = threading.Event()
    clients = [Cycles(port, n + 1, stop) for n in range(args.clients)]
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()

    def sample() -> tuple[float, int, int]:
        point = (time.monotonic() - started, sum(c.done for c in clients), rss_of(server.pid))
        samples.append(point)
        return point

    try:
        sample()
        for client in clients:
            client.start()
        filled_at: float | None = None
        while True:
            time.sleep(args.sample_seconds)
            at, cycles, _ = sample()
            if args.cap and filled_at is None and cycles >= args.cap * 1.2:
                filled_at = at
            if args.cap and filled_at is not None and at - filled_at >= args.steady_seconds:
                break
            if not args.cap and at >= args.seconds:
                break
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
        server.kill()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)
    elapsed, cycles, rss_end = samples[-1]
    rss_start = samples[0][2]
    result: dict[str, Any] = {
        "cap": args.cap or None,
        "flags": flags,
        "seconds": round(elapsed, 1),
        "cycles": cycles,
        "failed": sum(c.failed for c in clients),
        "cycles_per_s": round(cycles / elapsed, 1),
        "rss_start_mb": round(rss_start / 1e6, 1),
        "rss_end_mb": round(rss_end / 1e6, 1),
        "samples": [(round(t, 1), n, round(r / 1e6, 1)) for t, n, r in samples],
    }
    if args.cap:
        # the growth while every settled id is still kept, then the slope at the cap
        below = [s for s in samples if s[1] <= args.cap]
        grown, count = below[-1][2] - rss_start, below[-1][1]
        steady = [s for s in samples if filled_at is not None and s[0] >= filled_at]
        result["steady_mb_per_min"] = round(_slope_mb_per_min(steady), 2)
        result["steady_rss_mb"] = [round(s[2] / 1e6, 1) for s in steady]
    else:
        grown, count = rss_end - rss_start, cycles
        result["mb_per_min"] = round(_slope_mb_per_min(samples[len(samples) // 2 :]), 2)
    result["bytes_per_settled"] = round(grown / max(1, count), 1)
    return result


def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    if args.reservations:
        result["in_process"] = in_process(args.reservations)
        row = result["in_process"]
        print(f"{'in process: reservations':34}{row['reservations']:>12,}")
        print(f"{'  RSS per settled reservation':34}{row['bytes_per_settled']:>12,.1f} bytes")
        print(f"{'  apply, hold + settle':34}{row['apply_us_per_cycle']:>12,.1f} µs")
    if args.seconds or args.cap:
        row = result["server"] = server_run(args)
        print(f"{'server: reserve+commit cycles':34}{row['cycles']:>12,} in {row['seconds']} s")
        print(f"{'  RSS start → end':34}{row['rss_start_mb']:>8} → {row['rss_end_mb']} MB")
        print(f"{'  RSS per settled reservation':34}{row['bytes_per_settled']:>12,.1f} bytes")
        if args.cap:
            label = f"  RSS slope at the cap ({args.cap:,})"
            print(f"{label:34}{row['steady_mb_per_min']:>12.2f} MB/min")
        else:
            print(f"{'  RSS slope, second half':34}{row['mb_per_min']:>12.2f} MB/min")
    print(json.dumps(result))
